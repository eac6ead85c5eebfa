"""A study with two objectives (accuracy against trainable parameters) end to end: Pareto-ASHA and multi-objective
TPE, trials ASHA stopped are PRUNED in Optuna, `ptplus.pareto` tags equal the non-dominated set computed here from the
runs' own metrics, `pareto.csv` on the study run, the front in the summary, the champion by the first objective."""

import csv
import io

import optuna
from mlflow import MlflowClient

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import MAX_STEPS, run_cli, space_file, study_runs


def test_a_two_objective_study_marks_its_pareto_front(tmp_path, tiny_trial, tracking_server):
    name, results = "pareto", tmp_path / "results"
    rule = {"min": "trainable_params", "within": {"eval_accuracy": 0.1}}
    space = space_file(tmp_path, tiny_trial, num_samples=6, select=rule,
                       objectives=[{"metric": "eval_accuracy", "mode": "max"},
                                   {"metric": "trainable_params", "mode": "min"}])
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(results), "--name", name, "--tracking-uri",
                        tracking_server, "--registered-model", "reg-pareto", "--register-front", "-q"], env,
                       cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "optimises the Pareto front of eval_accuracy (max), trainable_params (min)" in proc.stderr
    assert "ranked by Pareto fronts" in proc.stderr and "Pareto front: " in proc.stdout

    runs = study_runs(tracking_server, name)
    done = [r for r in runs if r.data.tags["ptplus.status"] == "completed"]
    vectors = {r.data.tags["ptplus.trial_id"]: (r.data.metrics["eval_accuracy"], -r.data.metrics["trainable_params"])
               for r in done}
    front = {t for t, v in vectors.items()
             if not any(w[0] >= v[0] and w[1] >= v[1] and w != v for w in vectors.values())}
    assert front and {r.data.tags["ptplus.trial_id"] for r in runs if r.data.tags["ptplus.pareto"] == "true"} == front
    assert all(r.data.tags["ptplus.pareto"] in ("true", "false") for r in runs)

    client = MlflowClient(tracking_server)
    parent_id = runs[0].data.tags["mlflow.parentRunId"]
    table = client.download_artifacts(parent_id, "pareto.csv", str(tmp_path))
    with open(table) as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert {row["trial_id"] for row in rows} == front
    assert all(row["trial_id"] in proc.stdout for row in rows)

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'optuna.db'}")
    states = {t.state for t in study.trials}
    stopped = [r for r in runs if r.data.tags["ptplus.status"] == "early_stopped"]
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == len(stopped)
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(len(t.values) == 2 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    # The champion: the smallest front member within 0.1 accuracy of the front's best (ties: higher accuracy)
    members = [r for r in done if r.data.tags["ptplus.trial_id"] in front]
    top = max(r.data.metrics["eval_accuracy"] for r in members)
    near = [r for r in members if r.data.metrics["eval_accuracy"] >= top - 0.1 - 1e-12]
    chosen = min(near, key=lambda r: (r.data.metrics["trainable_params"], -r.data.metrics["eval_accuracy"]))
    champion = client.get_model_version_by_alias("reg-pareto", "champion")
    assert champion.tags["ptplus.trial_id"] == chosen.data.tags["ptplus.trial_id"]
    assert "picked from the front by select" in proc.stdout
    versions = client.search_model_versions("name = 'reg-pareto'")
    assert sorted(v.tags["ptplus.trial_id"] for v in versions) == sorted(front)  # --register-front: all of it
    assert all(float(v.tags["ptplus.objective.trainable_params"]) > 0 for v in versions)
    assert "plots/pareto_front.png" in [a.path for a in client.list_artifacts(parent_id, "plots")]
    assert max(int(r.data.metrics["step"]) for r in runs) == MAX_STEPS
