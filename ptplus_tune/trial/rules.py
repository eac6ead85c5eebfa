"""The dead-trial rule: a trial that cannot win stops at once, even when no other trial has reached its rung yet
(asynchronous ASHA has nothing to compare the first trials with, and a small machine runs one trial at a time).

A trial with the rule on (`dead_trial_step` set; a study sets it to its first rung) stops early when
- its training loss is NaN or infinite (checked every step), or
- its mean training loss over a logging window exceeds EXPLOSION_FACTOR x its first window's (diverged), or
- at its first evaluation at or after `dead_trial_step`, its accuracy is no better than always answering the
  validation split's most frequent class (chance level).
It then evaluates once more if it has to (so it reports its metric like any trial) and ends; the reason is the
`stop_reason` of its last report (and the `ptplus.stop_reason` tag of its MLflow run).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

CHANCE_LEVEL = "chance_level"
NON_FINITE_LOSS = "non_finite_loss"
EXPLODED_LOSS = "exploded_loss"
EXPLOSION_FACTOR = 4.0


def majority_share(examples: Sequence) -> float:
    """Accuracy of always answering the most frequent label."""
    counts = Counter(ex.label for ex in examples)
    return max(counts.values()) / len(examples)


def loss_verdict(loss: float, first_window_loss: float | None) -> str | None:
    if not math.isfinite(loss):
        return NON_FINITE_LOSS
    if first_window_loss is not None and loss > EXPLOSION_FACTOR * first_window_loss:
        return EXPLODED_LOSS
    return None


def accuracy_verdict(accuracy: float, chance: float) -> str | None:
    return CHANCE_LEVEL if accuracy <= chance + 1e-6 else None  # accuracy arrives as float32
