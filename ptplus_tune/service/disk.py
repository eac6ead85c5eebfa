"""Room on the disk that holds a study. Checkpoints, Tune's experiment state and the Optuna sqlite file all go
there, and Tune cannot resume an experiment whose state it failed to write: so a study stops, the way Ctrl-C stops
it (state saved, resumable), while there is still some room left, rather than run the disk full.

The reserve is PTPLUS_MIN_FREE_MB megabytes (default 200).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from ray.tune import Callback

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.interrupt import LOW_DISK, stop_study

log = logging.getLogger("ptplus_tune.progress.stop")  # shown with the study's events (service.progress)
MIN_FREE_ENV = "PTPLUS_MIN_FREE_MB"
CHECK_EVERY_S = 2.0


def min_free_bytes() -> int:
    raw = os.environ.get(MIN_FREE_ENV, "200")
    try:
        value = float(raw)
    except ValueError:
        raise PTPlusError(f"{MIN_FREE_ENV} must be a number of megabytes, got {raw!r}") from None
    return int(value * 2**20)


def free_bytes(path: Path) -> int:
    """Free space where `path` is (or would be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def describe(free: int) -> str:
    return f"{free / 2**20:.1f} MB free, {MIN_FREE_ENV}={min_free_bytes() / 2**20:g}"


def check_room(path: Path) -> None:
    """Before a study starts: one line if its disk is already below the reserve."""
    free = free_bytes(path)
    if free < min_free_bytes():
        raise PTPlusError(f"the disk that holds {path} is nearly full ({describe(free)}); free some space or choose "
                          f"another --storage-path")


class DiskGuard(Callback):
    """Stops the study (service.interrupt, reason low_disk) once its disk falls below the reserve."""

    def __init__(self, path: str):
        self.path = path
        self._checked = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_checked": 0.0}

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        free = free_bytes(Path(self.path))
        if free < min_free_bytes() and stop_study(LOW_DISK):
            log.warning("the disk that holds %s is nearly full (%s): stopping the study and saving its state",
                        self.path, describe(free))
