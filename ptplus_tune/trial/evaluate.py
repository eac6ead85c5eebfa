"""Evaluation by label scoring: each candidate label's log-likelihood after the prompt; exact, no sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ptplus_tune.data import Example, PromptEncoder, collate
from ptplus_tune.data.prompts import Encoded


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _logits_each(models: Sequence, input_ids, attention_mask, **kwargs) -> list[torch.Tensor]:
    """The logits of one batch under each model; several adapters of one pack share one forward over the batch
    repeated once per adapter (see ptplus_tune.adapter.packed)."""
    if len(models) == 1:
        return [models[0](input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits]
    pack, rows = models[0].pack, len(input_ids)
    with pack.routed([(model, rows) for model in models]):
        logits = pack.base_model(input_ids=input_ids.repeat(len(models), 1),
                                 attention_mask=attention_mask.repeat(len(models), 1), **kwargs).logits
    return list(logits.split(rows))


@torch.no_grad()
def score_labels_each(models: Sequence, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str],
                      batch_size: int, device) -> list[torch.Tensor]:
    """Per model, the log-likelihood of every candidate label's target tokens: [len(examples), len(labels)]."""
    targets = [encoder.target_ids(label) for label in labels]
    room = max(len(t) for t in targets)
    pad = encoder.tokenizer.pad_token_id
    single_token = room == 1 and len({t[0] for t in targets}) == len(targets)
    rows: list[list[torch.Tensor]] = [[] for _ in models]
    if single_token:  # one forward per example: the next-token distribution after the prompt scores every label
        candidates = torch.tensor([t[0] for t in targets], device=device)
        for chunk in _batches(examples, batch_size):
            batch = collate([Encoded(encoder.prompt_ids(ex.text, room_for=1), 0) for ex in chunk], pad)
            last = batch["attention_mask"].sum(1) - 1
            # Only the prompts' last positions need logits: the LM head over the whole vocabulary at every position
            # would cost a fifth of the forward pass (and hundreds of MB) for nothing.
            keep, where = torch.unique(last, return_inverse=True)
            each = _logits_each(models, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                logits_to_keep=keep.to(device))
            for out, logits in zip(rows, each):
                logp = F.log_softmax(logits[torch.arange(len(chunk), device=device), where.to(device)].float(), -1)
                out.append(logp[:, candidates].cpu())
        return [torch.cat(r) for r in rows]
    pairs = [(ex, t) for ex in examples for t in targets]  # general case: one sequence per (example, label)
    for chunk in _batches(pairs, batch_size):
        encoded = []
        for ex, target in chunk:
            prompt = encoder.prompt_ids(ex.text, room_for=room)
            encoded.append(Encoded(prompt + target, len(prompt)))
        batch = collate(encoded, pad)
        gold = batch["labels"].to(device)[:, 1:]
        each = _logits_each(models, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for out, logits in zip(rows, each):
            logp = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, gold.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            out.append((logp * (gold != -100)).sum(1).cpu())
    return [torch.cat(r).view(len(examples), len(targets)) for r in rows]


def score_labels(model, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str],
                 batch_size: int, device) -> torch.Tensor:
    """Log-likelihood of every candidate label's target tokens: [len(examples), len(labels)]."""
    return score_labels_each([model], encoder, examples, labels, batch_size, device)[0]


def evaluate_each(models: Sequence, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str],
                  batch_size: int, device) -> list[dict[str, float]]:
    """Per model, loss (mean negative log-likelihood per gold target token, the training loss) and accuracy
    (argmax label). Several adapters of one pack are scored in shared forward passes."""
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        scores = score_labels_each(models, encoder, examples, labels, batch_size, device)
    finally:
        for model, mode in zip(models, was_training):
            model.train(mode)
    gold = torch.tensor([labels.index(ex.label) for ex in examples])
    gold_tokens = sum(len(encoder.target_ids(ex.label)) for ex in examples)
    return [{"loss": -s[torch.arange(len(examples)), gold].sum().item() / gold_tokens,
             "accuracy": (s.argmax(1) == gold).float().mean().item()} for s in scores]


def evaluate(model, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str], batch_size: int,
             device) -> dict[str, float]:
    """loss: mean negative log-likelihood per gold target token (the training loss); accuracy: argmax label."""
    return evaluate_each([model], encoder, examples, labels, batch_size, device)[0]


@torch.no_grad()
def generation_accuracy(model, encoder: PromptEncoder, examples: Sequence[Example], batch_size: int,
                        device) -> float:
    """Greedy generation, compared with the gold label after stripping whitespace (for free-form targets)."""
    tokenizer = encoder.tokenizer
    max_new = max(len(encoder.target_ids(ex.label)) for ex in examples)
    correct = 0
    was_training = model.training
    model.eval()
    try:
        for chunk in _batches(examples, batch_size):
            prompts = [encoder.prompt_ids(ex.text, room_for=max_new) for ex in chunk]
            width = max(map(len, prompts))  # left padding, so every prompt ends where generation starts
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            for ex, row in zip(chunk, out[:, width:]):
                correct += tokenizer.decode(row, skip_special_tokens=True).strip() == ex.label
    finally:
        model.train(was_training)
    return correct / len(examples)
