"""TrialPack: several Prefix-Tuning+ trials training at once on one resident base model (packed training).

Each packed step is one forward/backward over the trials' concatenated micro-batches, each sample through its own
adapter (ptplus_tune.adapter.packed); each trial keeps its own optimizer, schedule, data order, seed, evaluation
points and checkpoints (it is an ordinary TrialSession whose adapter lives in the pack), so a packed trial's losses
and metrics are the ones it would have alone, up to floating-point summation order. Trials whose evaluation falls
on the same step are evaluated in shared forward passes too. Trials join and leave between steps.

Why it pays: the base model's weights, the largest memory item, are held once; on a GPU the concatenated batch
also uses the device far better than K small ones time-sliced between processes. The base model runs in train()
mode during packed steps as it would alone; its dropout (if any) then draws from one shared RNG stream, so exact
agreement with an unpacked run needs a base model without dropout (true of the supported LLMs' defaults).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable, Iterable

from ptplus_tune.adapter.builder import check_hyperparameters, ptplus_config
from ptplus_tune.adapter.packed import PackedPTPlus
from ptplus_tune.data.prompts import pad_batches
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.config import TrialConfig
from ptplus_tune.trial.evaluate import evaluate_each
from ptplus_tune.trial.host import ModelHost
from ptplus_tune.trial.loss import target_losses
from ptplus_tune.trial.train import TrialResult, TrialSession, pick_device

# A CPU host's pass size (one default micro-batch). bench/packing.py, 2 cores, SmolLM2, K = 4: passes of 4 rows need
# 1.20x one trial's memory, one pass of all 16 rows 2.19x, at about the same throughput (bench/data/packing_v1_*).
CPU_ROWS_PER_PASS = 4


class TrialPack:
    """`rows_per_pass`: at most this many batch rows (whole micro-batches of trials) per forward/backward pass; None:
    every trial's micro-batch in one pass. One pass is what a GPU wants; on a CPU a large pass brings no speed and
    holds every trial's activations at once, so there a pack runs its trials in passes of a few micro-batches, which
    still shares the resident model and keeps memory near one trial's (see bench/packing.py)."""

    def __init__(self, host: ModelHost | None = None, rows_per_pass: int | None = None):
        self.host = host or ModelHost()
        self.rows_per_pass = rows_per_pass
        self.pack: PackedPTPlus | None = None
        self.sessions: dict[Hashable, TrialSession] = {}

    def attach(self, key: Hashable, config: TrialConfig, progress: Callable[[int, int], None] | None = None,
               on_log: Callable[[dict], None] | None = None) -> TrialSession:
        """A new trial in the pack (its adapter initialised as it would be alone, from its seed)."""
        if config.method != "ptplus":
            raise PTPlusError(f"only Prefix-Tuning+ trials can be packed, not method {config.method!r}")
        if key in self.sessions:
            raise PTPlusError(f"trial {key!r} is already in this pack")
        device, dtype = pick_device(config.device)
        model, tokenizer = self.host.base(config.model, device, dtype)
        if self.pack is None or self.pack.base_model is not model:
            if self.sessions:
                raise PTPlusError("the trials of a pack share one base model: model and device must be the same")
            self.pack = PackedPTPlus(model)
        session = TrialSession(config, host=self.host, base=(model, tokenizer), progress=progress, on_log=on_log,
                               wrap=lambda _, hp: self.pack.add(ptplus_config(check_hyperparameters(hp))))
        self.sessions[key] = session
        return session

    def detach(self, key: Hashable) -> None:
        """Take a trial out (ended, stopped or failed); its slot is free for the next one."""
        session = self.sessions.pop(key, None)
        if session is not None:
            session.close()

    def step(self, keys: Iterable[Hashable]) -> dict[Hashable, dict[str, Any]]:
        """One optimiser step for each of these trials, as packed forward/backward passes (one per micro-batch of
        gradient accumulation); returns the metrics of those that reached an evaluation point (evaluated together)."""
        keys = list(keys)
        sessions = [self.sessions[k] for k in keys]
        if any(s.done for s in sessions):
            raise RuntimeError("a trial in this step is done; nothing left to train")
        started, losses = time.perf_counter(), {k: [] for k in keys}
        self.pack.base_model.train()
        for micro in range(max(s.config.grad_accum for s in sessions)):
            due = [(k, s, s.next_batch()) for k, s in zip(keys, sessions) if s.config.grad_accum > micro]
            for group in self._passes(due):
                rows = [len(batch["input_ids"]) for _, _, batch in group]
                with self.pack.routed([(s.model, n) for (_, s, _), n in zip(group, rows)]):
                    group_losses = target_losses(self.pack.base_model,
                                                 pad_batches([b for _, _, b in group], sessions[0].pad_id), rows)
                    sum(loss / s.config.grad_accum for loss, (_, s, _) in zip(group_losses, group)).backward()
                for (k, _, _), loss in zip(group, group_losses):
                    losses[k].append(loss.item())
        seconds = time.perf_counter() - started
        due = [k for k, s in zip(keys, sessions) if s.after_step(s.optimizer_step(losses[k], seconds))]
        return self.evaluate(due)

    def _passes(self, items: list) -> list[list]:
        """Consecutive groups of (key, session, batch) of at most rows_per_pass rows (at least one batch each)."""
        if self.rows_per_pass is None:
            return [items]
        groups, rows = [[]], 0
        for item in items:
            size = len(item[2]["input_ids"])
            if groups[-1] and rows + size > self.rows_per_pass:
                groups.append([])
                rows = 0
            groups[-1].append(item)
            rows += size
        return groups

    def evaluate(self, keys: Iterable[Hashable]) -> dict[Hashable, dict[str, Any]]:
        """Validation metrics of these trials; those with the same validation data and prompts share forwards."""
        groups: dict[tuple, list[Hashable]] = {}
        for key in keys:
            c = self.sessions[key].config
            groups.setdefault((c.dataset, c.validation_size, c.data_seed, c.k_shot, c.max_length, c.prompt_template,
                               c.target_template, c.eval_batch_size), []).append(key)
        out = {}
        for members in groups.values():
            first = self.sessions[members[0]]
            evaluations = evaluate_each([self.sessions[k].model for k in members], first.encoder,
                                        first.splits.validation, first.splits.labels, first.config.eval_batch_size,
                                        first.device)
            for key, evaluation in zip(members, evaluations):
                out[key] = self.sessions[key].metrics(evaluation)
        return out


def run_packed(configs: list[TrialConfig], host: ModelHost | None = None,
               rows_per_pass: int | None = None) -> list[TrialResult]:
    """Train these configurations to their ends together in one pack (they leave it as they finish or stop)."""
    trial_pack = TrialPack(host, rows_per_pass)
    for index, config in enumerate(configs):
        trial_pack.attach(index, config)
    histories: list[list[dict]] = [[] for _ in configs]
    active = list(range(len(configs)))
    while active:
        for key, metrics in trial_pack.step(active).items():
            histories[key].append(metrics)
        active = [k for k in active if not trial_pack.sessions[k].done]
    results = [TrialResult(h[-1] if h else {}, h, trial_pack.sessions[k].model, trial_pack.sessions[k].task)
               for k, h in enumerate(histories)]
    return results
