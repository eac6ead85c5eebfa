"""bench/replicate_paper.py end to end on the tiny model: balanced compare studies over two seeds (real Ray, real
MLflow server), each method's winner scored on the test split, the markdown table (mean ± sd over the seeds) printed
and logged on each study's parent run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import study_runs

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "replicate_paper.py"


def _space(tmp_path, tiny_trial) -> str:
    trial = {k: v for k, v in tiny_trial.items() if k not in ("learning_rate", "num_threads")}
    trial.update(max_steps=6, eval_every=3)
    data = {"name": "tiny-compare", "num_samples": 3, "max_concurrent": 2, "seed": 0, "balance": "method",
            "scheduler": {"grace_period": 3, "reduction_factor": 2}, "resources": {"cpus": 1, "gpus": 0},
            "trial": trial,
            "parameters": {
                "method": {"type": "categorical", "choices": ["ptplus", "lora", "prefix_tuning"]},
                "prefix_length": {"type": "int", "low": 2, "high": 8, "when": {"method": ["ptplus", "prefix_tuning"]}},
                "learning_rate": {"type": "float", "low": 1e-2, "high": 1e-1, "log": True}}}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _run(tmp_path, args):
    env = ray_env()
    try:
        return subprocess.run([sys.executable, str(SCRIPT), "--storage-path", str(tmp_path / "results"), *args],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])


def _test_accuracy(tracking_uri, model_uri, tiny_trial, config) -> float:
    import mlflow
    import pandas as pd

    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import load_splits

    settings = {k: v for k, v in tiny_trial.items() if k != "num_threads"}
    splits = load_splits(TrialConfig.from_dict({**settings, **config}))
    mlflow.set_tracking_uri(tracking_uri)
    out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": [ex.text for ex in splits.test]}))
    return sum(label == ex.label for label, ex in zip(out["label"], splits.test)) / len(splits.test)


def test_replication_table_is_printed_and_logged_on_the_parent_run(tmp_path, tiny_trial, tracking_server):
    args = ["--space", _space(tmp_path, tiny_trial), "--per-method", "1", "--seeds", "2", "--name", "rep",
            "--tracking-uri", tracking_server, "--step-rounds", "3", "--rows", str(tmp_path / "rows.json")]
    proc = _run(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = [line for line in proc.stderr.splitlines() if " started: " in line]
    assert len(started) == 6 and len(set(started)) == 6  # each seed's progress printed once, not once per seed so far
    client = MlflowClient(tracking_server)
    report = None
    for seed in (0, 1):
        runs = study_runs(tracking_server, f"rep-seed{seed}")
        assert sorted(r.data.params["method"] for r in runs) == ["lora", "prefix_tuning", "ptplus"]  # balanced
        assert {r.data.params["seed"] for r in runs} == {str(seed)}
        parent_id = runs[0].data.tags["mlflow.parentRunId"]
        table = Path(client.download_artifacts(parent_id, "replication.md", str(tmp_path / str(seed)))).read_text()
        assert table in proc.stdout
        report = json.loads(Path(client.download_artifacts(parent_id, "replication.json",
                                                           str(tmp_path / str(seed)))).read_text())
        by_trial = {r.data.tags["ptplus.trial_id"]: r for r in runs}
        for row in (r for r in report["rows"] if r["seed"] == seed):
            winner = by_trial[row["trial_id"]]
            assert row["validation"] == pytest.approx(winner.data.metrics["eval_accuracy"])
            assert row["trainable_params"] == winner.data.metrics["trainable_params"] > 0
            # The winner's adapter as MLflow serves it gives the same test accuracy as the bench measured.
            accuracy = _test_accuracy(tracking_server, winner.data.tags["ptplus.model_uri"], tiny_trial, row["config"])
            assert row["test"] == pytest.approx(accuracy)
            logged = client.get_run(parent_id).data.metrics[f"replication.{row['method']}.test_accuracy"]
            assert logged == pytest.approx(accuracy)
    for row in ("| Prefix-Tuning+ | 2 | 1 (", "| Prefix-Tuning (PEFT) | 2 | 1 (", "| LoRA (PEFT) | 2 | 1 (",
                "| base model, zero-shot |"):
        assert row in table
    assert "Prefix-Tuning+ - LoRA (PEFT):" in table and "Prefix-Tuning+ - Prefix-Tuning (PEFT):" in table
    assert all(row["step_ms"] > 0 for row in report["rows"] if row["seed"] == 0)
    assert len({row["trainable_params"] for row in report["rows"] if row["seed"] == 0}) == 3
    for method in ("ptplus", "lora", "prefix_tuning"):  # mean ± sd of the two seeds' test scores
        tests = [100 * r["test"] for r in report["rows"] if r["method"] == method]
        mean, sd = sum(tests) / 2, abs(tests[0] - tests[1]) / 2 ** 0.5
        assert f"{mean:.1f} ± {sd:.1f}" in table
    # The scored seeds are kept in --rows: run again, nothing is trained and the table's scores are the same.
    assert [r["test"] for r in json.loads((tmp_path / "rows.json").read_text())["rows"]] == \
        [r["test"] for r in report["rows"]]
    again = _run(tmp_path, args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seeds [0, 1] taken from" in again.stderr and "studies rep-seed" not in again.stderr
    scores = [line.split("|")[1:6] for line in table.splitlines() if line.startswith("| ")]
    assert scores == [line.split("|")[1:6] for line in again.stdout.splitlines() if line.startswith("| ")]


def test_a_space_without_balanced_methods_is_refused(tmp_path, tracking_server):
    proc = _run(tmp_path, ["--space", "default", "--tracking-uri", tracking_server])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "balance: method" in proc.stderr
    assert not (tmp_path / "results").exists()
