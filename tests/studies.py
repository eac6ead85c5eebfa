"""Helpers for tests that run studies through the CLI: a tiny space file, Tune's per-trial results, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

MAX_STEPS = 12


def space_file(tmp_path, tiny_trial, max_steps=MAX_STEPS, eval_every=2, **study):
    trial = {k: v for k, v in tiny_trial.items() if k not in ("learning_rate", "num_threads")}
    trial.update(max_steps=max_steps, eval_every=eval_every)
    # The dead-trial rule would end many tiny-model trials at their first rung; these studies test ASHA, resume and
    # tracking, so it is off unless a test turns it on.
    study["scheduler"] = {"dead_trials": False, **study.get("scheduler", {"grace_period": 2, "reduction_factor": 2})}
    data = {
        "name": "tiny", "metric": "eval_accuracy", "mode": "max", "num_samples": 6, "max_concurrent": 2, "seed": 3,
        "resources": {"cpus": 1, "gpus": 0},
        "trial": trial,
        "parameters": {
            "feature_map": {"type": "categorical", "choices": ["elu", "mlp"]},
            "feature_dim": {"type": "int", "low": 4, "high": 16, "when": {"feature_map": "mlp"}},
            "prefix_length": {"type": "int", "low": 2, "high": 8},
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
        **study,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def trial_results(study_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, read from Tune's result.json files."""
    out = {}
    for result_file in study_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def check_resumed(rows: list[dict], last_step: int, every: int) -> None:
    """A trial retried after a failure resumed from a checkpoint (was not restarted from step 0) and finished, as its
    Tune result.json shows. That file is no exact record around a retry: a report whose checkpoint was not persisted
    yet comes again from the retry, and the rows from before the retry can be lost (on the retry Tune copies the
    study's copy of the file back over the driver's while its background sync may be rewriting that copy). So no
    exact step list here: exactly-once is checked on MLflow's record."""
    reported = [r["step"] for r in rows]
    assert reported[-1] == last_step and set(reported) <= set(range(every, last_step + 1, every)), reported
    resumed = [r["step"] for r in rows if r["iterations_since_restore"] == 1 and r["training_iteration"] > 1]
    assert len(resumed) == 1 and resumed[0] > every, reported


def run_cli(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "ptplus_tune.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900, **kwargs)


def study_runs(tracking_uri: str, study: str) -> list:
    """The trial runs (children of the study's parent run) of MLflow experiment `study`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "a run outside the study's parent"
    return children


def validation_accuracy(pyfunc_model, tiny_trial, config) -> float:
    import pandas as pd

    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import load_splits

    settings = {k: v for k, v in tiny_trial.items() if k != "num_threads"}
    splits = load_splits(TrialConfig.from_dict({**settings, **config}))
    out = pyfunc_model.predict(pd.DataFrame({"text": [ex.text for ex in splits.validation]}))
    return sum(label == ex.label for label, ex in zip(out["label"], splits.validation)) / len(splits.validation)
