"""The training loss: mean negative log-likelihood of the target tokens, per group of batch rows.

The causal-LM loss transformers computes from `labels`, but with the LM head run only at the positions that
predict a target token (`logits_to_keep`): for a classification target of a token or two after a long prompt, the
head over the whole vocabulary at every position would be a fifth of the forward pass and most of its activation
memory. Groups of rows (the trials of a packed batch) each get their own mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ptplus_tune.data.prompts import IGNORE


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """The target tokens of a batch (what its mean loss divides by)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def target_losses(model, batch: dict[str, torch.Tensor], rows: Sequence[int] | None = None,
                  mean: bool = True) -> list[torch.Tensor]:
    """One scalar loss per group of `rows` (consecutive batch rows; None: one group of every row): the mean over its
    target tokens, or with mean=False their sum."""
    targets = batch["labels"][:, 1:]  # position p predicts token p + 1
    positions = (targets != IGNORE).any(0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=positions).logits
    targets = targets[:, positions]
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    losses, start = [], 0
    for count in rows or [len(targets)]:
        group = slice(start, start + count)
        losses.append(nll[group].sum() / (targets[group] != IGNORE).sum() if mean else nll[group].sum())
        start += count
    return losses
