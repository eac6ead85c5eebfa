"""One trial: train an adapter on labelled data, evaluate where decisions are made, checkpoint, report.

No Ray and no MLflow here: results leave through `report(metrics, checkpoint_dir)`, so the same code runs
standalone (`ptplus-tune train`) and as a Ray Tune trainable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import get_cosine_schedule_with_warmup
from transformers.trainer_pt_utils import get_length_grouped_indices

from ptplus_tune.adapter import build_adapter, count_trainable_parameters
from ptplus_tune.atomic import replacing_folder
from ptplus_tune.data import collate, load_base_model
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial import rules
from ptplus_tune.trial.checkpoint import read_checkpoint, restore, save_state, write_checkpoint
from ptplus_tune.trial.config import TrialConfig
from ptplus_tune.trial.device import peak_memory_mb, pick_device, seed_everything
from ptplus_tune.trial.host import load_splits, release
from ptplus_tune.trial.loss import target_losses
from ptplus_tune.trial.tasks import task_for

log = logging.getLogger(__name__)
Report = Callable[[dict, "str | None"], None]


@dataclass
class TrialResult:
    metrics: dict[str, float]  # the last report
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the trained adapter-wrapped model
    task: dict = field(default_factory=dict)  # base model, labels and prompt: see trial.predict


class DataOrder:
    """Which training examples micro-batch i holds: a fresh seeded permutation per epoch, a pure function of i,
    so a resumed trial continues on exactly the batches the uninterrupted one would have seen.

    With `lengths` (tokens per example), each epoch's order is grouped by length as transformers' Trainer does
    (`group_by_length`): the permutation is cut into mega-batches that are sorted by length, so a batch holds
    examples of similar length and pads little."""

    def __init__(self, size: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        self.size, self.batch_size, self.seed, self.lengths = size, batch_size, seed, lengths
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.lengths is None:
                self._perms = {epoch: torch.randperm(self.size, generator=generator).tolist()}
            else:
                self._perms = {epoch: get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)}
        return self._perms[epoch]

    def batch(self, index: int) -> list[int]:
        positions = range(index * self.batch_size, (index + 1) * self.batch_size)
        return [self._perm(pos // self.size)[pos % self.size] for pos in positions]


class TrialSession:
    """One configuration's training, advanced from evaluation to evaluation (`advance`), checkpointable at each.

    `host`: a ModelHost whose resident base model and data the trial uses (and hands back with `close`); `base`:
    an already loaded (model, tokenizer); neither: the trial loads its own. `wrap(model, hyperparameters)` puts the
    adapter on the base model (`build_adapter` by default; a TrialPack adds it to its pack instead).
    `progress(step, max_steps)` is called after every optimiser step, `on_log({"step", "train_loss"})` at every
    `log_every` step that is not an evaluation.

    It satisfies `ptplus_tune.trial.Session` (what a Tune trainable drives: `advance`, `report_again`, `save`,
    `restore`, `close`, `step`, `done`, `train_loss`). A TrialPack drives the same training one optimiser step at a
    time through the rest of its public surface: `config`, `model`, `pad_id`, `next_batch`, `optimizer_step`,
    `after_step`, `evaluation_data` and `metrics`.
    """

    def __init__(self, config: TrialConfig, *, host=None, base=None, progress: Callable[[int, int], None] | None = None,
                 on_log: Callable[[dict], None] | None = None, wrap=build_adapter):
        self.config, self.host, self.progress, self.on_log = config, host, progress, on_log
        torch.set_num_threads(config.num_threads or len(os.sched_getaffinity(0)))
        self.device, dtype = pick_device(config.device)
        self.splits = host.splits(config) if host else load_splits(config)  # data errors surface before the model
        if base is None:
            base = host.base(config.model, self.device, dtype) if host else \
                load_base_model(config.model, device=str(self.device), dtype=dtype)
        model, tokenizer = base
        self.pad_id = tokenizer.pad_token_id
        self.kind = task_for(config, tokenizer, self.splits, self.device)  # classification or generation
        self.encoder = self.kind.encoder
        self.train_items = self.kind.train_items()
        self.hyperparameters = config.hyperparameters()
        self.task = self.kind.description()
        seed_everything(config.seed)
        self.model = wrap(model, self.hyperparameters).to(self.device)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, round(config.warmup_ratio * config.max_steps),
                                                         config.max_steps)
        lengths = [len(item.input_ids) for item in self.train_items] if self.kind.group_by_length else None
        self.order = DataOrder(len(self.train_items), config.batch_size, config.seed, lengths)
        self.trainable = count_trainable_parameters(self.model)
        self.chance = getattr(self.kind, "chance", None)  # classification: the majority class's share
        self.step = self.microbatches = 0
        self.first_window_loss: float | None = None  # the explosion rule's reference
        self.dead_checked = False
        self.stop_reason: str | None = None
        self.train_loss = float("nan")
        self.pack_trials = 1  # trials on this base model at once (Session protocol; a RemoteSession: its pack's)
        self._window: list[float] = []
        self._tokens, self._train_seconds, self._timed_steps = 0, 0.0, 0

    @property
    def model_loads(self) -> int:
        """Base-model loads of this trial's process so far (a warm worker's next trial adds none)."""
        return self.host.model_loads if self.host is not None else 1

    @property
    def done(self) -> bool:
        return self.step >= self.config.max_steps or self.stop_reason is not None

    def restore(self, checkpoint_dir: str | os.PathLike, final_ok: bool = False) -> None:
        """Continue from a checkpoint; `final_ok`: also from a final one (then `done`, see report_again)."""
        state = read_checkpoint(checkpoint_dir, self.hyperparameters)
        restore(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.step, self.microbatches = state["step"], state["microbatches"]
        extra = state.get("extra") or {}
        self.first_window_loss = extra.get("first_window_loss")
        self.dead_checked = extra.get("dead_checked", False)
        self.train_loss = extra.get("train_loss", self.train_loss)  # the last report's (a report_again repeats it)
        if self.step >= self.config.max_steps and not final_ok:
            raise PTPlusError(f"checkpoint {checkpoint_dir} is at step {self.step}, max_steps is "
                              f"{self.config.max_steps}: nothing left to train")
        log.info("resumed from %s at step %d", checkpoint_dir, self.step)

    def _state(self) -> dict:
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, step=self.step,
                    microbatches=self.microbatches, hyperparameters=self.hyperparameters, task=self.task,
                    extra={"first_window_loss": self.first_window_loss, "dead_checked": self.dead_checked,
                           "train_loss": self.train_loss})

    def save(self, folder: str | os.PathLike) -> Path:
        """The checkpoint's files, written into `folder`."""
        return save_state(folder, **self._state())

    def write_checkpoint(self, parent: str | os.PathLike) -> Path:
        """A new complete checkpoint folder under `parent`."""
        return write_checkpoint(parent, **self._state())

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch of this trial's data order, on the device."""
        batch = collate([self.train_items[i] for i in self.order.batch(self.microbatches)], self.pad_id)
        self._tokens += int(batch["attention_mask"].sum())
        self.microbatches += 1
        return {k: v.to(self.device) for k, v in batch.items()}

    def optimizer_step(self, losses: list[float], seconds: float) -> float:
        """Apply the accumulated gradients; returns the step's mean micro-batch loss."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._train_seconds += seconds
        self._timed_steps += 1
        return sum(losses) / len(losses)

    def train_step(self) -> float:
        """One optimiser step over this trial's next grad_accum micro-batches; returns its mean loss."""
        started, losses = time.perf_counter(), []
        for _ in range(self.config.grad_accum):
            loss, = target_losses(self.model, self.next_batch())
            (loss / self.config.grad_accum).backward()
            losses.append(loss.item())
        return self.optimizer_step(losses, time.perf_counter() - started)

    def advance(self) -> dict[str, Any]:
        """Train up to the next evaluation (or until the dead-trial rule fires), evaluate, return the metrics."""
        if self.done:
            raise RuntimeError("the trial is done; nothing left to advance")
        while not self.after_step(self.train_step()):
            pass
        return self.metrics(self.evaluate())

    def report_again(self) -> dict[str, Any]:
        """The last evaluation point's report once more: for a trial restored from its final checkpoint, whose final
        report a killed driver may have lost (nothing is left to train, so it is evaluated again)."""
        return self.metrics(self.evaluate())

    def after_step(self, loss: float) -> bool:
        """Bookkeeping after an optimiser step (progress, loss logging, the loss rules); True: evaluate now."""
        config = self.config
        rule_on = config.dead_trial_step is not None
        self._window.append(loss)
        if self.progress:
            self.progress(self.step, config.max_steps)
        evaluate_now = config.is_eval_step(self.step)
        if rule_on and not math.isfinite(loss):
            self.stop_reason = rules.NON_FINITE_LOSS
        elif self.step % config.log_every == 0 or evaluate_now:
            self.train_loss = sum(self._window) / len(self._window)
            self._window = []
            if rule_on:
                self.stop_reason = rules.loss_verdict(self.train_loss, self.first_window_loss)
            if self.first_window_loss is None:
                self.first_window_loss = self.train_loss
            if not (evaluate_now or self.stop_reason) and self.on_log:
                self.on_log({"step": self.step, "train_loss": self.train_loss})
        if self.stop_reason is not None and self._window:
            self.train_loss, self._window = sum(self._window) / len(self._window), []
        return evaluate_now or self.stop_reason is not None

    def evaluate(self) -> dict[str, Any]:
        """The validation figures under their metric names: `eval_loss` and the task's (`eval_accuracy`, or
        `eval_exact_match` with a few `predictions` beside their references); see trial.tasks."""
        return self.kind.evaluate(self.model, final=self.step >= self.config.max_steps)

    def evaluation_data(self) -> tuple:
        """(encoder, validation examples, labels, batch size, device): what a classification evaluation of this
        trial's model runs on, the same for every trial with equal `config.evaluation_inputs()`."""
        return self.kind.evaluation_data()

    def metrics(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """The report of an evaluation point: the validation figures (`evaluate`), the rules' verdict, and at the
        final step the test and generation figures the config asks for."""
        config = self.config
        metrics: dict[str, Any] = {
            "step": self.step, "train_loss": self.train_loss, **evaluation,
            "tokens_per_s": self._tokens / max(self._train_seconds, 1e-9),
            "train_step_ms": 1000 * self._train_seconds / max(self._timed_steps, 1),
            "peak_mem_mb": peak_memory_mb(self.device), "trainable_params": self.trainable,
        }
        if (config.dead_trial_step is not None and not self.dead_checked and self.step >= config.dead_trial_step
                and self.stop_reason is None):
            self.dead_checked = True
            self.stop_reason = self.kind.verdict(metrics)
        if self.step == config.max_steps:
            metrics.update(self.kind.final_metrics(self.model))
        elif self.stop_reason is not None:
            metrics["stop_reason"] = self.stop_reason
            log.info("trial stopped at step %d: %s", self.step, self.stop_reason)
        self._tokens, self._train_seconds, self._timed_steps = 0, 0.0, 0
        return metrics

    def close(self) -> None:
        """Hand the base model back to the host without this trial's adapter (a no-op without a host)."""
        if self.host is not None and self.model is not None:
            release(self.model)
            self.model = None


def run_trial(config: TrialConfig, report: Report | None = None, resume_from: str | None = None,
              progress: Callable[[int, int], None] | None = None, base=None) -> TrialResult:
    """Train and evaluate one configuration. `base`: an already loaded (model, tokenizer) to use instead of
    `config.model`. Every evaluation is passed to `report` with a checkpoint folder that exists only during the
    call (copy what you keep); it lives in a scratch folder that is removed on every exit path."""
    session = TrialSession(config, base=base, progress=progress)
    if resume_from:
        session.restore(resume_from)
    history: list[dict[str, Any]] = []
    # Scratch only when there are checkpoints to hand over: a killed process cannot remove it.
    with (tempfile.TemporaryDirectory(prefix="ptplus-trial-", ignore_cleanup_errors=True) if report
          else contextlib.nullcontext()) as scratch:
        while not session.done:
            metrics = session.advance()
            history.append(metrics)
            if report:
                checkpoint = session.write_checkpoint(Path(scratch))
                report(dict(metrics), str(checkpoint))
                shutil.rmtree(checkpoint, ignore_errors=True)
    return TrialResult(history[-1] if history else {}, history, session.model, session.task)


def save_adapter(model, directory: str | os.PathLike) -> Path:
    """Write the trained adapter (adapter_config.json + adapter_model.safetensors) atomically as a folder."""
    with replacing_folder(directory) as tmp:
        model.save_pretrained(tmp)
    return Path(directory)
