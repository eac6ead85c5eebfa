"""MLflow tracking against a real `mlflow server` process: runs per trial, metric histories, status tags, adapters
as pyfunc models, the study report, the registry (champion / challenger), predict, the UI."""


import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.studies import space_file, study_runs, validation_accuracy

MODEL = "tiny-colours"


@pytest.mark.parametrize("method", ["ptplus", "lora", "prefix_tuning"])
def test_a_logged_adapter_predicts_as_its_trial_evaluated(tmp_path, tiny_trial, method):
    """Without Ray: a trial's last checkpoint logged as a pyfunc model (sqlite store) and loaded back scores the
    validation set exactly as the trial's own evaluation did, for PT+ and both PEFT baselines."""
    import shutil

    import mlflow

    from ptplus_tune.tracking.pyfunc import log_adapter
    from ptplus_tune.trial import TrialConfig, run_trial

    kept = tmp_path / "checkpoint"

    def keep(metrics, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    config = {**tiny_trial, "method": method, "max_steps": 8, "learning_rate": 2e-2 if method == "ptplus" else 5e-2}
    result = run_trial(TrialConfig.from_dict(config), report=keep)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    # The artifacts beside the database: a sqlite store's default root is ./mlruns in the working directory.
    run = client.create_run(client.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri()))
    model_uri = log_adapter(client, run.info.run_id, str(kept), 8)
    assert client.get_run(run.info.run_id).data.tags["ptplus.model_uri"] == model_uri
    model = mlflow.pyfunc.load_model(model_uri)
    accuracy = validation_accuracy(model, tiny_trial, {"method": method})
    assert accuracy == pytest.approx(result.metrics["eval_accuracy"])
    local = mlflow.artifacts.download_artifacts(model_uri)
    # The raw adapter files are inside the model, and no pickled Python object is.
    assert "adapter_config.json" in os.listdir(os.path.join(local, "artifacts", "adapter"))
    assert not any(name.endswith(".pkl") for _, _, files in os.walk(local) for name in files)


@pytest.mark.parametrize("args, message", [
    (["predict", "--model-uri", "models:/no-such-model@champion", "--text", "x"], "error: could not load "
                                                                                   "models:/no-such-model@champion"),
    (["ui", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "error: no tracking database at "),
])
def test_tracking_commands_fail_in_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "ptplus_tune.cli", *args, "--tracking-uri",
                           f"sqlite:///{tmp_path / 'm.db'}"] if args[0] == "predict" else
                          [sys.executable, "-m", "ptplus_tune.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_runs_of_trials_a_killed_driver_lost_are_closed_when_the_study_ends(tmp_path, tiny_trial, caplog,
                                                                             monkeypatch):
    """A driver killed after a trial opened its run but before Tune saved that trial: the resumed study never knows
    it. Its run must not stay RUNNING or pass for a trial of the study."""
    from ptplus_tune.service.study import StudyResult, TrialSummary
    from ptplus_tune.spaces import load_space
    from ptplus_tune.tracking import finish_study, open_study
    from ptplus_tune.tracking.trial_run import TrialRun

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_space(space_file(tmp_path, tiny_trial))
    target = open_study(uri, spec, "lost", resume=False)
    config = {"feature_map": "elu", "prefix_length": 4, "learning_rate": 0.01}
    for trial_id, evaluated in (("kept", True), ("lost-evaluated", True), ("lost-early", False)):
        run = TrialRun(target, trial_id, config)
        run.log_metrics({"step": 1, "train_loss": 1.0}, evaluation=False)
        if evaluated:
            run.log_metrics({"step": 2, "eval_accuracy": 0.5, "eval_loss": 1.0})
    result = StudyResult("lost", str(tmp_path), "eval_accuracy", "max",
                         [TrialSummary("kept", config, {"step": 2, "eval_accuracy": 0.5}, "early_stopped", "asha")])
    with caplog.at_level("WARNING", logger="ptplus_tune.tracking.study_run"):
        finish_study(target, result, spec)
        # A finished study resumed (e.g. to log it again once MLflow is back) finishes again: said once, not twice.
        finish_study(target, result, spec)
    lost_lines = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert len(lost_lines) == 1 and lost_lines[0].startswith("trial lost-evaluated was lost with the killed driver")

    client = MlflowClient(uri)
    runs = {r.data.tags["ptplus.trial_id"]: r for r in study_runs(uri, "lost")}
    assert sorted(runs) == ["kept", "lost-evaluated"]  # the one with nothing evaluated is deleted
    assert runs["kept"].info.status == "FINISHED" and runs["kept"].data.tags["ptplus.status"] == "early_stopped"
    lost = runs["lost-evaluated"]
    assert lost.info.status == "FAILED" and lost.data.tags["ptplus.status"] == "failed"
    assert lost.data.tags["mlflow.note.content"].startswith("**Lost trial.**")
    assert [m.step for m in client.get_metric_history(lost.info.run_id, "eval_accuracy")] == [2]  # kept as logged
    deleted = client.search_runs([target.experiment_id], "tags.`ptplus.trial_id` = 'lost-early'",
                                 run_view_type=2)  # ViewType.DELETED_ONLY: restorable
    assert len(deleted) == 1
    table = client.download_artifacts(target.parent_run_id, "trials.csv", str(tmp_path))
    assert len(Path(table).read_text().splitlines()) == 1 + 1  # the study's table holds its own trials only
