"""A study's time budget (`--time-budget`, `time_budget:` in a space).

No new trial starts once the time left is shorter than the median wall time of the trials that ran their whole
budget so far (such a trial would most likely not finish); at the deadline the running trials stop and save as on
Ctrl-C (service.interrupt, reason `time_budget`), and the study ends as "time budget reached": its best evaluated trial
goes through the champion rule as usual, and `--resume NAME --time-budget MORE` continues it.

The budget of the running study lives here, in the driver, rather than in Tune's pickled callbacks and searcher: a
resumed study restores those as they were saved, and must be given a new deadline.
"""

from __future__ import annotations

import logging
import statistics
import time

from ray.tune import Callback

from ptplus_tune.service.interrupt import TIME_BUDGET, stop_study

log = logging.getLogger("ptplus_tune.progress.stop")


class TimeBudget:
    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.deadline = clock() + seconds
        self.trial_seconds: list[float] = []  # wall time of each trial that ran its whole budget

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows_new_trial(self) -> bool:
        if self.trial_seconds:
            return self.left() >= statistics.median(self.trial_seconds)
        return self.left() > 0


_current: TimeBudget | None = None


def start(seconds: float | None) -> TimeBudget | None:
    """The running study's budget from now (None: unbounded)."""
    global _current
    _current = TimeBudget(seconds) if seconds else None
    return _current


def current() -> TimeBudget | None:
    return _current


def allows_new_trial() -> bool:
    return _current is None or _current.allows_new_trial()


class BudgetWatch(Callback):
    """On the driver: times each trial, and ends the study at the deadline, or as soon as nothing runs once no new
    trial may start. Every study has one (a no-op without a budget), so a resumed study can be given a budget."""

    def __init__(self, max_steps: int, num_samples: int):
        self.max_steps, self.num_samples = max_steps, num_samples
        self._started: dict[str, float] = {}

    def __getstate__(self):
        return {**self.__dict__, "_started": {}}  # monotonic times mean nothing to another process

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        started = self._started.pop(trial.trial_id, None)
        budget = current()
        if budget is not None and started is not None and (trial.last_result or {}).get("step", 0) >= self.max_steps:
            budget.trial_seconds.append(time.monotonic() - started)

    def on_step_end(self, iteration, trials, **info):
        budget = current()
        if budget is None:
            return
        if budget.left() <= 0:
            if stop_study(TIME_BUDGET):
                log.warning("time budget of %s reached: stopping the running trials and saving their state",
                            _clock(budget.seconds))
        elif (len(trials) < self.num_samples and not budget.allows_new_trial()
              and not any(t.status in ("RUNNING", "PENDING") for t in trials)):
            stop_study(TIME_BUDGET)  # nothing runs and nothing may start: waiting for the deadline is idle time


def _clock(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{s:02d}s" if hours else f"{minutes}m{s:02d}s" if minutes else f"{s}s"
