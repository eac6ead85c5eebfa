"""The search-efficiency replay (bench/search_efficiency.py) on a small synthetic table: the real service path
replays stored curves, counts the training steps spent in report order and ends the study at the target."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import search_efficiency

from tests.ray_env import ray_env


def _table():
    grid = {"feature_map": ["elu", "gelu"], "prefix_length": [4, 16], "learning_rate": [1e-4, 1e-3]}
    runs = []
    for fm in grid["feature_map"]:
        for p in grid["prefix_length"]:
            for lr in grid["learning_rate"]:
                final = 0.3 + 0.1 * (fm == "elu") + 0.2 * (p == 16) + 0.3 * (lr == 1e-3)  # one best: 0.9
                curve = [{"step": s, "eval_accuracy": final * s / 40, "eval_loss": 1.0, "train_loss": 1.0}
                         for s in (10, 20, 30, 40)]
                runs.append({"config": {"feature_map": fm, "prefix_length": p, "learning_rate": lr}, "curve": curve})
    return {"grid": grid, "settings": {"max_steps": 40, "eval_every": 10}, "runs": runs}


def _replay(tmp_path, monkeypatch, target, sampler, early_stopping):
    import ray

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    table = _table()
    counter = search_efficiency.StepCounter(target)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = search_efficiency.run_study(
            search_efficiency.spec_for(table, sampler, early_stopping, seed=0), "replay", str(tmp_path),
            trainable=search_efficiency.replay_trainable(search_efficiency.curves(table)), callbacks=[counter],
            stop=search_efficiency.StopAtTarget(counter))
    finally:
        ray.shutdown()
    return counter, result


def test_replay_stops_the_study_when_the_target_is_reached(tmp_path, monkeypatch):
    counter, result = _replay(tmp_path, monkeypatch, 0.0, "tpe", True)  # any first report reaches it
    assert counter.steps_to_target == 10
    assert len(result.trials) == 1 and result.trials[0].metrics["step"] == 10


@pytest.mark.parametrize("sampler, early_stopping", [("tpe", True), ("random", False)])
def test_replay_counts_every_step_a_strategy_spends(tmp_path, monkeypatch, sampler, early_stopping):
    counter, result = _replay(tmp_path, monkeypatch, 2.0, sampler, early_stopping)  # unreachable: all 8 trials
    assert counter.steps_to_target is None and len(result.trials) == 8
    curves = search_efficiency.curves(_table())
    for trial in result.trials:  # each trial replays its configuration's stored curve
        stored = curves[search_efficiency.grid.key(trial.config)]
        assert trial.metrics["eval_accuracy"] == next(p["eval_accuracy"] for p in stored
                                                      if p["step"] == trial.metrics["step"])
    assert counter.spent == sum(t.metrics["step"] for t in result.trials)
    if early_stopping:
        assert counter.spent < 8 * 40  # ASHA stopped some
    else:
        assert counter.spent == 8 * 40


def test_spearman_handles_order_and_ties():
    assert search_efficiency.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert search_efficiency.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert search_efficiency.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)


def test_the_current_policy_is_replayed_with_the_shipped_default_settings():
    from ptplus_tune.spaces import load_space

    default = load_space("default")
    spec = search_efficiency.spec_for(_table(), "tpe", True, seed=3, policy="now")
    assert (spec.num_samples, spec.n_startup_trials) == (default.num_samples, default.n_startup_trials)
    assert spec.scheduler == default.scheduler and spec.rungs == [10, 30]  # the grid's 40 steps
    assert spec.trial_policy() == {"eval_steps": [10, 30], "dead_trial_step": 10}
    assert spec.parameter("feature_map").choices == default.parameter("feature_map").choices
    wider = search_efficiency.spec_for(_table(), "tpe", True, seed=3, policy="now", budget=30)
    assert (wider.num_samples, wider.n_startup_trials) == (30, 7)
