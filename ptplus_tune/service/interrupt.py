"""Ctrl-C (SIGINT) and SIGTERM during a study.

The first signal asks Tune to end the run the way its own Ctrl-C handling does (trials stop, the experiment state is
saved once more, `fit` returns): we reach that handler through SIGUSR1, which Tune always listens to, and keep
SIGINT for ourselves (TUNE_DISABLE_SIGINT_HANDLER) so that we know the study was interrupted and by what. A second
signal exits at once, taking the local Ray instance it started along; a cluster ends this driver's trials itself.
"""

from __future__ import annotations

import logging
import os
import signal

# A study's own events (service.progress): the CLI shows them above its live view, or as plain lines.
log = logging.getLogger("ptplus_tune.progress.stop")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Tune's own words on interruption name its Python API (`Tuner.restore(...)`); the CLI says `--resume NAME` instead.
TUNE_HINTS = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")


LOW_DISK = "low_disk"  # a study the disk guard (service.disk) stopped: like Ctrl-C, resumable once there is room
TIME_BUDGET = "time_budget"  # a study that used its time budget (service.budget): it ends as done, not interrupted
_active: Interruption | None = None


def exit_code(reason: str) -> int:
    if reason == TIME_BUDGET:
        return 0
    if reason == LOW_DISK:
        return 1
    return 128 + signal.Signals[reason]  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def stop_study(reason: str) -> bool:
    """End the running study the way Ctrl-C does, for `reason`; False when no study is running in this process."""
    if _active is None:
        return False
    _active.stop(reason)
    return True


class _DropTuneHints(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_HINTS)


class Interruption:
    """`with Interruption(hint) as interruption: tuner.fit()`; afterwards `interruption.reason` says what ended the
    study early (SIGINT, SIGTERM, low_disk), or is None. `hint` is printed when a second signal makes the process
    exit at once."""

    def __init__(self, hint: str = ""):
        self.hint = hint
        self.reason: str | None = None
        self._previous: dict[int, object] = {}
        self._filter = _DropTuneHints()

    def __enter__(self) -> Interruption:
        global _active
        _active = self
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        logging.getLogger("ray.tune.tune").addFilter(self._filter)
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        logging.getLogger("ray.tune.tune").removeFilter(self._filter)
        if self.reason is not None and self.reason != TIME_BUDGET:
            return  # what follows (saving what was done, shutting Ray down) still quits at once on a second signal
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: end the run loop, save, return from fit

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            log.warning("%s again: quitting now. %s", name, self.hint)
            _kill_children()
            os._exit(exit_code(name))
        log.warning("%s: stopping the study and saving its state (send it again to quit at once)", name)
        self.stop(name)


def _kill_children() -> None:
    """What this process started: a local Ray instance (its raylet, GCS, agents and trial workers). Trials on a
    cluster are not among them; the cluster ends a driver's actors when the driver goes."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)
