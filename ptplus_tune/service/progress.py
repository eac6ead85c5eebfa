"""Study progress as log records: a Ray Tune callback that counts trials and tracks the best result.

It logs (logger `ptplus_tune.progress`) instead of printing, so the CLI decides what the user sees, and it holds only
picklable state, because Tune saves callbacks with the experiment and restores them on `--resume`.
"""

from __future__ import annotations

import logging

from ray.tune import Callback

from ptplus_tune.service.study import status_of

log = logging.getLogger("ptplus_tune.progress")


class StudyProgress(Callback):
    def __init__(self, metric: str, mode: str, max_steps: int):
        self.metric, self.mode, self.max_steps = metric, mode, max_steps
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.stopped_early: set[str] = set()
        self.failed: set[str] = set()
        self.latest: dict[str, float] = {}  # each trial's last reported metric, as the final table ranks them

    @property
    def best(self) -> tuple[float, str] | None:
        if not self.latest:
            return None
        pick = max if self.mode == "max" else min
        trial_id = pick(self.latest, key=self.latest.__getitem__)
        return self.latest[trial_id], trial_id

    def status(self) -> str:
        best = self.best
        best = f"best {self.metric} {best[0]:.4f} ({best[1]})" if best else "no result yet"
        return (f"{len(self.running)} running, {len(self.finished)} finished, {len(self.stopped_early)} stopped "
                f"early, {len(self.failed)} failed; {best}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        log.info("trial %s started: %s | %s", trial.trial_id, _short(trial.config), self.status())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            self.latest[trial.trial_id] = value

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        step = (trial.last_result or {}).get("step", 0)
        completed = status_of(step, self.max_steps) == "completed"
        (self.finished if completed else self.stopped_early).add(trial.trial_id)
        how = "finished" if completed else f"stopped early at step {step}"
        log.info("trial %s %s: %s=%s | %s", trial.trial_id, how, self.metric,
                 _fmt((trial.last_result or {}).get(self.metric)), self.status())

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.warning("trial %s failed; retrying it from its last checkpoint (step %s)", trial.trial_id,
                    (trial.last_result or {}).get("step", 0))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        log.warning("trial %s failed | %s", trial.trial_id, self.status())


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(config: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.items()))
