"""The tuning service on a real local Ray instance (2 CPUs) with the tiny model: ASHA, conditions, best, resume."""

import json
import os
import re
import signal
import subprocess
import sys
from urllib.parse import parse_qs

import pytest
from mlflow import MlflowClient

from tests.polling import wait_until
from tests.postgres import loopback_url, postgres_database
from tests.ray_env import kill_ray_under, ray_env, ray_workers
from tests.studies import MAX_STEPS, check_resumed, run_cli, space_file, study_runs, trial_results


@pytest.fixture(params=["sqlite", "postgresql"])
def optuna_storage(request, tmp_path):
    """The study's Optuna storage: its own sqlite file (local default) or a PostgreSQL database (a cluster's).
    Yields the --optuna-storage flag's value (None: not given) and the URL the kill/resume study's trials land in."""
    if request.param == "sqlite":
        yield None, f"sqlite:///{tmp_path / 'results' / 's2' / 'optuna.db'}"  # the test's study is s2
        return
    with postgres_database() as database:
        yield loopback_url(database), loopback_url(database)


def _trial_workers(ray_root: str) -> list[int]:
    """PIDs of Ray's trial worker processes started under this test's Ray temp root. A trial worker's title is its
    class (`ray::ResourceTrainable.train`, the class Tune wraps ours in) while it runs a task, and its instance's
    repr (`ray::PTPlusTrial`) between tasks."""
    return ray_workers(ray_root, (b"ray::ResourceTrainable", b"ray::PTPlusTrial"))


def test_quick_study_end_to_end(tmp_path, tiny_trial):
    env = ray_env()
    try:
        proc = run_cli(["--space", space_file(tmp_path, tiny_trial), "--storage-path", str(tmp_path / "results"),
                        "--name", "s1"], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Downloading artifacts" not in proc.stderr  # no MLflow progress bars between the progress lines
    results = trial_results(tmp_path / "results" / "s1")
    assert len(results) == 6
    final = {tid: rows[-1] for tid, rows in results.items()}
    # ASHA really stops some trials before the budget; the others run it out.
    stopped = [tid for tid, r in final.items() if r["step"] < MAX_STEPS]
    assert stopped and len(stopped) < 6
    for rows in results.values():
        config = rows[0]["config"]
        assert ("feature_dim" in config) == (config["feature_map"] == "mlp")
        assert [r["step"] for r in rows] == list(range(2, rows[-1]["step"] + 1, 2))
    best = max(r["eval_accuracy"] for r in final.values())
    assert f"best eval_accuracy: {best:.4f}" in proc.stdout
    best_id = proc.stdout.split("(trial ")[1].split(",")[0]
    assert final[best_id]["eval_accuracy"] == best  # the reported configuration is that trial's
    assert f"learning_rate: {final[best_id]['config']['learning_rate']}" in proc.stdout
    assert "stopped early by ASHA" in proc.stdout and "best configuration:" in proc.stdout
    adapter = proc.stdout.split("best adapter: ")[1].splitlines()[0]
    assert sorted(os.listdir(adapter)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert "started" in proc.stderr and "finished" in proc.stderr  # progress lines while it runs
    assert (tmp_path / "results" / "s1" / "optuna.db").is_file()
    # Without --tracking-uri the runs go to a sqlite database in the working directory, and it says how to look.
    assert (tmp_path / "mlflow.db").is_file()
    assert f"mlflow ui: ptplus-tune ui --tracking-uri sqlite:///{tmp_path / 'mlflow.db'}" in proc.stdout
    assert "(then open http://127.0.0.1:5000/#/experiments/1/runs)" in proc.stdout  # the runs page, not GenAI
    # ... and MLflow's compare page for the top trials (the default --top 5), best first.
    compare = proc.stdout.split("compare the top 5 trials: ")[1].splitlines()[0]
    assert compare.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    query = parse_qs(compare.split("?", 1)[1])
    runs, experiments = json.loads(query["runs"][0]), json.loads(query["experiments"][0])
    assert experiments == ["1"] and len(runs) == len(set(runs)) == 5
    assert runs[0] == proc.stdout.split("best trial run ")[1].split()[0]


def test_killed_study_resumes_to_exactly_the_requested_trials(tmp_path, tiny_trial, tracking_server, optuna_storage):
    import optuna
    from optuna.trial import TrialState

    flag, storage = optuna_storage
    name = "s2" if flag is None else "s2pg"  # one tracking server for the session: one experiment name each
    env = ray_env()
    # The PostgreSQL variant is a two-objective (Pareto) study: its scheduler and searcher state survive the kill too
    pareto = {"objectives": [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "trainable_params"}]} if flag \
        else {}
    space = space_file(tmp_path, tiny_trial, num_samples=5, **pareto)
    args = ["--space", space, "--storage-path", str(tmp_path / "results"), "--name", name, "--tracking-uri",
            tracking_server, "--no-register", *(["--optuna-storage", flag] if flag else [])]
    study = tmp_path / "results" / name
    driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        def midway():  # kill once some trials are done and others are mid-way
            results = trial_results(study)
            finals = [rows[-1] for rows in results.values()]
            # A third trial reporting means one of the first two ended (two run at a time) and two more are to come;
            # trials that ASHA stops at the first rung (most of the Pareto study's) may never give two at step 4.
            if len(results) >= 3 or sum(r["step"] >= 4 for r in finals) >= 2:
                return True
            assert driver.poll() is None, f"the driver ended early (exit {driver.returncode})"
            return False

        if not wait_until(midway, 600, interval=0.5):
            pytest.fail("the study made no progress")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    before = trial_results(study)
    assert 0 < len(before) <= 5
    # An Optuna trial the killed driver had opened after Tune last saved its state: RUNNING, known to no Tune trial.
    stale = optuna.load_study(study_name=name, storage=storage).ask().number
    env = ray_env()
    try:
        proc = run_cli(["--resume", name, "--storage-path", str(tmp_path / "results")], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = trial_results(study)
    assert len(after) == 5  # exactly the requested number of trials
    for tid, rows in after.items():
        steps = [r["step"] for r in rows]
        # Never restarted from 0; a report repeated around the kill is Tune's at-least-once (MLflow is checked below).
        assert steps.count(steps[0]) == 1 and steps == sorted(steps), f"trial {tid} restarted: {steps}"
    configs = [json.dumps(rows[0]["config"], sort_keys=True) for rows in after.values()]
    assert len(set(configs)) == 5
    # Optuna (in the storage the study was started with; --resume found it by itself): one closed trial per Tune
    # trial, the stale ones closed as failed, nothing left RUNNING.
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert trials[stale].state == TrialState.FAIL
    assert sum(t.state != TrialState.FAIL for t in trials) == 5
    if pareto:  # trials ASHA stopped are PRUNED, the finished ones COMPLETE with both objectives
        assert {t.state for t in trials if t.state != TrialState.FAIL} <= {TrialState.COMPLETE, TrialState.PRUNED}
        assert all(len(t.values) == 2 for t in trials if t.state == TrialState.COMPLETE)
        assert "Pareto front: " in proc.stdout
    assert (study / "optuna.db").is_file() == (flag is None)
    assert f"optuna study: optuna-dashboard {storage}" in proc.stdout
    # MLflow (the resumed study found its tracking server by itself): the same runs kept, one per trial, no
    # evaluation logged twice or lost, none left RUNNING. A trial that had evaluated before the kill but that Tune
    # had not yet saved is lost to the study: its run stays, FAILED like its Optuna trial.
    runs = {r.data.tags["ptplus.trial_id"]: r for r in study_runs(tracking_server, name)}
    lost = {tid: run for tid, run in runs.items() if tid not in after}
    assert set(after) <= set(runs)
    assert len(lost) <= sum(t.state == TrialState.FAIL for t in trials) - 1  # each one of Optuna's closed trials
    for run in lost.values():
        assert run.info.status == "FAILED" and run.data.tags["ptplus.status"] == "failed"
        assert "Lost trial" in run.data.tags["mlflow.note.content"]
    client = MlflowClient(tracking_server)
    for tid, rows in after.items():
        assert runs[tid].info.status == "FINISHED" and "ptplus.status" in runs[tid].data.tags
        history = client.get_metric_history(runs[tid].info.run_id, "eval_accuracy")
        # Every evaluation up to where the trial ended, once (eval_every 2). Not Tune's result.json rows: rows the
        # killed driver had not yet synced to the study's storage are gone from it after --resume.
        assert sorted(m.step for m in history) == list(range(2, rows[-1]["step"] + 1, 2))


# A worker's retry does not depend on where Optuna keeps its study (the killed-study test covers both stores).
@pytest.mark.parametrize("optuna_storage", ["sqlite"], indirect=True)
def test_a_trial_killed_mid_run_is_retried_from_its_checkpoint(tmp_path, tiny_trial, tracking_server,
                                                               optuna_storage):
    flag, _ = optuna_storage
    name = "s3" if flag is None else "s3pg"
    env = ray_env()
    # Long enough (~2,000 tiny steps) that the trial is still training when the kill lands, however loaded the
    # machine: a trial that had already finished would leave nothing to retry.
    steps, every = 2000, 100
    space = space_file(tmp_path, tiny_trial, max_steps=steps, eval_every=every, num_samples=1, max_concurrent=1,
                       scheduler={"grace_period": steps, "reduction_factor": 2})
    study = tmp_path / "results" / name
    driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--storage-path",
                               str(tmp_path / "results"), "--name", name, "--tracking-uri", tracking_server,
                               "--no-register", *(["--optuna-storage", flag] if flag else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        def evaluated():
            rows = next(iter(trial_results(study).values()), [])
            return rows if rows and rows[-1]["step"] >= every and _trial_workers(env["RAY_TMPDIR"]) else None

        rows = wait_until(evaluated, 300, interval=0.1)
        if rows is None:
            pytest.fail("the trial never got going")
        killed_at = rows[-1]["step"]
        for pid in _trial_workers(env["RAY_TMPDIR"]):
            os.kill(pid, signal.SIGKILL)
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
        kill_ray_under(env["RAY_TMPDIR"])
    assert killed_at < steps, "the trial finished before the kill"
    assert driver.returncode == 0, err[-3000:]
    # One line with the reason, not Tune's traceback (it stays in the trial's error.txt)
    assert re.search(r"trial \w+ failed \(\w+: .+\); retrying it from its last checkpoint \(step \d+\)", err), err
    assert "Trial task failed" not in err and "Traceback" not in err, err
    assert "(1 completed, 0 stopped early by ASHA, 0 failed)" in out
    (trial_id, rows), = trial_results(study).items()
    check_resumed(rows, steps, every)
    # MLflow: still exactly one run for the trial, with every evaluation once, ended as completed.
    (run,) = study_runs(tracking_server, name)
    assert run.data.tags["ptplus.trial_id"] == trial_id and run.data.tags["ptplus.status"] == "completed"
    assert run.info.status == "FINISHED"
    history = MlflowClient(tracking_server).get_metric_history(run.info.run_id, "eval_accuracy")
    assert sorted(m.step for m in history) == list(range(every, steps + 1, every))
    losses = [m.step for m in MlflowClient(tracking_server).get_metric_history(run.info.run_id, "train_loss")]
    assert len(losses) == len(set(losses))  # the retried attempt did not log a training-loss point twice
    assert not (study / ".scratch").exists()  # the killed attempt's scratch went with the study's end


@pytest.mark.parametrize("args, message", [
    (["--space", "nope"], "error: unknown space 'nope'; shipped spaces: compare, default, full, generate, "
                          "generate-quick, pareto, pareto-generate, quick"),
    (["--space", "quick", "--address", "127.0.0.1:9"], "error: the Ray cluster at 127.0.0.1:9 does not answer"),
    (["--space", "quick", "--gpus-per-trial", "1"], "error: the space asks for 1 GPU(s) per trial but the Ray "
                                                    "cluster has 0"),
    (["--resume", "never-ran"], "error: there is no study 'never-ran' to resume"),
    (["--space", "quick", "--tracking-uri", "http://127.0.0.1:9"], "error: the MLflow tracking server at "
                                                                  "http://127.0.0.1:9 does not answer"),
])
def test_service_errors_are_one_line(tmp_path, args, message):
    env = ray_env()
    try:
        proc = run_cli([*args, "--storage-path", str(tmp_path / "r")], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_study_on_a_storage_uri_runs_and_resumes(tmp_path, tiny_trial):
    """`--storage-path` may be any URI Tune's storage accepts (here file://); the Optuna study then lives in the
    database --optuna-storage names, and --resume needs only the name and the URI."""
    storage, optuna_db = f"file://{tmp_path / 'results'}", f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = ray_env()
    try:
        first = run_cli(["--space", space_file(tmp_path, tiny_trial, num_samples=2), "--storage-path", storage,
                         "--name", "u1", "--optuna-storage", optuna_db, "--no-register"], env, cwd=tmp_path)
        again = run_cli(["--resume", "u1", "--storage-path", storage], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert first.returncode == 0, first.stderr[-3000:]
    study = tmp_path / "results" / "u1"
    assert len(trial_results(study)) == 2
    assert {"study_space.yaml", "tracking_uri", "optuna_storage"} <= {p.name for p in study.iterdir()}
    assert not (study / "optuna.db").exists() and not (study / ".scratch").exists()
    assert f"optuna study: optuna-dashboard {optuna_db}" in first.stdout
    assert again.returncode == 0, again.stderr[-3000:]  # a finished study: nothing to run, logged again
    assert "2 trials" in again.stdout and f"optuna-dashboard {optuna_db}" in again.stdout


def test_a_new_local_ray_keeps_token_auth_without_its_warning(tmp_path):
    """Ray turns token authentication on for a new local instance and warns about it at every start; a study's
    local Ray keeps the protection (a token is made and used) without the warning."""
    env = {k: v for k, v in ray_env(HOME=str(tmp_path)).items() if k != "RAY_AUTH_MODE"}
    code = ("import os, ray\nfrom ptplus_tune.service import connect\nprint(connect(None))\n"
            "print(os.environ['RAY_AUTH_MODE'], ray.get(ray.remote(lambda: 41 + 1).remote()))\nray.shutdown()")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["a new local Ray instance", "token 42"]  # on, and tasks run
    assert "Token authentication" not in proc.stderr, proc.stderr
    assert (tmp_path / ".ray" / "auth_token").is_file()
