"""Several objectives: non-dominated sorting and crowding distance against their definitions, Pareto-ASHA's rung
decisions on hand-built vectors, the `objectives:` key, and trials ASHA stopped recorded as PRUNED in Optuna."""

import math

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.schedulers import ParetoASHA, build_scheduler
from ptplus_tune.service.study import build_searcher
from ptplus_tune.spaces import parse_space
from ptplus_tune.spaces.pareto import crowding, dominates, fronts, ranked, select, signed

C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
# (accuracy, -params): to maximise both
POINTS = [(0.9, -400), (0.8, -100), (0.85, -200), (0.7, -300), (0.6, -50), (0.95, -800), (0.8, -150)]


def _dominated_by_none(vectors):
    return sorted(i for i, v in enumerate(vectors) if not any(dominates(w, v) for w in vectors))


def test_fronts_are_the_successive_non_dominated_sets():
    layers, rest = [], list(range(len(POINTS)))
    while rest:  # the definition: peel off the non-dominated set of what is left, again and again
        top = [rest[i] for i in _dominated_by_none([POINTS[j] for j in rest])]
        layers.append(top)
        rest = [i for i in rest if i not in top]
    assert [sorted(f) for f in fronts(POINTS)] == layers
    assert layers[0] == [0, 1, 2, 4, 5]  # (0.7, -300) is beaten by (0.85, -200); (0.8, -150) by (0.8, -100)


def test_crowding_distance_keeps_the_ends_and_sums_normalised_gaps():
    front = [0, 1, 2, 4, 5]
    distance = crowding(POINTS, front)
    assert distance[4] == distance[5] == math.inf  # the extremes on each objective
    # index 2 (0.85, -200): neighbours on accuracy 0.8 and 0.9, on params -400 and -100; ranges 0.35 and 750
    assert distance[2] == pytest.approx((0.9 - 0.8) / 0.35 + (-100 - -400) / 750)
    assert ranked(POINTS)[:2] == [4, 5] and set(ranked(POINTS)[5:]) == {3, 6}


def test_pareto_asha_keeps_the_best_third_of_a_rung_by_fronts_then_crowding():
    scheduler = ParetoASHA([("eval_accuracy", "max"), ("trainable_params", "min")], time_attr="step", max_t=30,
                           grace_period=10, reduction_factor=3)
    assert scheduler.rungs == [10]
    decisions = []
    for accuracy, params in [(0.5, 100), (0.4, 200), (0.6, 50), (0.55, 300), (0.7, 400), (0.3, 60)]:
        trial = Trial("t", config={}, stub=True)
        decisions.append(scheduler.on_trial_result(None, trial, {"step": 10, "eval_accuracy": accuracy,
                                                                 "trainable_params": params}))
        assert scheduler.on_trial_result(None, trial, {"step": 20, "eval_accuracy": 0.0,
                                                       "trainable_params": params}) == C  # no rung at 20
    # 1st alone: kept. 2nd (0.4, 200) is dominated by the 1st: rank 2 of 2, keep 1 -> stop. 3rd (0.6, 50)
    # dominates both: rank 1 of 3 -> kept. 4th (0.55, 300): dominated by the 3rd, 4 recorded keep 1 -> stop.
    # 5th (0.7, 400) is on the front with the 3rd (two members: both ends, infinite distance; the earlier first):
    # rank 2 of 5, keep 1 -> stop. 6th (0.3, 60): dominated by the 3rd; 6 recorded keep 2 -> stop.
    assert decisions == [C, S, C, S, S, S]


def test_objectives_in_a_space(tmp_path):
    base = {"name": "s", "parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
            "objectives": [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "trainable_params"}]}
    spec = parse_space(base)
    assert spec.objectives == [("eval_accuracy", "max"), ("trainable_params", "min")]
    assert (spec.metric, spec.mode) == ("eval_accuracy", "max")
    assert parse_space(spec.to_data()).objectives == spec.objectives
    assert isinstance(build_scheduler(spec), ParetoASHA)
    assert signed({"eval_accuracy": 0.5, "trainable_params": 10}, spec.objectives) == (0.5, -10.0)
    for objectives, message in [
        ([{"metric": "eval_accuracy"}], "a list of two or more"),
        ([{"metric": "trainable_params"}, {"metric": "eval_accuracy"}], "the first objective is the quality"),
        ([{"metric": "eval_accuracy"}, {"metric": "speed"}], "objectives[1]"),
        ([{"metric": "eval_accuracy"}, {"metric": "eval_accuracy", "mode": "min"}], "each metric once"),
    ]:
        with pytest.raises(PTPlusError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_space({**base, "objectives": objectives})
    with pytest.raises(PTPlusError, match="mode: 'min' is not the first objective's 'max'"):
        parse_space({**base, "mode": "min"})


def test_a_trial_asha_stopped_is_pruned_in_optuna_and_a_finished_one_complete(tmp_path):
    spec = parse_space({"name": "s", "trial": {"max_steps": 30},
                        "parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
                        "objectives": [{"metric": "eval_accuracy"}, {"metric": "trainable_params"}]})
    searcher = build_searcher(spec, "mo", tmp_path)
    searcher.suggest("stopped")
    searcher.suggest("finished")
    searcher.on_trial_complete("stopped", {"step": 10, "eval_accuracy": 0.9, "trainable_params": 5})
    searcher.on_trial_complete("finished", {"step": 30, "eval_accuracy": 0.5, "trainable_params": 7})
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [(t.state, t.values) for t in study.trials]
    assert states == [(optuna.trial.TrialState.PRUNED, None), (optuna.trial.TrialState.COMPLETE, [0.5, 7.0])]
    assert [t.number for t in study.best_trials] == [1]


def test_an_nsga2_searcher_pickles_as_tune_saves_it_and_proposes_after_a_restore(tmp_path):
    import ray.cloudpickle

    spec = parse_space({"name": "s", "trial": {"max_steps": 30}, "sampler": "nsga2",
                        "parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
                        "objectives": [{"metric": "eval_accuracy"}, {"metric": "trainable_params"}]})
    searcher = build_searcher(spec, "ga", tmp_path)
    searcher.suggest("first")
    # Tune pickles the searcher inside tuner.pkl and its experiment state; Optuna's GA samplers hold a thread lock
    restored = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))
    assert isinstance(restored.searcher._sampler, optuna.samplers.NSGAIISampler)
    assert 1e-4 <= restored.suggest("second")["learning_rate"] <= 1e-2
    study = optuna.load_study(study_name="ga", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2  # the restored searcher proposes into the same Optuna study


def test_select_picks_the_smallest_adapter_within_a_tolerance_of_the_best():
    objectives = [("eval_accuracy", "max"), ("trainable_params", "min")]
    front = [{"eval_accuracy": 0.95, "trainable_params": 800}, {"eval_accuracy": 0.945, "trainable_params": 400},
             {"eval_accuracy": 0.90, "trainable_params": 100}, {"eval_accuracy": 0.94, "trainable_params": 400}]
    assert select(front, {"min": "trainable_params", "within": {"eval_accuracy": 0.01}}, objectives) == 1  # tie: acc
    assert select(front, {"min": "trainable_params", "within": {"eval_accuracy": 0.05}}, objectives) == 2
    assert select(front, {"min": "trainable_params"}, objectives) == 2
    assert select(front, {"max": "eval_accuracy"}, objectives) == 0
    base = {"name": "s", "parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
            "objectives": [{"metric": "eval_accuracy"}, {"metric": "trainable_params"}]}
    rule = {"min": "trainable_params", "within": {"eval_accuracy": 0.01}}
    assert parse_space({**base, "select": rule}).select == rule
    assert parse_space(parse_space({**base, "select": rule}).to_data()).select == rule
    for bad, message in [({"min": "peak_mem_mb"}, "among the objectives"), ({"min": "trainable_params", "max":
                          "eval_accuracy"}, "one of min or max"), ({"min": "trainable_params", "within":
                          {"eval_accuracy": -1}}, "must be >= 0")]:
        with pytest.raises(PTPlusError, match=message):
            parse_space({**base, "select": bad})
    with pytest.raises(PTPlusError, match="it needs `objectives`"):
        parse_space({"name": "s", "parameters": base["parameters"], "select": rule})
