"""TrialPack: several Prefix-Tuning+ trials training at once on one resident base model (packed training).

Each packed step is one forward/backward over the trials' concatenated micro-batches (on a CPU, several smaller
ones), each sample through its own adapter (ptplus_tune.adapter.packed); each trial keeps its own optimizer,
schedule, data order, seed, evaluation points and checkpoints (it is an ordinary TrialSession whose adapter lives in
the pack), so a packed trial's losses and metrics are the ones it would have alone, up to floating-point summation
order. Trials whose evaluation falls on the same step are evaluated in shared forward passes too. Trials join and
leave between steps.

Why it pays: the base model's weights, the largest memory item, are held once; on a GPU the concatenated batch
also uses the device far better than K small ones time-sliced between processes. The base model runs in train()
mode during packed steps as it would alone; its dropout (if any) then draws from one shared RNG stream, so exact
agreement with an unpacked run needs a base model without dropout (true of the supported LLMs' defaults).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ptplus_tune.adapter.hyperparameters import check_hyperparameters, ptplus_config
from ptplus_tune.adapter.packed import PackedPTPlus
from ptplus_tune.data.prompts import pad_batches
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.config import TrialConfig
from ptplus_tune.trial.device import pick_device
from ptplus_tune.trial.evaluate import evaluate_each
from ptplus_tune.trial.host import ModelHost
from ptplus_tune.trial.loss import target_count, target_losses
from ptplus_tune.trial.train import TrialResult, TrialSession

# A CPU host's passes: 2 rows each (half a default micro-batch), one pass per CPU at once, each pass on one torch
# thread. bench/packing.py, 2 cores, SmolLM2, K = 4 (bench/data/packing_v*): one pass of all 16 rows needs 2.19x one
# trial's memory; serial 4-row passes on 2 threads 1.20x at 0.95x the throughput of one process per trial; two 2-row
# passes at once 1.10x at 0.95-1.01x (single-thread operators waste less than 2-thread ones).
CPU_ROWS_PER_PASS = 2


def host_passes(gpu: bool, threads: int) -> tuple[int | None, int]:
    """(rows_per_pass, concurrent_passes) of a host: on a GPU one pass of every trial's rows per step; on a CPU
    passes of CPU_ROWS_PER_PASS rows, one per thread at once."""
    return (None, 1) if gpu else (CPU_ROWS_PER_PASS, threads)


@dataclass
class _Piece:
    """Rows of one trial's micro-batch in a pass; `tokens`: the target tokens of the whole micro-batch."""
    key: Hashable
    session: TrialSession
    batch: dict[str, torch.Tensor]
    tokens: int


class TrialPack:
    """`rows_per_pass`: at most this many batch rows per forward/backward pass (a micro-batch larger than that is split
    over several); None: every trial's micro-batch in one pass. `concurrent_passes`: passes run at once, each in its
    own thread with its share of the torch threads. One pass is what a GPU wants; on a CPU a large pass brings no
    speed and holds every trial's activations at once, so there a pack runs its trials in small passes, one per CPU
    at once, which still shares the resident model and keeps memory near one trial's (see bench/packing.py)."""

    def __init__(self, host: ModelHost | None = None, rows_per_pass: int | None = None, concurrent_passes: int = 1):
        self.host = host or ModelHost()
        self.rows_per_pass = rows_per_pass
        self.concurrent_passes = concurrent_passes
        self.pack: PackedPTPlus | None = None
        self.sessions: dict[Hashable, TrialSession] = {}
        self._workers: ThreadPoolExecutor | None = None

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
        if not self.sessions:  # an empty pack holds no idle pass threads
            self.stop_passes()

    def stop_passes(self) -> None:
        """End the pass threads (started again by the next step that needs them)."""
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None

    def step(self, keys: Iterable[Hashable]) -> dict[Hashable, dict[str, Any]]:
        """One optimiser step for each of these trials, as packed forward/backward passes (per micro-batch of
        gradient accumulation); returns the metrics of those that reached an evaluation point (evaluated together)."""
        keys = list(keys)
        sessions = [self.sessions[k] for k in keys]
        if any(s.done for s in sessions):
            raise RuntimeError("a trial in this step is done; nothing left to train")
        started, losses = time.perf_counter(), {k: [] for k in keys}
        self.pack.base_model.train()
        for micro in range(max(s.config.grad_accum for s in sessions)):
            due = [(k, s, s.next_batch()) for k, s in zip(keys, sessions) if s.config.grad_accum > micro]
            tokens = {k: target_count(batch) for k, _, batch in due}
            pieces = [piece for k, s, batch in due for piece in self._pieces(k, s, batch, tokens[k])]
            totals = dict.fromkeys(tokens, 0.0)
            groups = self._passes(pieces)
            for group, sums in zip(groups, self._run_passes(groups, sessions[0].pad_id)):
                for piece, value in zip(group, sums):
                    totals[piece.key] += value
            for k in tokens:
                losses[k].append(totals[k] / tokens[k])
        seconds = time.perf_counter() - started
        due = [k for k, s in zip(keys, sessions) if s.after_step(s.optimizer_step(losses[k], seconds))]
        return self.evaluate(due)

    def _pieces(self, key: Hashable, session: TrialSession, batch: dict, tokens: int) -> list[_Piece]:
        """A micro-batch (of `tokens` targets) as one piece, or split into pieces of rows_per_pass rows: each piece's
        loss is its targets' summed NLL over the whole micro-batch's target count, so the pieces' gradients add up
        to the micro-batch's."""
        size = len(batch["input_ids"])
        step = size if self.rows_per_pass is None else self.rows_per_pass
        return [_Piece(key, session, {k: v[i:i + step] for k, v in batch.items()}, tokens)
                for i in range(0, size, step)]

    def _pass(self, group: list[_Piece], pad_id: int) -> list[float]:
        """One forward/backward over a group's concatenated pieces; each piece's summed target NLL."""
        rows = [len(piece.batch["input_ids"]) for piece in group]
        with self.pack.routed([(piece.session.model, n) for piece, n in zip(group, rows)]):
            batch = pad_batches([piece.batch for piece in group], pad_id)
            sums = target_losses(self.pack.base_model, batch, rows, mean=False)
            scaled = (value / (piece.tokens * piece.session.config.grad_accum) for value, piece in zip(sums, group))
            sum(scaled).backward()
        return [value.item() for value in sums]

    def _run_passes(self, groups: list[list[_Piece]], pad_id: int) -> list[list[float]]:
        """The groups' passes, `concurrent_passes` at a time, each in its own thread with its share of this thread's
        torch threads. The pieces of one trial are in different groups, and their passes may overlap: autograd
        accumulates into a parameter's gradient under a lock, and sums are exact up to order."""
        at_once = min(self.concurrent_passes, len(groups))
        if at_once == 1:
            return [self._pass(group, pad_id) for group in groups]
        threads = torch.get_num_threads()
        each = max(1, threads // at_once)  # fewer groups than passes allowed: each pass gets more threads

        def run(group):
            torch.set_num_threads(each)  # this worker thread's own setting
            return self._pass(group, pad_id)
        if self._workers is None:
            self._workers = ThreadPoolExecutor(self.concurrent_passes, thread_name_prefix="pack-pass")
        try:
            return list(self._workers.map(run, groups))
        finally:
            torch.set_num_threads(threads)  # also torch's default for threads not yet started

    def _passes(self, pieces: list[_Piece]) -> list[list[_Piece]]:
        """Consecutive groups of pieces of at most rows_per_pass rows (None: all in one)."""
        if self.rows_per_pass is None:
            return [pieces]
        groups, rows = [[]], 0
        for piece in pieces:
            size = len(piece.batch["input_ids"])
            if groups[-1] and rows + size > self.rows_per_pass:
                groups.append([])
                rows = 0
            groups[-1].append(piece)
            rows += size
        return groups

    def evaluate(self, keys: Iterable[Hashable]) -> dict[Hashable, dict[str, Any]]:
        """Validation metrics of these trials; classification trials with the same validation data and prompts
        share forwards, generative ones decode each on its own."""
        groups: dict[tuple, list[Hashable]] = {}
        out = {}
        for key in keys:
            session = self.sessions[key]
            if not session.kind.shared_evaluation:
                out[key] = session.metrics(session.evaluate())
                continue
            shared = (*session.config.evaluation_inputs().values(), session.config.eval_batch_size)
            groups.setdefault(shared, []).append(key)
        for members in groups.values():
            first = self.sessions[members[0]]
            evaluations = evaluate_each([self.sessions[k].model for k in members], *first.evaluation_data())
            for key, evaluation in zip(members, evaluations):
                out[key] = self.sessions[key].metrics(first.kind.named(evaluation))
        return out


def run_packed(configs: list[TrialConfig], host: ModelHost | None = None, rows_per_pass: int | None = None,
               concurrent_passes: int = 1) -> list[TrialResult]:
    """Train these configurations to their ends together in one pack (they leave it as they finish or stop)."""
    trial_pack = TrialPack(host, rows_per_pass, concurrent_passes)
    for index, config in enumerate(configs):
        trial_pack.attach(index, config)
    histories: list[list[dict]] = [[] for _ in configs]
    active = list(range(len(configs)))
    try:
        while active:
            for key, metrics in trial_pack.step(active).items():
                histories[key].append(metrics)
            active = [k for k in active if not trial_pack.sessions[k].done]
    finally:
        trial_pack.stop_passes()
    results = [TrialResult(h[-1] if h else {}, h, trial_pack.sessions[k].model, trial_pack.sessions[k].task)
               for k, h in enumerate(histories)]
    return results
