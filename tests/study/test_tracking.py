"""MLflow tracking against a real `mlflow server` process: runs per trial, metric histories, status tags, adapters
as pyfunc models, the study report, the registry (champion / challenger), predict, the UI."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.polling import wait_until
from tests.ray_env import kill_ray_under, ray_env
from tests.studies import MAX_STEPS, run_cli, space_file, study_runs, trial_results, validation_accuracy

MODEL = "tiny-colours"


def _study(tmp_path, tiny_trial, tracking_server, name, **space):
    env = ray_env()
    try:
        proc = run_cli(["--space", space_file(tmp_path, tiny_trial, **space), "--storage-path",
                        str(tmp_path / "results"), "--name", name, "--tracking-uri", tracking_server,
                        "--registered-model", MODEL], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def first_study(tmp_path_factory, tiny_trial_settings, tracking_server):
    tmp_path = tmp_path_factory.mktemp("study")
    proc = _study(tmp_path, tiny_trial_settings, tracking_server, "t1", num_samples=5)
    return tmp_path, proc


def test_every_trial_has_one_complete_run(first_study, tracking_server):
    tmp_path, _proc = first_study
    results = trial_results(tmp_path / "results" / "t1")
    runs = study_runs(tracking_server, "t1")
    assert len(results) == 5
    by_trial = {r.data.tags["ptplus.trial_id"]: r for r in runs}
    assert sorted(by_trial) == sorted(results) and len(runs) == 5  # exactly one run per trial
    client = MlflowClient(tracking_server)
    param_names = {frozenset(r.data.params) for r in runs}
    assert len(param_names) == 1 and {"learning_rate", "prefix_length", "feature_map"} <= set(*param_names)
    statuses = set()
    for trial_id, rows in results.items():
        run = by_trial[trial_id]
        for metric in ("eval_accuracy", "eval_loss", "tokens_per_s", "peak_mem_mb", "trainable_params"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [r["step"] for r in rows], metric
        # train_loss: at every evaluation and, cheaply, every log_every (5) steps in between; each step once.
        losses = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        assert losses == sorted({r["step"] for r in rows} | set(range(5, rows[-1]["step"] + 1, 5)))
        expected = "completed" if rows[-1]["step"] >= MAX_STEPS else "early_stopped"  # what Ray recorded
        assert run.data.tags["ptplus.status"] == expected
        statuses.add(expected)
        assert run.info.status == "FINISHED"
        assert run.data.params["learning_rate"] == str(rows[0]["config"]["learning_rate"])
        model_uri = run.data.tags["ptplus.model_uri"]
        assert model_uri.startswith("models:/")  # every trial's adapter, stopped ones too
        # ... filed under the study's experiment (its Models tab), also those the driver logs for stopped trials
        assert client.get_logged_model(model_uri.removeprefix("models:/")).experiment_id == run.info.experiment_id
    assert statuses == {"completed", "early_stopped"}


def test_study_run_holds_the_report(first_study, tracking_server):
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("t1")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`ptplus.study` = 't1'")
    assert parent.info.status == "FINISHED" and len(parent.data.tags["ptplus.space_sha256"]) == 64
    assert parent.data.params["metric"] == "eval_accuracy" and parent.data.params["dataset"].endswith(")")
    assert "ptplus.version.torch" in parent.data.tags
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study_space.yaml", "trials.csv", "best_trial.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots
    best = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_trial.json")).read_text())
    assert parent.data.metrics["eval_accuracy"] == best["metrics"]["eval_accuracy"]
    assert parent.data.tags["ptplus.best_run_id"] == best["run_id"]
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv")).read_text().splitlines()
    assert len(table) == 1 + 5 and table[1].startswith(best["trial_id"])  # sorted best first
    # The UI opens on the runs (a model-training experiment), and the study run's description is the ranked table.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = parent.data.tags["mlflow.note.content"].splitlines()
    assert note[4].startswith("| trial | run | status | eval_accuracy | step |")
    assert note[6].startswith(f"| {best['trial_id']} | [trial-{best['trial_id']}](#/experiments/"
                              f"{experiment.experiment_id}/runs/{best['run_id']}) |")
    assert f"**Best**: trial {best['trial_id']}" in "\n".join(note)


def test_best_adapter_is_registered_and_reproduces_its_metric(first_study, tracking_server, tiny_trial_settings):
    import mlflow

    _tmp_path, proc = first_study
    client = MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    best_run = client.get_run(champion.run_id)
    assert champion.tags["ptplus.study"] == "t1" and champion.tags["ptplus.trial_run_id"] == best_run.info.run_id
    assert float(champion.tags["ptplus.metric_value"]) == best_run.data.metrics["eval_accuracy"]
    assert f"registered: models:/{MODEL}/{champion.version} as @champion" in proc.stdout
    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    best = json.loads(Path(client.download_artifacts(best_run.data.tags["mlflow.parentRunId"],
                                                      "best_trial.json")).read_text())
    assert best["run_id"] == best_run.info.run_id
    config = best["config"]
    accuracy = validation_accuracy(model, tiny_trial_settings, config)
    assert accuracy == pytest.approx(best_run.data.metrics["eval_accuracy"])

    # The same model from a fresh process through the CLI gives the same labels.
    texts = ["the sea and the sky", "a big red rose"]
    proc = subprocess.run([sys.executable, "-m", "ptplus_tune.cli", "predict", "--model-uri",
                           f"models:/{MODEL}@champion", "--tracking-uri", tracking_server, "--json",
                           *[arg for t in texts for arg in ("--text", t)]], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pandas as pd

    expected = model.predict(pd.DataFrame({"text": texts}))
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [g["label"] for g in got] == list(expected["label"])
    assert got[0]["scores"] == pytest.approx(expected["scores"][0])


def test_a_worse_study_does_not_move_the_champion(first_study, tmp_path, tiny_trial_settings, tracking_server):
    client = MlflowClient(tracking_server)
    before = client.get_model_version_by_alias(MODEL, "champion")
    # A learning rate too small to learn anything: its best cannot beat a trained champion.
    proc = _study(tmp_path, tiny_trial_settings, tracking_server, "t2", num_samples=2, max_steps=4,
                  parameters={"learning_rate": {"type": "float", "low": 1e-9, "high": 2e-9}})
    after = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert float(challenger.tags["ptplus.metric_value"]) <= float(before.tags["ptplus.metric_value"])
    assert after.version == before.version and challenger.tags["ptplus.study"] == "t2"
    assert "as @challenger; champion stays version" in proc.stdout


def test_the_ui_answers(tracking_server):
    with urllib.request.urlopen(f"{tracking_server}/", timeout=30) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_ui_command_serves_a_tracking_database(tmp_path):
    import mlflow

    from tests.mlflow_server import answers, free_port

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("exists")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "ui", "--tracking-uri", uri, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def up():
            if answers(f"http://127.0.0.1:{port}/"):
                return True
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            return False

        if not wait_until(up, 120, interval=0.5):
            pytest.fail("ptplus-tune ui never answered")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
