"""Evaluation of generative tasks: teacher-forced loss on the completions, and greedy decoding (KV cache, batched,
left-padded) scored by exact match or a task's own checker."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

from ptplus_tune.data.prompts import CompletionEncoder, collate
from ptplus_tune.errors import PTPlusError, first_line
from ptplus_tune.trial.loss import target_count, target_losses

MARGIN_TOKENS = 8  # decoded beyond the longest reference completion before giving up on an EOS


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def normalise(text: str) -> str:
    """Trimmed, with every run of whitespace one space: what exact match compares."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def load_scorer(spec: str | None) -> Callable[[str, str], float]:
    """`module:function`, called as function(prediction, reference) -> a score in [0, 1]; None: exact match."""
    if spec is None:
        return exact_match
    module, _, name = spec.partition(":")
    if not module or not name:
        raise PTPlusError(f"scorer must be module:function, got {spec!r}")
    try:
        scorer = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PTPlusError(f"scorer {spec!r} cannot be imported ({first_line(exc)}); it must be importable where "
                          f"trials run") from exc
    if not callable(scorer):
        raise PTPlusError(f"scorer {spec!r} is not a function")
    return scorer


def default_max_new_tokens(encoder: CompletionEncoder, pairs: Sequence) -> int:
    """The longest reference completion (EOS included) plus a margin."""
    return max(len(encoder.completion_ids(p.completion)) for p in pairs) + MARGIN_TOKENS


@torch.no_grad()
def completion_loss(model, encoder: CompletionEncoder, pairs: Sequence, batch_size: int, device) -> float:
    """Mean negative log-likelihood per completion token (EOS included), teacher-forced: the training loss."""
    total, tokens = 0.0, 0
    for chunk in _batches(pairs, batch_size):
        batch = {k: v.to(device) for k, v in collate([encoder.encode(p) for p in chunk],
                                                     encoder.tokenizer.pad_token_id).items()}
        summed, = target_losses(model, batch, mean=False)
        total, tokens = total + summed.item(), tokens + target_count(batch)
    return total / tokens


def decodes_with_cache(model) -> bool:
    """Whether `generate` with the KV cache decodes what the model computes. Not for PEFT's prompt-learning methods
    (Prefix-Tuning) under transformers 5: PEFT hands its prefix over as `past_key_values`, which `generate`'s own
    `cache` overrides, so the prefix is silently dropped (seen with peft 0.21 and transformers 5.24)."""
    config = getattr(model, "active_peft_config", None)
    return not getattr(config, "is_prompt_learning", False)


@torch.no_grad()
def greedy_completions(model, encoder: CompletionEncoder, pairs: Sequence, max_new_tokens: int, batch_size: int,
                       device, use_cache: bool = True) -> list[str]:
    """Each prompt's greedy continuation up to EOS or `max_new_tokens`, decoded without special tokens: batched,
    left-padded, with the KV cache (`use_cache=False`: every step recomputes the whole sequence). A model whose
    cached decoding is wrong (see `decodes_with_cache`) decodes each prompt alone with whole forward passes."""
    if not decodes_with_cache(model):
        return [_greedy_by_forwards(model, encoder, pair, max_new_tokens, device) for pair in pairs]
    pad = encoder.tokenizer.pad_token_id
    out = []
    for chunk in _batches(pairs, batch_size):
        prompts = [encoder.prompt_ids(p) for p in chunk]
        width = max(len(ids) for ids in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=pad, eos_token_id=encoder.eos, use_cache=use_cache)
        for row in generated[:, width:].tolist():
            if encoder.eos in row:
                row = row[:row.index(encoder.eos)]
            out.append(encoder.tokenizer.decode(row, skip_special_tokens=True))
    return out


def _greedy_by_forwards(model, encoder: CompletionEncoder, pair, max_new_tokens: int, device) -> str:
    """Greedy decoding of one prompt by a whole forward pass per token: no cache, no padding (what training sees)."""
    ids = torch.tensor([encoder.prompt_ids(pair)], device=device)
    generated = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        token = int(logits.argmax())
        if token == encoder.eos:
            break
        generated.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return encoder.tokenizer.decode(generated, skip_special_tokens=True)


def evaluate_generation(model, encoder: CompletionEncoder, pairs: Sequence, batch_size: int, device,
                        max_new_tokens: int, scorer: Callable[[str, str], float] = exact_match,
                        shown: int = 5) -> dict:
    """loss: mean NLL per completion token; exact_match: the mean score of the greedy completions (exact match
    after trimming and collapsing whitespace, or the task's scorer); predictions: the first `shown` of them beside
    their prompts and references."""
    was_training = model.training
    model.eval()
    try:
        loss = completion_loss(model, encoder, pairs, batch_size, device)
        predictions = greedy_completions(model, encoder, pairs, max_new_tokens, batch_size, device)
    finally:
        model.train(was_training)
    scores = []
    for prediction, pair in zip(predictions, pairs):
        score = float(scorer(prediction, pair.completion))
        if not 0.0 <= score <= 1.0:
            raise PTPlusError(f"the scorer returned {score} for {pair.where or 'a prediction'}; scores are in [0, 1]")
        scores.append(score)
    return {"loss": loss, "exact_match": sum(scores) / len(scores),
            "predictions": [{"prompt": p.prompt_text(), "reference": p.completion, "prediction": text, "score": s}
                            for p, text, s in list(zip(pairs, predictions, scores))[:shown]]}
