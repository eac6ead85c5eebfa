"""Time budgets: durations, the space key, the new-trial rule."""

import pytest

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.budget import TimeBudget
from ptplus_tune.spaces import load_space
from ptplus_tune.spaces.spec import parse_duration


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), (120, 120), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "x", "5q", "1h30", "", "m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_space_time_budget_is_read_and_is_not_part_of_its_identity(tmp_path):
    base = "name: s\nparameters:\n  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "b.yaml").write_text(base + "time_budget: 15m\n")
    (tmp_path / "c.yaml").write_text(base + "time_budget: soon\n")
    plain, bounded = load_space(str(tmp_path / "a.yaml")), load_space(str(tmp_path / "b.yaml"))
    assert plain.time_budget is None and bounded.time_budget == 900
    assert plain.sha256 == bounded.sha256 and bounded.to_data()["time_budget"] == 900
    with pytest.raises(PTPlusError, match=r"c\.yaml: time_budget: not a duration: 'soon'"):
        load_space(str(tmp_path / "c.yaml"))


def test_no_trial_starts_that_would_likely_not_finish():
    now = [0.0]
    budget = TimeBudget(100, clock=lambda: now[0])
    assert budget.allows_new_trial()  # nothing measured yet: any time left will do
    budget.trial_seconds += [30, 50, 40]  # median 40
    now[0] = 55
    assert budget.left() == 45 and budget.allows_new_trial()
    now[0] = 61
    assert not budget.allows_new_trial()
    now[0] = 100
    assert budget.left() == 0 and not budget.allows_new_trial()
