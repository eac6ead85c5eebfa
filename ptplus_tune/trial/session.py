"""The protocol a Ray Tune trainable talks to: one trial's training, advanced evaluation by evaluation.

Two classes satisfy it: `ptplus_tune.trial.TrialSession` (the trial trains in this process) and the pack host's
`RemoteSession` (it trains in a PackHost beside other trials, `ptplus_tune.service.pack_host`). New task types and
objectives extend the session, not the trainable.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Session(Protocol):
    step: int  # optimiser steps taken
    train_loss: float  # the mean training loss of the last logging window (nan before the first)
    model_loads: int  # base-model loads of the process that trains it (a warm worker's next trial adds none)
    pack_trials: int  # trials training with it on the same base model (1: alone)

    @property
    def done(self) -> bool:
        """Nothing left to train: its budget is spent, or a dead-trial rule stopped it."""

    def advance(self) -> dict[str, Any]:
        """Train to the next evaluation point, evaluate, return the report (see TrialSession.metrics)."""

    def report_again(self) -> dict[str, Any]:
        """The last evaluation point's report once more (a trial restored from its final checkpoint)."""

    def save(self, folder: str | os.PathLike) -> Any:
        """Write a checkpoint's files into `folder`."""

    def restore(self, checkpoint_dir: str | os.PathLike, final_ok: bool = False) -> None:
        """Continue from a checkpoint; `final_ok`: also from a final one (then `done`)."""

    def close(self) -> None:
        """Give back what the trial held (its adapter on a shared base model, its place in a pack)."""
