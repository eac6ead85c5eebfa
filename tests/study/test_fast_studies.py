"""Where a study's compute goes: evaluations only where decisions are made, dead trials ended at once, warm workers
that keep the base model between trials, no scratch left behind, and progress that a user can watch."""


import tempfile
from pathlib import Path

import yaml
from mlflow import MlflowClient

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, study_runs, trial_results

RUNGS = [2, 4, 8]  # grace_period 2, reduction_factor 2, max_steps 12


def _study(tmp_path, space: str, name: str, tracking_server: str):
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(tmp_path / "results"), "--name", name,
                        "--tracking-uri", tracking_server, "--no-register"], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _scratch_in_temp() -> set[str]:
    root = Path(tempfile.gettempdir())
    return {str(p) for p in root.glob("ptplus-trial-*")} | {str(p.parent) for p in root.glob("*/trainer_state.pt")}


def test_a_study_evaluates_at_rungs_reuses_its_worker_and_leaves_no_scratch(tmp_path, tiny_trial, tracking_server):
    """One worker (max_concurrent 1) runs all trials: it loads the base model once; every trial evaluates at the
    ASHA rungs it reaches and at its end, nowhere else; training-loss points fill the curve in MLflow."""
    space = space_file(tmp_path, tiny_trial, num_samples=4, max_concurrent=1)
    data = yaml.safe_load(Path(space).read_text())
    data["trial"].pop("eval_every")
    data["trial"]["log_every"] = 3
    Path(space).write_text(yaml.safe_dump(data, sort_keys=False))
    before = _scratch_in_temp()
    proc = _study(tmp_path, space, "fast", tracking_server)
    results = trial_results(tmp_path / "results" / "fast")
    assert len(results) == 4
    for rows in results.values():
        last = rows[-1]["step"]
        assert [r["step"] for r in rows] == [s for s in RUNGS if s <= last] + ([12] if last == 12 else [])
        assert {r["worker_model_loads"] for r in rows} == {1}  # the second trial on the worker did not reload
    assert "1 at a time" in proc.stderr  # the start line tells the concurrency the cluster gives
    assert not (tmp_path / "results" / "fast" / ".scratch").exists()
    assert _scratch_in_temp() <= before
    client = MlflowClient(tracking_server)
    for run in study_runs(tracking_server, "fast"):
        evals = [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")]
        losses = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        last = int(run.data.metrics["step"])
        assert sorted(evals) == [s for s in [*RUNGS, 12] if s <= last]
        assert losses == sorted({s for s in range(3, last + 1, 3)} | set(evals))  # each step once


def test_a_dead_trial_alone_at_its_rung_stops_with_its_reason(tmp_path, tiny_trial, constant_text_data,
                                                              tracking_server):
    space = space_file(tmp_path, {**tiny_trial, "dataset": constant_text_data}, num_samples=1, max_concurrent=1,
                       scheduler={"grace_period": 2, "reduction_factor": 2, "dead_trials": True})
    proc = _study(tmp_path, space, "dead", tracking_server)
    (rows,) = trial_results(tmp_path / "results" / "dead").values()
    assert rows[-1]["step"] == 2 and rows[-1]["stop_reason"] == "chance_level"  # alone: ASHA could not stop it
    assert "stopped early at step 2 (chance_level)" in proc.stderr
    assert "1 stopped by the dead-trial rule" in proc.stdout
    (run,) = study_runs(tracking_server, "dead")
    assert run.data.tags["ptplus.status"] == "early_stopped"
    assert run.data.tags["ptplus.stop_reason"] == "chance_level"


def test_concurrency_is_what_the_cluster_can_give(monkeypatch):
    import ray

    from ptplus_tune.cli.tune import _plan
    from ptplus_tune.service import concurrency
    from ptplus_tune.spaces import load_space

    env = ray_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = load_space("default")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec.max_concurrent, spec.resources.cpus = 4, 2
        assert concurrency(spec) == (1, 1)  # max_concurrent says 4, two CPUs fit one 2-CPU trial
        spec.resources.cpus = 1
        assert concurrency(spec) == (2, 2)
        compare = load_space("compare")  # PT+ trials packed 4 to a 2-CPU pack; a baseline reserves all 2 CPUs
        compare.max_concurrent, compare.resources.cpus, compare.resources.pack = 8, 2, 4
        assert concurrency(compare) == (1, 4)
        assert "1 to 4 at a time (room for 4 packed Prefix-Tuning+ trials, or 1 PEFT baseline)" in \
            _plan(compare, "c", "/tmp/c", concurrency(compare))
        compare.resources.cpus = 4  # a pack's 4 CPUs: its PT+ trials fit, a baseline does not
        assert concurrency(compare) == (0, 2)
        spec.resources.gpus = 0.25
        assert concurrency(spec) == (0, 0)  # no GPU yet (an autoscaler may add one)
        assert "none fits the cluster yet" in _plan(spec, "d", "/tmp/d", concurrency(spec))
    finally:
        ray.shutdown()
        kill_ray_under(env["RAY_TMPDIR"])
