"""A generative study end to end on a real local Ray and MLflow server: trials optimise exact match, every
evaluation's predictions land beside their references as an MLflow table, the champion is registered on exact match
and `ptplus-tune predict` prints its completion."""

import json
from pathlib import Path

from mlflow import MlflowClient

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, study_runs


def test_a_generative_study_registers_a_champion_that_predict_uses(tmp_path, tiny_trial, generation_data,
                                                                   tracking_server):
    space = space_file(tmp_path, {**tiny_trial, "dataset": generation_data}, max_steps=8, eval_every=4,
                       num_samples=3, scheduler={"type": "none"})
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(tmp_path / "results"), "--name", "gen",
                        "--tracking-uri", tracking_server, "--registered-model", "reg-gen"], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The tiny space optimises eval_accuracy, which generation data does not have: the study takes exact match.
    assert f"note: {generation_data} is a generation task; the study optimises eval_exact_match instead of " \
           f"eval_accuracy" in proc.stderr
    assert "best eval_exact_match: " in proc.stdout
    client = MlflowClient(tracking_server)
    runs = study_runs(tracking_server, "gen")
    assert len(runs) == 3
    for run in runs:
        assert {"eval_exact_match", "eval_loss"} <= set(run.data.metrics) and "eval_accuracy" not in run.data.metrics
        tables = sorted(a.path for a in client.list_artifacts(run.info.run_id, "predictions"))
        assert tables == ["predictions/step_000004.json", "predictions/step_000008.json"]  # one per evaluation
    champion = client.get_model_version_by_alias("reg-gen", "champion")
    assert champion.tags["ptplus.metric"] == "eval_exact_match"
    best = next(r for r in runs if r.info.run_id == champion.tags["ptplus.trial_run_id"])
    table = json.loads(Path(client.download_artifacts(best.info.run_id, "predictions/step_000008.json",
                                                      str(tmp_path))).read_text())
    shown = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(shown) == 5 and {"prompt", "reference", "prediction", "score"} <= set(shown[0])
    predicted = run_cli(["predict", "--model-uri", "models:/reg-gen@champion", "--tracking-uri", tracking_server,
                         "--text", shown[0]["prompt"]], env, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert predicted.stdout.removesuffix("\n") == shown[0]["prediction"]  # what its last evaluation decoded
