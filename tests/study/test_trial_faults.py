"""A Tune trial's edge cases, run in-process on a real local Ray instance: a trial restored from its final checkpoint
(a driver killed after persisting it, before Tune saved its final report) reports its end once more through the
trainable's `step`, packed or not, and logs nothing twice to MLflow; a trial that fails for good is one progress line
that names its error.txt."""

import logging

import pytest
import ray
from mlflow import MlflowClient
from ray import tune

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import space_file, study_runs

REPORT_KEYS = ("step", "train_loss", "eval_accuracy", "eval_loss")


@pytest.fixture(scope="module")
def local_ray():
    env = ray_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="ptplus-tune")
        try:
            yield
        finally:
            ray.shutdown()
            kill_ray_under(env["RAY_TMPDIR"])


@pytest.mark.parametrize("pack", [1, 2])
def test_a_trainable_restored_from_its_final_checkpoint_reports_its_end_again(local_ray, tmp_path, tiny_trial,
                                                                              tracking_server, pack):
    from ptplus_tune.service.pack_host import remove_hosts
    from ptplus_tune.service.trainable import StudySettings, trainable
    from ptplus_tune.spaces import load_space
    from ptplus_tune.tracking.study_run import open_study

    name = f"final{pack}"
    spec = load_space(space_file(tmp_path, tiny_trial, resources={"cpus": 1, "gpus": 0, "pack": pack}))
    target = open_study(tracking_server, spec, name, resume=False, registered_model="")
    bound = trainable(StudySettings.of(spec, tracking=target, study_path=str(tmp_path / name), study=name))
    config = {"feature_map": "elu", "prefix_length": 4, "learning_rate": 1e-2}
    first = bound(config=config)
    try:
        reports = []
        while not reports or not reports[-1]["done"]:
            reports.append(first.train())
        final = first.save(str(tmp_path / "final"))
    finally:
        first.stop()
    again = bound(config=config)  # the same trial id ("default"): Tune's retry of the trial
    try:
        again.restore(final)
        repeated = again.train()
    finally:
        again.stop()
        remove_hosts(name)
    assert repeated["done"] and repeated["step"] == spec.max_steps
    assert {k: repeated[k] for k in REPORT_KEYS} == {k: reports[-1][k] for k in REPORT_KEYS}
    assert repeated["pack_trials"] == 1 and (pack == 1 or repeated["worker_model_loads"] == 1)
    (run,) = study_runs(tracking_server, name)
    client = MlflowClient(tracking_server)
    evaluations = [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")]
    assert evaluations == sorted(set(evaluations)) and evaluations[-1] == spec.max_steps  # none twice
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 1  # the adapter, logged once


def _fails(config):
    raise ValueError("the data for this trial is unreadable")


def test_a_trial_that_fails_for_good_is_one_line_naming_its_error_file(local_ray, tmp_path, caplog):
    from ptplus_tune.service.progress import StudyProgress

    progress = StudyProgress("eval_accuracy", "max", max_steps=10)
    tuner = tune.Tuner(_fails, run_config=tune.RunConfig(
        name="fails", storage_path=str(tmp_path), callbacks=[progress], verbose=0,
        failure_config=tune.FailureConfig(max_failures=1)))
    with caplog.at_level(logging.INFO, logger="ptplus_tune.progress"):
        grid = tuner.fit()
    (_trial_error,) = grid.errors
    events = [r.getMessage() for r in caplog.records if r.name == "ptplus_tune.progress"]
    lines = [line for line in events if " failed (" in line]
    assert len(lines) == 2, lines
    retry, final = lines
    assert "failed (ValueError: the data for this trial is unreadable); retrying it from its last checkpoint " \
           "(step 0)" in retry
    assert "failed (ValueError: the data for this trial is unreadable; full error in " in final
    error_file = final.split("full error in ")[1].split(")")[0]
    assert error_file.startswith(str(tmp_path / "fails")) and error_file.endswith("/error.txt")
    assert "0 running, 0 finished, 0 stopped early, 1 failed" in final
    assert progress.failed and not progress.running
