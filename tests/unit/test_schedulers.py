"""The study's schedulers: ASHA per group (`scheduler.group_by`) decides each rung within the trial's own group."""

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.schedulers import GroupedASHA, build_scheduler
from ptplus_tune.spaces import load_space

ASHA = dict(time_attr="step", max_t=4, grace_period=1, reduction_factor=2)


def _decide(scheduler, reports):
    """Feed (method, score at step 1) reports in order; the scheduler's decision for each."""
    scheduler.set_search_properties("eval_accuracy", "max")
    out = []
    for method, score in reports:
        trial = Trial("t", config={"method": method}, stub=True)
        scheduler.on_trial_add(None, trial)
        out.append(scheduler.on_trial_result(None, trial, {"step": 1, "eval_accuracy": score}))
    return out


# Each decision compares a report with the median (rf 2) of those recorded at the rung before it.
REPORTS = [("lora", 0.8), ("lora", 0.9), ("prefix_tuning", 0.1), ("prefix_tuning", 0.3), ("lora", 0.7)]
C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_one_asha_stops_the_slow_method_on_the_fast_ones_scores():
    # 0.1 < median(0.8, 0.9); 0.3 < median(0.8, 0.9, 0.1); 0.7 >= median(0.8, 0.9, 0.1, 0.3) = 0.55
    assert _decide(ASHAScheduler(**ASHA), REPORTS) == [C, C, S, S, C]


def test_grouped_asha_compares_each_trial_only_with_its_own_method():
    # prefix_tuning's first trial is the first at its group's rung; 0.3 >= 0.1; lora's 0.7 < median(0.8, 0.9)
    assert _decide(GroupedASHA("method", **ASHA), REPORTS) == [C, C, C, C, S]


def test_grouped_asha_completes_and_removes_trials_in_their_group():
    scheduler = GroupedASHA("method", **ASHA)
    scheduler.set_search_properties("eval_accuracy", "max")
    trial = Trial("t", config={"method": "lora"}, stub=True)
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_complete(None, trial, {"step": 4, "eval_accuracy": 0.9})
    assert "method=lora" in scheduler.debug_string()
    other = Trial("t", config={"method": "ptplus"}, stub=True)
    scheduler.on_trial_add(None, other)
    scheduler.on_trial_remove(None, other)
    assert set(scheduler._groups) == {"lora", "ptplus"}


def test_group_by_in_a_space_builds_grouped_asha(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmetric: eval_accuracy\nmode: max\nscheduler: {grace_period: 10, group_by: method}\n"
                    "parameters:\n  method: {type: categorical, choices: [ptplus, lora]}\n"
                    "  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    spec = load_space(str(path))
    assert isinstance(build_scheduler(spec), GroupedASHA)
    assert load_space("quick").sha256 == load_space("quick").sha256  # unchanged spaces keep their hash key-free
    assert "group_by" not in load_space("quick").to_data()["scheduler"]


def test_group_by_must_name_a_categorical_parameter(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nscheduler: {group_by: learning_rate}\n"
                    "parameters:\n  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    with pytest.raises(PTPlusError, match=r"scheduler\.group_by: must name a categorical parameter"):
        load_space(str(path))
