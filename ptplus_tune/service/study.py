"""A study: a StudySpec run as a Ray Tune experiment (OptunaSearch proposes, ASHA stops), resumable by name."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.disk import DiskGuard
from ptplus_tune.service.interrupt import Interruption
from ptplus_tune.service.optuna_store import NSGAIISampler, StudySearch, open_storage
from ptplus_tune.service.storage import (
    OPTUNA_FILE,
    SPEC_FILE,
    TRACKING_FILE,
    StudyDir,
    check_new,
    local_storage,
    optuna_storage_of,
    resume_command,
)
from ptplus_tune.spaces import StudySpec, define_by_run
from ptplus_tune.trial.outcome import status_of, stop_reason_of

log = logging.getLogger(__name__)


@dataclass
class TrialSummary:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]  # the trial's last report
    status: str  # completed | early_stopped | failed | interrupted (still running when the study was interrupted)
    stop_reason: str | None = None  # early_stopped: `asha` or the dead-trial rule that fired (trial.rules)
    checkpoint: str | None = None  # its last checkpoint folder (holds `adapter/`)
    checkpoint_ref: Any = field(default=None, repr=False, compare=False)  # the ray.tune.Checkpoint itself


@dataclass
class StudyResult:
    name: str
    path: str
    metric: str
    mode: str
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: str | None = None  # what ended the study before its trials: SIGINT, SIGTERM, low_disk, time_budget
    optuna_storage: str = ""  # the RDB URL of its Optuna study

    @property
    def best(self) -> TrialSummary | None:
        scored = [t for t in self.trials if isinstance(t.metrics.get(self.metric), (int, float))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[self.metric])

    def pareto_front(self, objectives: Sequence[tuple[str, str]]) -> list[TrialSummary]:
        """The completed trials (those that ran their whole budget) that no other completed trial dominates on
        `objectives` [(metric, mode), ...], best first on the first objective."""
        from ptplus_tune.spaces.pareto import pareto_front, signed

        done = [t for t in self.trials if t.status == "completed" and all(
            isinstance(t.metrics.get(m), (int, float)) for m, _ in objectives)]
        front = [done[i] for i in pareto_front([signed(t.metrics, objectives) for t in done])]
        return sorted(front, key=lambda t: signed(t.metrics, objectives), reverse=True)

    def champion(self, spec: StudySpec) -> TrialSummary | None:
        """The trial the registry gets: in a Pareto study with a `select` rule, the front member it picks (the best
        on the first objective when no trial completed); otherwise the best on the metric."""
        if spec.objectives and spec.select:
            from ptplus_tune.spaces.pareto import select

            front = self.pareto_front(spec.objectives)
            if front:
                return front[select([t.metrics for t in front], spec.select, spec.objectives)]
        return self.best

    @property
    def ranked(self) -> list[TrialSummary]:
        """The trials that reported the metric, best first."""
        return sorted((t for t in self.trials if isinstance(t.metrics.get(self.metric), (int, float))),
                      key=lambda t: t.metrics[self.metric], reverse=self.mode == "max")


def build_searcher(spec: StudySpec, name: str, path: Path | None, optuna_storage: str | None = None,
                   warm_start=None):
    """`optuna_storage`: an RDB URL; None: `optuna.db` in the local study folder `path`. `warm_start`: a
    service.warm_start.WarmStart whose configurations run first and whose finished trials TPE starts from."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    if optuna_storage is None:
        path.mkdir(parents=True, exist_ok=True)
    storage = open_storage(optuna_storage or local_storage(path))
    if spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    elif spec.sampler == "nsga2":
        sampler = NSGAIISampler(seed=spec.seed)
    else:  # TPE; with several objectives Optuna's TPE is multi-objective (MOTPE)
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, seed=spec.seed,
                                             n_startup_trials=spec.n_startup_trials)
    points = []
    if warm_start is not None:
        from ptplus_tune.service.warm_start import seed_study

        seed_study(warm_start, storage, name, spec)
        points += warm_start.points
    # `balance`: partial points, enqueued in the Optuna study; each pins one parameter, the sampler proposes the rest.
    points += spec.balanced_points()
    metric, mode = ([m for m, _ in spec.objectives], [d for _, d in spec.objectives]) if spec.objectives else \
        (spec.metric, spec.mode)
    searcher = StudySearch(space=define_by_run(spec), metric=metric, mode=mode, sampler=sampler,
                            study_name=name, storage=storage, points_to_evaluate=points or None)
    searcher.max_steps = spec.max_steps
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)


def run_study(spec: StudySpec, name: str, storage_path: str, *, resume: bool = False,
              trainable: Callable | None = None, callbacks: Sequence = (), max_failures: int = 2,
              tracking=None, stop=None, optuna_storage: str | None = None, warm_start=None) -> StudyResult:
    """Run (or continue) a study on Ray Tune: OptunaSearch proposes, ASHA stops, every trial checkpoints at each
    evaluation. Ray must be initialised (`ptplus_tune.service.connect`).

    Args:
        spec (`StudySpec`): the study specification (`ptplus_tune.spaces.load_space`).
        name (`str`): the study's name; its state is `storage_path/name`.
        storage_path (`str`): a local folder (shared by every node on a cluster) or a URI Ray Tune accepts.
        resume (`bool`): continue the stopped study `name` instead of starting a new one.
        trainable (`Callable`, optional): Tune's trainable instead of PTPlusTrial (benchmarks replay stored curves).
        callbacks (`Sequence`): more Tune callbacks.
        max_failures (`int`): retries of a failed trial, each from its last checkpoint.
        tracking (`ptplus_tune.tracking.Target`, optional): each trial then writes its own MLflow run.
        stop (optional): a Tune stopping condition, e.g. a `tune.Stopper` that ends the study at a target.
        optuna_storage (`str`, optional): an RDB URL for a new study's Optuna study (default: `optuna.db` in its
            folder).
        warm_start (`service.warm_start.WarmStart`, optional): a new study's start from earlier studies.

    Returns:
        `StudyResult`: every trial's configuration, last report, status and checkpoint; `best` and `ranked` by the
        space's metric; `interrupted` says what stopped it early (SIGINT, SIGTERM, low disk), if anything did.

    Example:

    ```py
    >>> from ptplus_tune.service import connect, run_study
    >>> from ptplus_tune.spaces import load_space
    >>> connect(None)  # a new local Ray instance, or the running cluster
    >>> result = run_study(load_space("quick"), "first-look", "ptplus_results")
    >>> result.best.config
    ```
    """
    import ray
    from ray import tune

    from ptplus_tune.service import budget
    from ptplus_tune.service.budget import BudgetWatch
    from ptplus_tune.service.pack_host import remove_hosts
    from ptplus_tune.service.progress import StudyProgress, board_name, open_board
    from ptplus_tune.service.schedulers import build_scheduler
    from ptplus_tune.service.trainable import SCRATCH, StudySettings
    from ptplus_tune.service.trainable import trainable as study_trainable

    _quiet_tune()
    folder = StudyDir(storage_path, name)
    path = folder.local  # None on a URI: no scratch or disk checks there (trials use their node's local folder)
    settings = StudySettings.of(spec, tracking, str(path) if path else None, board_name(name), study=name)
    runnable = tune.with_resources(trainable or study_trainable(settings), trial_resources(spec))
    if tracking is not None:
        from ptplus_tune.tracking.callback import TrackTrialStatus

        callbacks = [*callbacks, TrackTrialStatus(tracking, spec.max_steps)]
    if resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise PTPlusError(f"there is no study {name!r} to resume under {folder.storage}")
        log.info("resuming study %s from %s", name, folder)
        tuner = tune.Tuner.restore(str(folder), trainable=runnable, resume_unfinished=True, resume_errored=True)
    else:
        check_new(storage_path, name)
        optuna_storage = optuna_storage_of(storage_path, name, optuna_storage)
        folder.write(SPEC_FILE, spec.to_yaml())
        if tracking is not None:
            folder.write(TRACKING_FILE, tracking.uri)
        folder.write(OPTUNA_FILE, optuna_storage)
        progress = StudyProgress(spec.metric, spec.mode, spec.max_steps, study=name)
        callbacks = [*callbacks, BudgetWatch(spec.max_steps, spec.num_samples)]
        if path is not None:
            callbacks = [*callbacks, DiskGuard(str(path))]
        tuner = tune.Tuner(
            runnable,
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode,
                                        search_alg=build_searcher(spec, name, path, optuna_storage, warm_start),
                                        scheduler=build_scheduler(spec), num_samples=spec.num_samples,
                                        reuse_actors=True),  # warm workers: base model and data stay loaded
            run_config=tune.RunConfig(
                name=name, storage_path=folder.storage,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1), stop=stop,
                callbacks=[progress, *callbacks],
                verbose=0,
            ),
        )
    board = open_board(name)
    budget.start(spec.time_budget)  # from now, on a resumed study too
    try:
        with Interruption(f"Continue it with: {resume_command(name, storage_path)}") as interruption:
            grid = tuner.fit()
    except Exception as exc:
        if no_space_left(exc):
            raise _disk_full(name, storage_path) from exc
        raise
    finally:
        budget.start(None)
        ray.kill(board)
        remove_hosts(name)
        if path is not None:
            shutil.rmtree(path / SCRATCH, ignore_errors=True)
    full = [r.error for r in grid if r.error is not None and no_space_left(r.error)]
    if full:  # trials that could not write their checkpoints; the next ones would fail the same way
        raise _disk_full(name, storage_path) from full[0]
    unfinished = _unfinished(str(folder)) if interruption.reason else ()
    result = summarise(grid, name, str(folder), spec, unfinished=unfinished)
    result.interrupted = interruption.reason
    result.optuna_storage = optuna_storage_of(storage_path, name)
    return result


def trial_resources(spec: StudySpec):
    """A trial's reservation: all of `resources`, or with `pack` K a 1/K share for a Prefix-Tuning+ trial."""
    if spec.resources.pack == 1:
        return {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    from ray.tune import PlacementGroupFactory

    default_method = spec.trial.get("method", "ptplus")

    def reserve(config: dict) -> PlacementGroupFactory:
        cpus, gpus = spec.resources.share(config.get("method", default_method))
        return PlacementGroupFactory([{"CPU": cpus, **({"GPU": gpus} if gpus else {})}])
    return reserve


NO_SPACE = ("No space left on device", "database or disk is full")


def no_space_left(exc: BaseException) -> bool:
    """Whether a full disk is behind `exc` (anywhere in its chain, or in the text of an error Ray passed along)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(text in str(exc) for text in NO_SPACE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full(name: str, storage_path: str) -> PTPlusError:
    return PTPlusError(f"the disk that holds {StudyDir(storage_path, name)} is full, so the study stopped (what "
                       f"it saved before may be incomplete): free some space, then "
                       f"`{resume_command(name, storage_path)}`")


def _unfinished(path: str) -> set[str]:
    """The trials an interrupted study left running or waiting, from the state Tune saved on the way out."""
    from ray.tune import ExperimentAnalysis

    return {t.trial_id for t in ExperimentAnalysis(path).trials if t.status not in ("TERMINATED", "ERROR")}


def _quiet_tune() -> None:
    """Progress reaches the user through StudyProgress; keep Tune's and Optuna's own console output out of it."""
    import warnings

    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0 fully
    # One checkpoint per evaluation is by design (resume and retries start from it); don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed trial is one progress line with its reason (StudyProgress); the traceback stays in its error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def summarise(grid, name: str, path: str, spec: StudySpec, unfinished=()) -> StudyResult:
    result = StudyResult(name, path, spec.metric, spec.mode)
    for r in grid:
        metrics = dict(r.metrics or {})
        status = "failed" if r.error is not None else status_of(metrics.get("step", 0), spec.max_steps)
        trial_id = metrics.get("trial_id") or _trial_id_of(r.path)
        if trial_id in unfinished and status != "failed":
            status = "interrupted"
        result.trials.append(TrialSummary(
            trial_id=trial_id,
            config={k: v for k, v in (r.config or {}).items()},
            metrics={k: v for k, v in metrics.items() if k != "config"},
            status=status,
            stop_reason=stop_reason_of(metrics, spec.max_steps) if status == "early_stopped" else None,
            checkpoint=r.checkpoint.path if r.checkpoint else None,
            checkpoint_ref=r.checkpoint,
        ))
    return result


def _trial_id_of(trial_path: str) -> str:
    """A trial folder is `<Trainable>_<trial id>_<n>_<config>_<date>` (a trial that never reported has no metrics)."""
    parts = os.path.basename(trial_path).split("_")
    return parts[1] if len(parts) > 1 else parts[0]
