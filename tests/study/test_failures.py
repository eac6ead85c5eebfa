"""What happens when the MLflow server goes away during a study (training goes on, the study ends with one line on
how to log it, `--resume` logs everything once the server is back) or the disk fills up (the study stops like
Ctrl-C while there is still room for its state, and `--resume` finishes it once there is more)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.mlflow_server import free_port, mlflow_server
from tests.polling import wait_until
from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, study_runs, trial_results

STEPS, EVERY = 1000, 100
ROOT = Path(__file__).resolve().parents[2]


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
            def both_evaluated():
                found = trial_results(results / "gone")
                return len(found) == 2 and all(rows[-1]["step"] >= EVERY for rows in found.values())

            wait_until(both_evaluated, 300)
        # The server is gone while both trials are mid-way.
        _out, err = driver.communicate(timeout=600)
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace (unshare)")
def _disk_full_scenario(tmp_path, tiny_trial, tracking_server: str, mode: str) -> dict:
    space = space_file(tmp_path, tiny_trial, max_steps=STEPS, eval_every=EVERY, num_samples=3, max_concurrent=2,
                       scheduler={"type": "none"})
    work = tmp_path / "w"
    work.mkdir()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                           "tests.disk_full_scenario", space, str(work), tracking_server, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads((work / "scenario.json").read_text())


def _resume_finished_every_trial_once(seen: dict, name: str, tracking_server: str) -> None:
    resumed = seen["resumed"]
    assert seen["versions_when_full"] == 0  # nothing registered while the study was stopped
    assert resumed["returncode"] == 0, resumed["stderr"][-3000:]
    assert len(resumed["steps"]) == 3
    for steps in resumed["steps"].values():
        # Tune's result.json is at-least-once around a stop: a report whose checkpoint was not yet saved comes again
        # after --resume (seen: [.., 400, 400, ..]). Every evaluation exactly once is checked on MLflow below.
        assert sorted(set(steps)) == list(range(EVERY, STEPS + 1, EVERY)) and steps.count(EVERY) == 1, steps
    assert "(3 completed, 0 stopped early by ASHA, 0 failed)" in resumed["stdout"]
    runs = study_runs(tracking_server, name)
    assert sorted(r.data.tags["ptplus.trial_id"] for r in runs) == sorted(resumed["steps"])
    for run in runs:  # MLflow: every evaluation once, the run ended as completed
        history = MlflowClient(tracking_server).get_metric_history(run.info.run_id, "eval_accuracy")
        assert sorted(m.step for m in history) == list(range(EVERY, STEPS + 1, EVERY))
        assert run.info.status == "FINISHED" and run.data.tags["ptplus.status"] == "completed"
    assert MlflowClient(tracking_server).get_model_version_by_alias(f"reg-{name}", "champion").version == "1"


def test_a_disk_filling_up_stops_the_study_cleanly_and_resume_finishes_it(tmp_path, tiny_trial, tracking_server):
    seen = _disk_full_scenario(tmp_path, tiny_trial, tracking_server, "guard")
    full = seen["full"]
    assert full["returncode"] == 1, full["stderr"][-3000:]
    assert "interrupted after" in full["stderr"] and "(the disk that holds it is nearly full (" in full["stderr"]
    assert full["stderr"].strip().splitlines()[-1] == (
        f"continue it with: free some space, then ptplus-tune --resume fd --storage-path {seen['results']}")
    _resume_finished_every_trial_once(seen, "fd", tracking_server)


def test_a_disk_filled_to_the_last_byte_ends_the_study_with_one_line_and_resume_finishes_it(
        tmp_path, tiny_trial, tracking_server):
    """The guard off (PTPLUS_MIN_FREE_MB=0): the trials' own checkpoint writes hit ENOSPC."""
    seen = _disk_full_scenario(tmp_path, tiny_trial, tracking_server, "hard")
    full = seen["full"]
    assert full["returncode"] == 2, full["stderr"][-3000:]
    last = full["stderr"].strip().splitlines()[-1]
    assert last == (f"error: the disk that holds {seen['results']}/fdhard is full, so the study stopped (what it saved "
                    f"before may be incomplete): free some space, then `ptplus-tune --resume fdhard --storage-path "
                    f"{seen['results']}`"), full["stderr"][-3000:]
    _resume_finished_every_trial_once(seen, "fdhard", tracking_server)


def test_a_disk_already_nearly_full_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    from ptplus_tune.cli import main

    monkeypatch.setenv("PTPLUS_MIN_FREE_MB", str(10**12))  # more than any disk has
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "quick", "--storage-path", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the disk that holds {tmp_path / 'results' / 'quick-'}"), err
    assert "is nearly full (" in err[0] and not (tmp_path / "results").exists()
