"""Packed trials in a study: one PackHost actor per GPU (per node on CPU) trains the Prefix-Tuning+ trials placed
there as one TrialPack, on one resident base model (ptplus_tune.trial.pack).

Tune semantics stay as they are: one Tune trial per configuration, proposed by Optuna and stopped by ASHA, with its
own reports, checkpoints and MLflow run. A packed trial reserves 1/K of `resources` (so Ray's scheduler, and the
autoscaler from pending demand, place K trials per GPU or per node's share) and forwards its work to the host on its
node and device (`RemoteSession`): its `step` waits in `PackHost.advance` until the pack's next steps bring it to its
next evaluation. The host trains, in each packed step, every trial waiting at that moment; a trial that returns to
Tune between evaluations (report, checkpoint) rejoins at the next step. A host that dies fails exactly the trials
attached to it; Tune retries them from their checkpoints on a new host (hosts are named, created on first use).

Hosts are detached actors named `ptplus-pack-<study>-<node>-<gpu|cpu>`; the study's driver removes them at its end
(`remove_hosts`). On a GPU, the host sees only the GPU of the trial that created it (Ray's fractional GPU
assignment puts the K trials of a host on one device).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

import ray

from ptplus_tune.errors import first_line

log = logging.getLogger(__name__)
HOST_PREFIX = "ptplus-pack-"
MAX_CALLS = 256  # concurrent calls a host accepts: one blocked `advance` per attached trial, plus the rest


class PackHost:
    """`threads`: the CPU threads it trains with; `gpu`: the GPU it trains on (None: CPU). How it runs a packed step
    on that device: `ptplus_tune.trial.pack.host_passes`."""

    def __init__(self, threads: int, board: str | None, gpu: str | None):
        if gpu is not None:  # before torch touches CUDA in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        import torch

        from ptplus_tune.service.progress import BoardLink
        from ptplus_tune.trial import ModelHost
        from ptplus_tune.trial.pack import TrialPack, host_passes

        self.threads = threads
        torch.set_num_threads(threads)
        self.trial_pack = TrialPack(ModelHost(), *host_passes(gpu is not None, threads))
        self.board = BoardLink(board)
        self._pack_lock = threading.Lock()  # held by a packed step, and by anything else that touches the pack
        self._state = threading.Condition()  # who waits, what came back
        self._waiting: dict[str, object] = {}  # trial id -> the token of its pending `advance`
        self._results: dict[object, Any] = {}  # token -> metrics, or the exception that ended its step
        self._logs: dict[str, list[dict]] = {}
        self._others = 0  # callers queued for the pack lock; the loop lets them in between steps
        threading.Thread(target=self._loop, name="pack-loop", daemon=True).start()

    def _locked(self, action):
        with self._state:
            self._others += 1
        try:
            with self._pack_lock:
                return action()
        finally:
            with self._state:
                self._others -= 1
                self._state.notify_all()

    def attach(self, trial_id: str, config: dict[str, Any]) -> dict[str, Any]:
        from ptplus_tune.trial import TrialConfig

        def attach():
            self._drop(trial_id)  # a retried trial whose earlier attempt this host still holds
            self._logs[trial_id] = []
            session = self.trial_pack.attach(
                trial_id, TrialConfig.from_dict({**config, "num_threads": self.threads}),  # the host's, not 1/K
                progress=lambda step, _: self.board.send(trial_id, step, session.train_loss),
                on_log=lambda point: self._logs[trial_id].append(point))
            return self._info(trial_id)
        return self._locked(attach)

    def restore(self, trial_id: str, checkpoint_dir: str, final_ok: bool = False) -> dict[str, Any]:
        def restore():
            self.trial_pack.sessions[trial_id].restore(checkpoint_dir, final_ok)
            return self._info(trial_id)
        return self._locked(restore)

    def save(self, trial_id: str, folder: str) -> str:
        return self._locked(lambda: str(self.trial_pack.sessions[trial_id].save(folder)))

    def detach(self, trial_id: str) -> None:
        self._locked(lambda: self._drop(trial_id))
        self._logs.pop(trial_id, None)

    def _drop(self, trial_id: str) -> None:
        """Take a trial out; an `advance` of it still waiting (its worker died while blocked there) is released."""
        with self._state:
            token = self._waiting.pop(trial_id, None)
            if token is not None:
                self._results[token] = RuntimeError(f"trial {trial_id} left the pack")
                self._state.notify_all()
        self.trial_pack.detach(trial_id)

    def advance(self, trial_id: str) -> tuple[dict[str, Any], list[dict], dict[str, Any]]:
        """Wait for this trial's next evaluation: (metrics, training-loss points logged on the way, state)."""
        token = object()
        with self._state:
            self._waiting[trial_id] = token
            self._state.notify_all()
            while token not in self._results:
                self._state.wait()
            result = self._results.pop(token)
        if isinstance(result, BaseException):
            raise result
        logs, self._logs[trial_id] = self._logs.get(trial_id, []), []
        return result, logs, self._info(trial_id)

    def report_again(self, trial_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics, state) of a trial restored from its final checkpoint: its last evaluation once more."""
        return self._locked(lambda: (self.trial_pack.evaluate([trial_id])[trial_id], self._info(trial_id)))

    def _info(self, trial_id: str) -> dict[str, Any]:
        session = self.trial_pack.sessions[trial_id]
        return {"step": session.step, "done": session.done, "train_loss": session.train_loss,
                "model_loads": self.trial_pack.host.model_loads, "trials": len(self.trial_pack.sessions),
                "threads": session.config.num_threads}

    def _loop(self) -> None:
        while True:
            with self._state:
                while not self._waiting:
                    self._state.wait()
                while self._others:  # let a queued attach / save / restore in first
                    self._state.wait()
            with self._pack_lock:
                with self._state:
                    keys = sorted(self._waiting)
                if not keys:  # dropped while this loop waited for the lock
                    continue
                try:
                    out: dict[str, Any] = self.trial_pack.step(keys)
                except BaseException as exc:  # e.g. out of memory: every trial of this step fails, Tune retries them
                    log.exception("packed step failed")
                    out = {key: exc for key in keys}
            with self._state:
                for key, value in out.items():
                    token = self._waiting.pop(key, None)
                    if token is not None:
                        self._results[token] = value
                self._state.notify_all()

    def ping(self) -> int:
        return os.getpid()


def host_name(study: str, node_id: str, gpu: str | None) -> str:
    return f"{HOST_PREFIX}{study}-{node_id[:12]}-{'gpu' + gpu if gpu is not None else 'cpu'}"


@functools.cache
def node_cpus(node_id: str) -> int | None:
    """The CPUs Ray gives this node (asked once per worker process: warm workers run many trials)."""
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    cpus = node.get("Resources", {}).get("CPU")
    return max(1, int(cpus)) if cpus else None


def open_host(study: str, threads: int, board: str | None):
    """The host of this worker's node and GPU, created on first use (pinned to this node). On a GPU it uses
    `threads` CPU threads and one forward/backward pass per packed step; on CPU it is the node's one training
    process, so it uses the node's CPUs. The calling trial's process stays light: no torch, no model."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    gpus = ray.get_gpu_ids()
    gpu = str(gpus[0]) if gpus else None
    if gpu is None:
        threads = node_cpus(node_id) or threads
    name = host_name(study, node_id, gpu)
    for _ in range(60):
        actor = ray.remote(PackHost).options(
            name=name, get_if_exists=True, lifetime="detached", num_cpus=0, max_concurrency=MAX_CALLS,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(threads, board, gpu)
        try:
            ray.get(actor.ping.remote())
            return actor, name
        except ray.exceptions.RayActorError as exc:  # a host that died (failing this trial) still holds the name
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"pack host {name} could not be started: {first_line(last, limit=1000)}")


def remove_hosts(study: str) -> None:
    """Kill the study's hosts (at its end, or when it is interrupted)."""
    prefix = f"{HOST_PREFIX}{study}-"
    for name in ray.util.list_named_actors():
        if name.startswith(prefix):
            try:
                ray.kill(ray.get_actor(name))
            except ValueError:  # gone already
                pass


class RemoteSession:
    """A trial that trains in a PackHost, seen from its own Tune trainable: a `ptplus_tune.trial.Session`."""

    def __init__(self, host, pack_id: str, trial_id: str, config, on_log=None):
        self.host, self.pack_id, self.trial_id, self.on_log = host, pack_id, trial_id, on_log
        self._update(ray.get(host.attach.remote(trial_id, config.to_dict())))

    def _update(self, info: dict[str, Any]) -> None:
        self.step, self.done, self.train_loss = info["step"], info["done"], info["train_loss"]
        self.model_loads, self.pack_trials = info["model_loads"], info["trials"]

    def advance(self) -> dict[str, Any]:
        metrics, logs, info = ray.get(self.host.advance.remote(self.trial_id))
        self._update(info)
        for point in logs:
            if self.on_log:
                self.on_log(point)
        return metrics

    def report_again(self) -> dict[str, Any]:
        metrics, info = ray.get(self.host.report_again.remote(self.trial_id))
        self._update(info)
        return metrics

    def save(self, folder) -> str:
        return ray.get(self.host.save.remote(self.trial_id, str(folder)))

    def restore(self, checkpoint_dir, final_ok: bool = False) -> None:
        self._update(ray.get(self.host.restore.remote(self.trial_id, str(checkpoint_dir), final_ok)))

    def close(self) -> None:
        try:
            ray.get(self.host.detach.remote(self.trial_id))
        except ray.exceptions.RayActorError:  # the host is gone: nothing of this trial left to take off
            pass
