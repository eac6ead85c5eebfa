"""One trial: train an adapter on labelled data, evaluate every `eval_every` steps, checkpoint, report.

No Ray and no MLflow here: results leave through `report(metrics, checkpoint_dir)`, so the same code runs
standalone (`ptplus-tune train`) and as a Ray Tune trainable.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from ptplus_tune.adapter import build_adapter, count_trainable_parameters
from ptplus_tune.data import PromptEncoder, Splits, collate, load_base_model, load_labelled, make_splits
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.checkpoint import read_checkpoint, restore, write_checkpoint
from ptplus_tune.trial.config import TrialConfig
from ptplus_tune.trial.evaluate import evaluate, generation_accuracy
from ptplus_tune.trial.predict import task_description

log = logging.getLogger(__name__)
Report = Callable[[dict, "str | None"], None]


@dataclass
class TrialResult:
    metrics: dict[str, float]  # the last report
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the trained adapter-wrapped model
    task: dict = field(default_factory=dict)  # base model, labels and prompt: see trial.predict


def pick_device(requested: str) -> tuple[torch.device, torch.dtype]:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PTPlusError("device=cuda was asked for, but torch sees no GPU")
        return torch.device(requested), (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.device("cpu"), torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(config: TrialConfig) -> Splits:
    parts = load_labelled(config.dataset, config.text_column, config.label_column)
    return make_splits(parts, config.validation_size, config.test_size, config.k_shot, config.data_seed,
                       where=config.dataset)


class DataOrder:
    """Which training examples micro-batch i holds: a fresh seeded permutation per epoch, a pure function of i,
    so a resumed trial continues on exactly the batches the uninterrupted one would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.size, generator=generator).tolist()}
        return self._perms[epoch]

    def batch(self, index: int) -> list[int]:
        positions = range(index * self.batch_size, (index + 1) * self.batch_size)
        return [self._perm(pos // self.size)[pos % self.size] for pos in positions]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; whole process


def run_trial(config: TrialConfig, report: Report | None = None, resume_from: str | None = None,
              progress: Callable[[int, int], None] | None = None, base=None) -> TrialResult:
    """Train and evaluate one configuration. `base`: an already loaded (model, tokenizer) to use instead of
    `config.model`. Every evaluation is passed to `report` with a checkpoint folder that exists only during the
    call (copy what you keep)."""
    threads = config.num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device, dtype = pick_device(config.device)
    splits = load_splits(config)  # data errors surface before the model loads
    model, tokenizer = base if base is not None else load_base_model(config.model, device=str(device), dtype=dtype)
    encoder = PromptEncoder(tokenizer, config.max_length, config.prompt_template, config.target_template)
    train_items = [encoder.encode(ex.text, ex.label) for ex in splits.train]

    hyperparameters = config.hyperparameters()
    task = task_description(config, splits.labels)
    seed_everything(config.seed)
    model = build_adapter(model, hyperparameters).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * config.max_steps),
                                                config.max_steps)
    step, microbatches = 0, 0
    if resume_from:
        state = read_checkpoint(resume_from, hyperparameters)
        restore(state, model=model, optimizer=optimizer, scheduler=scheduler)
        step, microbatches = state["step"], state["microbatches"]
        if step >= config.max_steps:
            raise PTPlusError(f"checkpoint {resume_from} is at step {step}, max_steps is {config.max_steps}: "
                              f"nothing left to train")
        log.info("resumed from %s at step %d", resume_from, step)

    order = DataOrder(len(train_items), config.batch_size, config.seed)
    trainable = count_trainable_parameters(model)
    history: list[dict[str, float]] = []
    loss_sum, loss_count, tokens, clock = 0.0, 0, 0, time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="ptplus-trial-"))
    try:
        while step < config.max_steps:
            for _ in range(config.grad_accum):
                batch = collate([train_items[i] for i in order.batch(microbatches)], tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch).loss
                (loss / config.grad_accum).backward()
                loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
                tokens += int(batch["attention_mask"].sum())
                microbatches += 1
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if progress:
                progress(step, config.max_steps)
            if step % config.eval_every and step != config.max_steps:
                continue
            elapsed = time.perf_counter() - clock
            evaluation = evaluate(model, encoder, splits.validation, splits.labels, config.eval_batch_size, device)
            metrics = {
                "step": step, "train_loss": loss_sum / loss_count, "eval_loss": evaluation["loss"],
                "eval_accuracy": evaluation["accuracy"], "tokens_per_s": tokens / elapsed,
                "peak_mem_mb": peak_memory_mb(device), "trainable_params": trainable,
            }
            if step == config.max_steps:
                metrics.update(_final_metrics(config, model, encoder, splits, device))
            history.append(metrics)
            checkpoint = write_checkpoint(scratch, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                          microbatches=microbatches, hyperparameters=hyperparameters, task=task)
            if report:
                report(dict(metrics), str(checkpoint))
            shutil.rmtree(checkpoint, ignore_errors=True)
            loss_sum, loss_count, tokens, clock = 0.0, 0, 0, time.perf_counter()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TrialResult(history[-1] if history else {}, history, model, task)


def _final_metrics(config, model, encoder, splits, device) -> dict[str, float]:
    out: dict[str, float] = {}
    if config.eval_test:
        test = evaluate(model, encoder, splits.test, splits.labels, config.eval_batch_size, device)
        out.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
    if config.eval_generate:
        out["eval_generation_accuracy"] = generation_accuracy(model, encoder, splits.validation,
                                                              config.eval_batch_size, device)
    return out


def save_adapter(model, directory: str | os.PathLike) -> Path:
    """Write the trained adapter (adapter_config.json + adapter_model.safetensors) atomically as a folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
