"""The Ray Tune trainable: one trial session per Tune trial, advanced evaluation by evaluation (`step`).

A class trainable, so that Tune can reuse its actor (`reuse_actors`): `reset_config` takes the finished trial's
adapter off the resident base model and starts the next trial on it; the base model, tokenizer, data and MLflow
(an import of seconds) stay loaded for the worker's life (see ptplus_tune.trial.host). Checkpoints are Tune's
(`save_checkpoint`, `load_checkpoint`), taken at every evaluation, so retries and resumed studies continue where they
stopped. What every trial of a study shares comes in as `StudySettings` (`tune.with_parameters`, see `trainable`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from ptplus_tune.errors import first_line
from ptplus_tune.spaces import StudySpec

log = logging.getLogger(__name__)
SCRATCH = ".scratch"  # per-trial scratch folders inside the study's folder (never the system temp dir)


@dataclass(frozen=True)
class StudySettings:
    """What every trial of a study shares. `fixed`: the trial settings no search varies (the space's `trial:` plus
    the study's evaluation policy); `threads`: torch threads per trial; `packed`: Prefix-Tuning+ trials train in the
    PackHost of their node and GPU (named after `study`); `tracking`: a `ptplus_tune.tracking.Target`, each trial
    then opens (or, when retried, reopens) its own MLflow run, logs every report to it before Tune sees it, and logs
    its adapter at its final step; `study_path`: the study's local folder (scratch space); `board`: the name of the
    study's ProgressBoard actor, which gets each trial's live step and loss."""

    fixed: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    packed: bool = False
    tracking: Any = None
    study_path: str | None = None
    board: str | None = None
    study: str = "study"

    @classmethod
    def of(cls, spec: StudySpec, tracking=None, study_path: str | None = None, board: str | None = None,
           study: str = "study") -> StudySettings:
        fixed = dict(spec.trial)
        policy = spec.trial_policy()
        fixed["eval_steps"] = sorted(set(fixed.get("eval_steps") or []) | set(policy["eval_steps"]))
        fixed.setdefault("dead_trial_step", policy["dead_trial_step"])
        return cls(fixed=fixed, threads=max(1, math.floor(spec.resources.cpus)), packed=spec.resources.pack > 1,
                   tracking=tracking, study_path=study_path, board=board, study=study)


class PTPlusTrial(tune.Trainable):
    """One Prefix-Tuning+ (or PEFT baseline) trial. Tune gives it its configuration; `settings` comes through
    `tune.with_parameters` (see `trainable`)."""

    def setup(self, config: dict[str, Any], settings: StudySettings) -> None:
        import ray

        from ptplus_tune.service.progress import BoardLink

        self.settings = settings
        self.node_id = ray.get_runtime_context().get_node_id()  # Tune's node_ip can't tell nodes on one host apart
        self._board = BoardLink(settings.board)
        self._assign(config)

    def _assign(self, config: dict[str, Any]) -> None:
        """Take the trial's configuration; its session starts at its first step, restore or save (`_begin`).
        Tune can start an actor for a trial and then give the trial a cached actor instead: the unused one only
        sees `setup` and `stop`. Had it started the session, it would have opened the trial's MLflow run, taken
        the trial's session in its PackHost and, on `stop`, removed that session and the trial's scratch folder
        (a checkpoint being staged there included) from under the actor that trains the trial."""
        from ptplus_tune.trial import TrialConfig

        self.trial_config = TrialConfig.from_dict({**self.settings.fixed, **config,
                                                   "num_threads": self.settings.threads})
        self.session = None
        self.run = None

    def _begin(self) -> None:
        if self.session is not None:
            return
        started = time.perf_counter()
        if self.settings.tracking is not None:
            from ptplus_tune.tracking.trial_run import TrialRun

            self._track(lambda: setattr(self, "run", TrialRun(self.settings.tracking, self.trial_id,
                                                               self.trial_config.hyperparameters())))
        self._scratch = Path(self.settings.study_path or self.logdir) / SCRATCH / self.trial_id
        shutil.rmtree(self._scratch, ignore_errors=True)  # left by an attempt that was killed
        self.session = self.open_session()
        self.setup_s = time.perf_counter() - started  # MLflow run, session (adapter): a warm worker's is short
        self._progress(0, self.trial_config.max_steps)

    def open_session(self):
        """The trial's `ptplus_tune.trial.Session`: in its node's PackHost when the study packs Prefix-Tuning+
        trials, else a TrialSession in this process (the only case in which this process loads torch and the
        model)."""
        if self.settings.packed and self.trial_config.method == "ptplus":
            from ptplus_tune.service.pack_host import RemoteSession, open_host

            host, pack_id = open_host(self.settings.study, self.settings.threads, self.settings.board)
            if self.run is not None:
                from ptplus_tune.tracking.target import PACK_ID

                self._track(lambda: self.run.set_tags({PACK_ID: pack_id}))
            return RemoteSession(host, pack_id, self.trial_id, self.trial_config, on_log=self._on_log)
        from ptplus_tune.trial import TrialSession, shared_host

        return TrialSession(self.trial_config, host=shared_host(), progress=self._progress, on_log=self._on_log)

    def _progress(self, step: int, max_steps: int, force: bool = False) -> None:
        session = getattr(self, "session", None)
        self._board.send(self.trial_id, step, session.train_loss if session is not None else None, force)

    def _track(self, action) -> None:
        """MLflow is where results are shown, not what training needs: when the server stops answering, the
        trial trains on untracked (its reports still reach Tune) and the driver logs what it can at the end."""
        try:
            action()
        except Exception as exc:
            log.warning("trial %s: MLflow tracking failed (%s); training goes on untracked", self.trial_id,
                        first_line(exc))
            self.run = None

    def _on_log(self, point: dict) -> None:
        if self.run is not None:
            self._track(lambda: self.run.log_metrics(point, evaluation=False))

    def step(self) -> dict[str, Any]:
        self._begin()
        # Done already: restored from its final checkpoint (see newest_checkpoint); report its end once more.
        metrics = self.session.report_again() if self.session.done else self.session.advance()
        # Rows beside the figures (a generative task's predictions) go to MLflow as tables, not to Tune's results.
        tables = {key: metrics.pop(key) for key in [k for k, v in metrics.items() if isinstance(v, list)]}
        if self.run is not None:
            for name, rows in tables.items():
                self._track(lambda name=name, rows=rows: self.run.log_table(name, rows, int(metrics["step"])))
            self._track(lambda: self.run.log_metrics(metrics))
        if self.run is not None and self.session.step >= self.trial_config.max_steps:
            self._track(self._log_adapter)
        self._progress(self.session.step, self.trial_config.max_steps, force=True)
        worker = {"node_id": self.node_id, "setup_s": self.setup_s, "worker_model_loads": self.session.model_loads,
                  "pack_trials": self.session.pack_trials}
        return {**metrics, **worker, "should_checkpoint": True, "done": self.session.done}

    def _log_adapter(self) -> None:
        try:
            folder = self.session.save(self._scratch / "final")
            self.run.log_adapter(str(folder), self.session.step)
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def save(self, checkpoint_dir: str | None = None):
        # Tune stages a checkpoint in the system temp dir, which a killed worker leaves behind; stage it in the
        # trial's scratch folder instead and drop it once Tune has persisted it to the study's storage.
        if checkpoint_dir is not None:
            return super().save(checkpoint_dir)
        self._begin()
        staging = self._scratch / "checkpoint"
        try:
            return super().save(str(staging))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def restore(self, checkpoint_path):
        return super().restore(newest_checkpoint(checkpoint_path, self.trial_config.max_steps))

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.session.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self._begin()
        self.session.restore(checkpoint_dir, final_ok=True)
        self._progress(self.session.step, self.trial_config.max_steps, force=True)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._end()
        self._assign(new_config)
        return True

    def _end(self) -> None:
        if getattr(self, "session", None) is not None:
            self.session.close()
            self.session = None
            shutil.rmtree(self._scratch, ignore_errors=True)

    def cleanup(self) -> None:
        self._end()


def trainable(settings: StudySettings):
    """PTPlusTrial bound to a study's settings, as Tune's `with_parameters` intends (the settings travel once
    through Ray's object store, not with every trial's configuration)."""
    return tune.with_parameters(PTPlusTrial, settings=settings)


def newest_checkpoint(saved, max_steps: int):
    """The checkpoint a restored trial continues from. Tune's saved experiment state can name one that
    `CheckpointConfig(num_to_keep)` has since deleted: the driver died after the trial's next checkpoint was persisted
    (and the old one dropped) but before Tune saved its state again. The trial's own folder then holds that newer
    checkpoint, whose reports were already made: continue from it rather than fail the trial. A final checkpoint
    (nothing left to train) is taken only when there is no other: the trial then reports its end again."""
    from pyarrow.fs import FileSelector, FileType

    checkpoint = getattr(saved, "checkpoint", None)
    if checkpoint is None or checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound:
        return saved
    import torch
    from ray.tune import Checkpoint

    from ptplus_tune.trial.layout import STATE_FILE

    fs, (trial_dir, _, lost) = checkpoint.filesystem, checkpoint.path.rstrip("/").rpartition("/")
    found = fs.get_file_info(FileSelector(trial_dir, allow_not_found=True))
    newer = [i for i in found if i.type == FileType.Directory and i.base_name.startswith("checkpoint_")
             and i.base_name > lost]  # Tune numbers them checkpoint_000000, checkpoint_000001, ...
    usable = []  # (not final, name, checkpoint, step): the newest non-final one, else the newest
    for info in newer:
        candidate = Checkpoint(info.path, filesystem=fs)
        try:
            with candidate.as_directory() as folder:
                step = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)["step"]
        except Exception:  # a copy the dying driver left half-written
            continue
        usable.append((step < max_steps, info.base_name, candidate, step))
    if not usable:
        return saved
    _, _, chosen, step = max(usable, key=lambda u: u[:2])
    fs.create_dir(checkpoint.path)
    log.warning("checkpoint %s is gone; continuing from the newer %s (step %d)", checkpoint.path, chosen.path, step)
    return type(saved)(checkpoint=chosen, metrics=saved.metrics)
