"""Ctrl-C (SIGINT) and SIGTERM during a study: reported as interrupted, nothing registered, runs say so, `--resume`
hint (not Ray's Python one), exit 130/143, nothing left running; `--resume` then finishes it; a second signal quits
at once."""

import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.polling import wait_until
from tests.ray_env import kill_ray_under, processes_under, ray_env
from tests.studies import run_cli, space_file, study_runs, trial_results

STEPS, EVERY = 1000, 100  # long enough (~30 s here) that trials are mid-run when the signal lands


def _start(tmp_path, tiny_trial, tracking_server, name):
    env = ray_env()
    space = space_file(tmp_path, tiny_trial, max_steps=STEPS, eval_every=EVERY, num_samples=3, max_concurrent=2,
                       scheduler={"type": "none"})
    driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--storage-path",
                               str(tmp_path / "results"), "--name", name, "--tracking-uri", tracking_server,
                               "--registered-model", f"reg-{name}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    def both_evaluated():  # both concurrent trials have evaluated at least once
        results = trial_results(tmp_path / "results" / name)
        return len(results) == 2 and all(rows[-1]["step"] >= EVERY for rows in results.values())

    if wait_until(both_evaluated, 300):
        return env, driver
    driver.kill()
    kill_ray_under(env["RAY_TMPDIR"])
    pytest.fail("the study never got going")


def _nothing_left(root: str, within: float = 30.0) -> bool:
    return bool(wait_until(lambda: not processes_under(root), within, interval=0.5))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_study_says_so_registers_nothing_and_resumes(tmp_path, tiny_trial, tracking_server, signum,
                                                                    code):
    name = f"int{signum}"
    env, driver = _start(tmp_path, tiny_trial, tracking_server, name)
    try:
        driver.send_signal(signum)
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == code, err[-3000:]
        assert _nothing_left(env["RAY_TMPDIR"]), "Ray processes outlived the interrupted study"
    finally:
        driver.kill()
        kill_ray_under(env["RAY_TMPDIR"])
    results = tmp_path / "results"
    assert f"continue it with: ptplus-tune --resume {name} --storage-path {results}" in err
    assert "Tuner.restore" not in err + out and "done after" not in out and "stopped early by ASHA" not in out
    assert f"study {name} interrupted after" in err and "nothing registered" in err
    client = MlflowClient(tracking_server)
    assert not client.search_registered_models(f"name = 'reg-{name}'")
    parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                f"tags.`ptplus.study` = '{name}' and tags.`ptplus.status` = 'interrupted'")
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    runs = study_runs(tracking_server, name)
    interrupted = [r for r in runs if r.data.tags.get("ptplus.status") == "interrupted"]
    assert len(interrupted) == 2 and all(r.info.status == "KILLED" for r in interrupted)
    if signum == signal.SIGTERM:
        return  # resuming is the same whichever signal ended the study

    env = ray_env()
    try:
        proc = run_cli(["--resume", name, "--storage-path", str(results)], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = trial_results(results / name)
    assert len(after) == 3 and all(rows[-1]["step"] == STEPS for rows in after.values())
    for rows in after.values():
        steps = [r["step"] for r in rows]
        assert steps == list(range(EVERY, STEPS + 1, EVERY)), steps  # continued, nothing trained twice
    runs = study_runs(tracking_server, name)
    assert len(runs) == 3
    assert all(r.info.status == "FINISHED" and r.data.tags["ptplus.status"] == "completed" for r in runs)
    (version,) = client.search_model_versions(f"name = 'reg-{name}'")
    assert client.get_model_version_by_alias(f"reg-{name}", "champion").version == version.version


def test_a_second_signal_quits_at_once(tmp_path, tiny_trial, tracking_server):
    env, driver = _start(tmp_path, tiny_trial, tracking_server, "twice")
    try:
        driver.send_signal(signal.SIGINT)
        time.sleep(0.3)  # two signals close together can reach Python's handler as one
        driver.send_signal(signal.SIGINT)
        _out, err = driver.communicate(timeout=60)
        assert driver.returncode == 130, err[-3000:]
        assert "SIGINT again: quitting now. Continue it with: ptplus-tune --resume twice" in err
        assert _nothing_left(env["RAY_TMPDIR"]), "Ray processes outlived the driver"
    finally:
        driver.kill()
        kill_ray_under(env["RAY_TMPDIR"])
