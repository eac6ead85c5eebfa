"""`--time-budget`: the study ends at its budget as done (not interrupted), with fewer trials than asked, the best
evaluated trial registered, the study run tagged; `--resume NAME --time-budget MORE` then continues it."""

from mlflow import MlflowClient

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, trial_results

# Far more trials than any machine runs in 45 s (a trial is 5-50 s here, by machine), and evaluations every 50 steps,
# so that even on a slow or busy machine the first trial has evaluated before the deadline. The test asserts what
# happened, never how many trials fit: that depends on the machine's speed.
STEPS, EVERY, TRIALS = 1600, 50, 40


def test_a_time_budget_ends_the_study_with_a_champion_and_resume_gives_it_more(tmp_path, tiny_trial,
                                                                              tracking_server):
    name, results = "budget", tmp_path / "results"
    space = space_file(tmp_path, tiny_trial, max_steps=STEPS, eval_every=EVERY, num_samples=TRIALS,
                       max_concurrent=1, scheduler={"type": "none"})
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(results), "--name", name, "--tracking-uri",
                        tracking_server, "--registered-model", "reg-budget", "--time-budget", "45s", "-q"],
                       env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time budget 45 s" in proc.stderr  # the plan line
    assert f"study {name} reached its time budget (45 s)" in proc.stdout, proc.stdout
    assert f"give it more time with: ptplus-tune --resume {name} --storage-path {results} --time-budget" in proc.stdout
    first = trial_results(results / name)
    assert 1 <= len(first) < TRIALS
    client = MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias("reg-budget", "champion")  # the best evaluated trial
    parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                f"tags.`ptplus.study` = '{name}' and tags.`ptplus.status` = 'time_budget'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert champion.run_id != parent[0].info.run_id

    env = ray_env()
    try:
        more = run_cli(["--resume", name, "--storage-path", str(results), "--time-budget", "45s", "-q"], env,
                       cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"study {name} reached its time budget (45 s)" in more.stdout, more.stdout
    after = trial_results(results / name)
    assert len(first) <= len(after) < TRIALS
    assert sum(rows[-1]["step"] for rows in after.values()) > sum(rows[-1]["step"] for rows in first.values())
    for trial_id, rows in first.items():  # a trial stopped at the deadline went on from its checkpoint
        assert [r["step"] for r in after[trial_id]][:len(rows)] == [r["step"] for r in rows]
