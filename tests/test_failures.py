"""What happens when the MLflow server goes away during a study: training goes on, the study ends with one line on
how to log it, and `--resume` logs everything once the server is back."""

import subprocess
import sys
import time

from mlflow import MlflowClient

from tests.mlflow_server import free_port, mlflow_server
from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, study_runs, trial_results

STEPS, EVERY = 1000, 100


def test_a_tracking_server_that_goes_away_loses_no_training(tmp_path, tiny_trial):
    root = tmp_path / "mlflow"
    (root / "artifacts").mkdir(parents=True)
    backend, artifacts, port = f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), free_port()
    # MLflow's client retries a dead server for minutes by default; the test does not wait for that.
    env = ray_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    space = space_file(tmp_path, tiny_trial, max_steps=STEPS, eval_every=EVERY, num_samples=2, max_concurrent=2,
                       scheduler={"type": "none"})
    results = tmp_path / "results"
    try:
        with mlflow_server(backend, artifacts, port=port) as url:
            driver = subprocess.Popen(
                [sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--storage-path", str(results), "--name",
                 "gone", "--tracking-uri", url, "--registered-model", "reg-gone"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
            deadline = time.time() + 300
            while time.time() < deadline:
                found = trial_results(results / "gone")
                if len(found) == 2 and all(rows[-1]["step"] >= EVERY for rows in found.values()):
                    break
                time.sleep(0.2)
        # The server is gone while both trials are mid-way.
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
        kill_ray_under(env["RAY_TMPDIR"])
    assert driver.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the study's results are saved, but logging them to MLflow at {url} failed"), last
    assert last.endswith(f"once it answers again, `ptplus-tune --resume gone --storage-path {results}` logs them")
    assert "Traceback" not in err
    finals = trial_results(results / "gone")
    assert len(finals) == 2 and all(rows[-1]["step"] == STEPS for rows in finals.values())  # training went on

    env = ray_env()
    with mlflow_server(backend, artifacts, port=port) as url:
        try:
            proc = run_cli(["--resume", "gone", "--storage-path", str(results)], env, cwd=tmp_path)
        finally:
            kill_ray_under(env["RAY_TMPDIR"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs = study_runs(url, "gone")
        assert sorted(r.data.tags["ptplus.trial_id"] for r in runs) == sorted(finals)
        assert all(r.info.status == "FINISHED" and r.data.tags["ptplus.status"] == "completed" and
                   "ptplus.model_uri" in r.data.tags for r in runs)
        client = MlflowClient(url)
        assert client.get_model_version_by_alias("reg-gone", "champion").version == "1"
