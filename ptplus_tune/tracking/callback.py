"""A Ray Tune callback on the driver: records each trial's status in MLflow as soon as Ray decides it (ASHA stops a
trial without the trial noticing, so the trial cannot record that itself)."""

from __future__ import annotations

import logging

from ray.tune import Callback

from ptplus_tune.errors import first_line
from ptplus_tune.tracking.target import Target, client
from ptplus_tune.trial.outcome import FAILED, status_of, stop_reason_of

log = logging.getLogger(__name__)


class TrackTrialStatus(Callback):
    def __init__(self, target: Target, max_steps: int):
        self.target, self.max_steps = target, max_steps
        self._client = None
        self._down = False

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a client is rebuilt after restore
        return {**self.__dict__, "_client": None, "_down": False}

    def _mark(self, trial, status: str, stop_reason: str | None = None) -> None:
        from ptplus_tune.tracking.study_run import mark_trial

        if self._down:
            return
        try:
            self._client = self._client or client(self.target.uri)
            mark_trial(self._client, self.target, trial.trial_id, status, trial.config, stop_reason)
        except Exception as exc:  # tracking trouble must not stop the study; finish_study marks it again
            log.warning("could not record trial %s as %s in MLflow (%s); not trying again before the study ends",
                        trial.trial_id, status, first_line(exc))
            self._down = True  # each try waits out MLflow's retries, which would stall Tune's loop

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self._mark(trial, status_of(last.get("step", 0), self.max_steps), stop_reason_of(last, self.max_steps))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._mark(trial, FAILED)
