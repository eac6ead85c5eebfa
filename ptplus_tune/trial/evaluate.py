"""Evaluation by label scoring: each candidate label's log-likelihood after the prompt; exact, no sampling."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ptplus_tune.data import Example, PromptEncoder, collate
from ptplus_tune.data.prompts import Encoded


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def score_labels(model, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str],
                 batch_size: int, device) -> torch.Tensor:
    """Log-likelihood of every candidate label's target tokens: [len(examples), len(labels)]."""
    targets = [encoder.target_ids(label) for label in labels]
    room = max(len(t) for t in targets)
    pad = encoder.tokenizer.pad_token_id
    single_token = room == 1 and len({t[0] for t in targets}) == len(targets)
    rows = []
    if single_token:  # one forward per example: the next-token distribution after the prompt scores every label
        candidates = torch.tensor([t[0] for t in targets], device=device)
        for chunk in _batches(examples, batch_size):
            batch = collate([Encoded(encoder.prompt_ids(ex.text, room_for=1), 0) for ex in chunk], pad)
            last = batch["attention_mask"].sum(1) - 1
            # Only the prompts' last positions need logits: the LM head over the whole vocabulary at every position
            # would cost a fifth of the forward pass (and hundreds of MB) for nothing.
            keep, where = torch.unique(last, return_inverse=True)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           logits_to_keep=keep.to(device)).logits
            logp = F.log_softmax(logits[torch.arange(len(chunk), device=device), where.to(device)].float(), -1)
            rows.append(logp[:, candidates].cpu())
        return torch.cat(rows)
    pairs = [(ex, t) for ex in examples for t in targets]  # general case: one sequence per (example, label)
    scores = []
    for chunk in _batches(pairs, batch_size):
        encoded = []
        for ex, target in chunk:
            prompt = encoder.prompt_ids(ex.text, room_for=room)
            encoded.append(Encoded(prompt + target, len(prompt)))
        batch = collate(encoded, pad)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
        labels = batch["labels"].to(device)[:, 1:]
        logp = F.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        scores.append((logp * (labels != -100)).sum(1).cpu())
    return torch.cat(scores).view(len(examples), len(targets))


def evaluate(model, encoder: PromptEncoder, examples: Sequence[Example], labels: Sequence[str], batch_size: int,
             device) -> dict[str, float]:
    """loss: mean negative log-likelihood per gold target token (the training loss); accuracy: argmax label."""
    was_training = model.training
    model.eval()
    try:
        scores = score_labels(model, encoder, examples, labels, batch_size, device)
    finally:
        model.train(was_training)
    gold = torch.tensor([labels.index(ex.label) for ex in examples])
    gold_tokens = sum(len(encoder.target_ids(ex.label)) for ex in examples)
    loss = -scores[torch.arange(len(examples)), gold].sum().item() / gold_tokens
    accuracy = (scores.argmax(1) == gold).float().mean().item()
    return {"loss": loss, "accuracy": accuracy}


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
