"""Study progress: events (a trial started, finished, stopped, failed) and the live state of running trials.

Trials post their current step and training loss to a small Ray actor (ProgressBoard, named after the study) about
once a second; the StudyProgress callback on the driver reads it and keeps the study's state. Both leave through
logging (logger `ptplus_tune.progress`: INFO records are events, DEBUG records on `ptplus_tune.progress.live` are
periodic refreshes; every record carries the state as `record.state`), so the CLI decides what the user sees.
The callback holds only picklable state, because Tune saves callbacks with the experiment and restores them on
`--resume`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.tune import Callback

from ptplus_tune.errors import first_line
from ptplus_tune.trial.outcome import COMPLETED, status_of, stop_reason_of

log = logging.getLogger("ptplus_tune.progress")
live_log = logging.getLogger("ptplus_tune.progress.live")
REFRESH_S = 1.0


def failure_reason(trial) -> str:
    """Why a trial failed, in one line: the trial's own exception (which Tune pickles beside its error.txt), or the
    first line of Ray's error when the worker itself died."""
    try:  # written to the trial's local folder first, synced to the storage path later
        with open(trial.pickled_error_file, "rb") as f:
            error = ray.cloudpickle.load(f)
    except Exception:  # none, unreadable or not unpicklable here: Tune's error.txt still has the text
        error = None
    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the trial's exception as `cause`
    if cause is None:
        return "no details"
    return f"{type(cause).__name__}: {first_line(str(cause))}"[:200]


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where trials post their live step and loss; the driver reads a snapshot."""

    def __init__(self) -> None:
        self.live: dict[str, dict] = {}

    def update(self, trial_id: str, info: dict) -> None:
        self.live[trial_id] = info

    def snapshot(self) -> dict[str, dict]:
        return dict(self.live)


class BoardLink:
    """A sender's line to the study's ProgressBoard: at most one update per trial per REFRESH_S (unless forced).
    Progress is a nicety: without a board (the driver is gone, a benchmark's own study) training goes on."""

    def __init__(self, name: str | None):
        self.name, self._board, self._sent = name, None, {}

    def send(self, trial_id: str, step: int, train_loss: float | None, force: bool = False) -> None:
        if self.name is None or (not force and time.monotonic() - self._sent.get(trial_id, 0.0) < REFRESH_S):
            return
        self._sent[trial_id] = time.monotonic()
        try:
            self._board = self._board or ray.get_actor(self.name)
        except ValueError:
            return
        self._board.update.remote(trial_id, {"step": step, "train_loss": train_loss})


def board_name(study: str) -> str:
    return f"ptplus-progress-{study}"


def open_board(study: str):
    return ProgressBoard.options(name=board_name(study), get_if_exists=True).remote()


class StudyProgress(Callback):
    def __init__(self, metric: str, mode: str, max_steps: int, study: str = ""):
        self.metric, self.mode, self.max_steps, self.study = metric, mode, max_steps, study
        self.running: dict[str, dict[str, Any]] = {}  # trial id -> live row
        self.finished: set[str] = set()
        self.stopped_early: set[str] = set()
        self.failed: set[str] = set()
        self.latest: dict[str, float] = {}  # each trial's last reported metric, as the final table ranks them
        self._board = self._pending = None
        self._polled = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_board": None, "_pending": None, "_polled": 0.0}

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

    def state(self) -> dict[str, Any]:
        now = time.time()
        rows = []
        for trial_id, row in sorted(self.running.items()):
            step, first = row.get("step", 0), row.get("first_step")
            rate = (step - first) / (now - row["clock"]) if first is not None and step > first else None
            eta = (self.max_steps - step) / rate if rate else None
            rows.append({**row, "trial_id": trial_id, "elapsed": now - row["started"], "eta": eta})
        return {"metric": self.metric, "max_steps": self.max_steps, "running": len(self.running),
                "finished": len(self.finished), "stopped": len(self.stopped_early), "failed": len(self.failed),
                "best": self.best, "trials": rows}

    def _event(self, level: int, message: str, *args) -> None:
        log.log(level, message, *args, extra={"state": self.state()})

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = {"config": _short(trial.config), "started": time.time(), "step": 0,
                                        "first_step": None, "max_steps": self.max_steps}
        self._event(logging.INFO, "trial %s started: %s | %s", trial.trial_id, _short(trial.config), self.status())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            self.latest[trial.trial_id] = value
        row = self.running.get(trial.trial_id)
        if row is not None:
            row.update(step=result.get("step", row["step"]), eval=value, train_loss=result.get("train_loss"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        last = trial.last_result or {}
        step = last.get("step", 0)
        completed = status_of(step, self.max_steps) == COMPLETED
        (self.finished if completed else self.stopped_early).add(trial.trial_id)
        how = "finished" if completed else f"stopped early at step {step} ({stop_reason_of(last, self.max_steps)})"
        self._event(logging.INFO, "trial %s %s: %s=%s | %s", trial.trial_id, how, self.metric,
                    _fmt(last.get(self.metric)), self.status())

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._event(logging.WARNING, "trial %s failed (%s); retrying it from its last checkpoint (step %s)",
                    trial.trial_id, failure_reason(trial), (trial.last_result or {}).get("step", 0))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.failed.add(trial.trial_id)
        where = f"; full error in {trial.path}/error.txt" if trial.error_file and trial.path else ""
        self._event(logging.WARNING, "trial %s failed (%s%s) | %s", trial.trial_id, failure_reason(trial), where,
                    self.status())

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._polled < REFRESH_S:
            return
        self._polled = now
        self._poll_board()
        live_log.debug("refresh", extra={"state": self.state()})

    def _poll_board(self) -> None:
        if not self.study or not self.running:
            return
        try:  # never block Tune's loop: ask now, read the answer at a later poll once it is there
            self._board = self._board or ray.get_actor(board_name(self.study))
            if self._pending is None:
                self._pending = self._board.snapshot.remote()
            ready, _ = ray.wait([self._pending], timeout=0)
            if not ready:
                return
            live, self._pending = ray.get(self._pending), None
        except Exception:  # no board (a benchmark's own trainable): the events still flow
            return
        for trial_id, info in live.items():
            row = self.running.get(trial_id)
            if row is not None and info.get("step", 0) >= row["step"]:
                if row["first_step"] is None:  # the rate (for the ETA) counts from the first step seen
                    row["first_step"], row["clock"] = info["step"], time.time()
                row.update(step=info["step"], train_loss=info.get("train_loss"))


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(config: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.items()))
