"""Packed studies through the CLI: Prefix-Tuning+ trials share one base model in a PackHost, PEFT baselines run
unpacked beside them, each trial keeps its own reports, checkpoints and MLflow run, and a host killed mid-step
fails only its trials, which Tune retries from their checkpoints on a new host."""

import os
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from ray import tune

from tests.polling import wait_until
from tests.ray_env import kill_ray_under, ray_env, ray_workers
from tests.studies import MAX_STEPS, check_resumed, run_cli, space_file, study_runs, trial_results

MIXED = {
    "method": {"type": "categorical", "choices": ["ptplus", "lora"]},
    "feature_map": {"type": "categorical", "choices": ["elu", "mlp"], "when": {"method": ["ptplus"]}},
    "memory": {"type": "categorical", "choices": ["slots", "full"], "when": {"method": ["ptplus"]}},
    "prefix_length": {"type": "int", "low": 2, "high": 8, "when": {"method": ["ptplus"]}},
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
}


def test_a_packed_study_trains_ptplus_trials_on_one_base_model_beside_unpacked_baselines(
        tmp_path, tiny_trial, tracking_server):
    space = space_file(tmp_path, tiny_trial, num_samples=8, max_concurrent=4, balance="method", parameters=MIXED,
                       resources={"cpus": 2, "gpus": 0, "pack": 4}, scheduler={"type": "none"})
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(tmp_path / "results"), "--name", "pk",
                        "--tracking-uri", tracking_server], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Prefix-Tuning+ trials packed 4 to a base model, 2 CPU + 0 GPU per pack" in proc.stderr
    results = trial_results(tmp_path / "results" / "pk")
    assert len(results) == 8
    packed = {tid: rows for tid, rows in results.items() if rows[0]["config"]["method"] == "ptplus"}
    assert len(packed) == 4  # balanced
    for rows in results.values():
        assert [r["step"] for r in rows] == list(range(2, MAX_STEPS + 1, 2))  # each trial its own evaluations
    # The PT+ trials trained in one host (one base model load for all of them), several at a time.
    assert {r["worker_model_loads"] for rows in packed.values() for r in rows} == {1}
    assert max(r["pack_trials"] for rows in packed.values() for r in rows) >= 2
    runs = study_runs(tracking_server, "pk")
    assert len(runs) == 8 and all(r.data.tags["ptplus.status"] == "completed" for r in runs)
    pack_ids = {r.data.tags.get("ptplus.pack_id") for r in runs if r.data.params["method"] == "ptplus"}
    assert len(pack_ids) == 1 and pack_ids.pop().startswith("ptplus-pack-pk-")
    assert all("ptplus.pack_id" not in r.data.tags for r in runs if r.data.params["method"] == "lora")
    client = MlflowClient(tracking_server)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "eval_accuracy")
        assert sorted(m.step for m in history) == list(range(2, MAX_STEPS + 1, 2))
    assert "registered: models:/" in proc.stdout


def test_a_host_killed_mid_step_fails_only_its_trials_which_resume_from_their_checkpoints(
        tmp_path, tiny_trial, tracking_server):
    steps, every = 1000, 100  # the host is killed at step ~100, ~30 s before the end here
    space = space_file(tmp_path, tiny_trial, max_steps=steps, eval_every=every, num_samples=2, max_concurrent=2,
                       resources={"cpus": 2, "gpus": 0, "pack": 2}, scheduler={"type": "none"})
    study = tmp_path / "results" / "pkill"
    env = ray_env()
    driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--storage-path",
                               str(tmp_path / "results"), "--name", "pkill", "--tracking-uri", tracking_server,
                               "--no-register"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    try:
        def both_evaluated():
            results = trial_results(study)
            return len(results) == 2 and all(rows[-1]["step"] >= every for rows in results.values())

        if not wait_until(both_evaluated, 300, interval=0.1):
            pytest.fail("the packed trials never got going")
        killed_at = {tid: rows[-1]["step"] for tid, rows in trial_results(study).items()}
        hosts = ray_workers(env["RAY_TMPDIR"], (b"ray::PackHost",))
        assert len(hosts) == 1, hosts
        os.kill(hosts[0], signal.SIGKILL)
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
        kill_ray_under(env["RAY_TMPDIR"])
    assert max(killed_at.values()) < steps, "the trials finished before the kill"
    assert driver.returncode == 0, err[-3000:]
    assert err.count("retrying it from its last checkpoint") == 2, err[-4000:]  # the host's 2 trials, once each
    assert "(2 completed, 0 stopped early by ASHA, 0 failed)" in out
    client = MlflowClient(tracking_server)
    runs = study_runs(tracking_server, "pkill")
    assert len(runs) == 2
    for rows in trial_results(study).values():
        check_resumed(rows, steps, every)
    for run in runs:
        assert run.data.tags["ptplus.status"] == "completed" and run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "eval_accuracy")
        assert sorted(m.step for m in history) == list(range(every, steps + 1, every))  # nothing lost or twice
    assert not ray_workers(env["RAY_TMPDIR"], (b"ray::PackHost",))


def test_a_cpu_host_trains_with_its_nodes_cpus_and_a_dead_host_is_replaced(tiny_trial, monkeypatch):
    """On CPU the host is the node's one training process: its trials use the node's CPUs, not their 1/K share.
    A host that died still holds its name for a moment; the next trial gets a new, live host."""
    import ray

    from ptplus_tune.service.cluster import NAMESPACE
    from ptplus_tune.service.pack_host import open_host, remove_hosts

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)

    @ray.remote(num_cpus=0)
    def open_for_trial():  # what a packed trial's worker does
        return open_host("threads", threads=1, board=None)

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    try:
        host, name = ray.get(open_for_trial.remote())
        assert name.startswith("ptplus-pack-threads-") and name.endswith("-cpu")
        assert ray.get(host.attach.remote("a", tiny_trial))["threads"] == 3
        same, _ = ray.get(open_for_trial.remote())
        first_pid = ray.get(same.ping.remote())
        assert ray.get(host.ping.remote()) == first_pid  # one host per node
        os.kill(first_pid, signal.SIGKILL)
        again, again_name = ray.get(open_for_trial.remote())
        assert again_name == name and ray.get(again.ping.remote()) != first_pid
        assert ray.get(again.attach.remote("a", tiny_trial))["step"] == 0
        remove_hosts("threads")
        assert not [n for n in ray.util.list_named_actors() if n.startswith("ptplus-pack-threads-")]
    finally:
        ray.shutdown()


PACKED_CONFIG = {"feature_map": "elu", "prefix_length": 4, "learning_rate": 0.01}


def in_a_ray_worker(task, study: str, monkeypatch):
    """`task()`'s result, run in a worker process of a fresh local Ray (as a trial's actor runs); the pack hosts it
    opened for `study` are removed after."""
    import ray

    from ptplus_tune.service.cluster import NAMESPACE
    from ptplus_tune.service.pack_host import remove_hosts

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    try:
        out = ray.get(ray.remote(num_cpus=0)(task).remote())
        remove_hosts(study)
    finally:
        ray.shutdown()
    return out


def test_a_packed_trials_own_process_loads_no_model_stack(tmp_path, tiny_trial, monkeypatch):
    """A packed trial's process only forwards to its host, which holds the model: it imports neither torch nor
    transformers (~350 MB and seconds per process here), so K packed trials cost one model process and K light ones."""
    from ptplus_tune.service.trainable import StudySettings, trainable
    from ptplus_tune.spaces import load_space

    spec = load_space(space_file(tmp_path, tiny_trial, resources={"cpus": 1, "gpus": 0, "pack": 2}))

    def packed_trial():  # a packed trial's Tune trainable, in a process of its own
        settings = StudySettings.of(spec, study_path=str(tmp_path), study="light")
        packed = trainable(settings)(config=dict(PACKED_CONFIG))
        try:
            result = packed.train()
        finally:
            packed.stop()
        return result["step"], result["pack_trials"], sorted(m for m in ("torch", "transformers") if m in sys.modules)

    step, pack_trials, loaded = in_a_ray_worker(packed_trial, "light", monkeypatch)
    assert (step, pack_trials) == (2, 1)  # it trained to its first evaluation, in the host
    assert loaded == []


def test_an_actor_tune_drops_before_it_steps_leaves_its_trial_alone(tmp_path, tiny_trial, monkeypatch):
    """Tune can start an actor for a pending trial and then hand the trial a cached actor instead; the unused actor
    gets `setup` and then `stop`. It must leave the trial alone: its session in the PackHost, where the trial trains
    on, and its scratch folder, where the other actor may be staging a checkpoint."""
    from ptplus_tune.service.trainable import SCRATCH, StudySettings, trainable
    from ptplus_tune.spaces import load_space

    spec = load_space(space_file(tmp_path, tiny_trial, resources={"cpus": 1, "gpus": 0, "pack": 2}))

    def trial_with_a_dropped_second_actor():  # both instances get the same trial id ("default": no Tune trial)
        trial_class = trainable(StudySettings.of(spec, study_path=str(tmp_path), study="dropped"))
        trains = trial_class(config=dict(PACKED_CONFIG))
        try:
            first = trains.train()["step"]
            staged = tmp_path / SCRATCH / trains.trial_id / "checkpoint"
            staged.mkdir(parents=True)  # as if a save were staging there right now
            dropped = trial_class(config=dict(PACKED_CONFIG))
            dropped.stop()
            return first, trains.train()["step"], staged.is_dir()
        finally:
            trains.stop()

    first, then, staged_kept = in_a_ray_worker(trial_with_a_dropped_second_actor, "dropped", monkeypatch)
    assert (first, then) == (2, 4)  # the trial trained on where it was
    assert staged_kept


class SeenHosts(tune.Callback):
    """The pack hosts alive whenever a trial reports (the driver's view of the named actors)."""

    def __init__(self):
        self.names: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import ray

        self.names |= {n for n in ray.util.list_named_actors() if n.startswith("ptplus-pack-")}


def test_on_a_gpu_node_packed_trials_take_a_share_of_the_gpu_and_baselines_a_whole_one(tmp_path, tiny_trial,
                                                                                          monkeypatch):
    """Ray's GPU accounting, with a GPU declared to Ray (this machine has no CUDA, so the trials compute on CPU): with
    `pack` 2 and one GPU per pack, a Prefix-Tuning+ trial reserves half the GPU and trains in the GPU's host (one
    base model for all of them), a LoRA baseline reserves the whole GPU and trains alone."""
    import ray
    from ray.tune import ExperimentAnalysis

    from ptplus_tune.service import run_study
    from ptplus_tune.service.cluster import NAMESPACE
    from ptplus_tune.spaces import load_space

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    spec = load_space(space_file(tmp_path, tiny_trial, num_samples=4, max_concurrent=4, balance="method",
                                 parameters=MIXED, resources={"cpus": 2, "gpus": 1, "pack": 2},
                                 scheduler={"type": "none"}))
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    hosts = SeenHosts()
    try:
        result = run_study(spec, "gpu", str(tmp_path / "results"), callbacks=[hosts])
    finally:
        ray.shutdown()
    assert [t.status for t in result.trials] == ["completed"] * 4
    assert len(hosts.names) == 1 and hosts.names.pop().endswith("-gpu0")  # the GPU's host, not the node's CPU one
    reserved = {t.trial_id: t.placement_group_factory.required_resources
                for t in ExperimentAnalysis(str(tmp_path / "results" / "gpu")).trials}
    for trial in result.trials:
        if trial.config["method"] == "ptplus":
            assert reserved[trial.trial_id] == {"CPU": 1.0, "GPU": 0.5}
            assert trial.metrics["worker_model_loads"] == 1
        else:
            assert reserved[trial.trial_id] == {"CPU": 2.0, "GPU": 1.0} and trial.metrics["pack_trials"] == 1
