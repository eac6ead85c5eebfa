"""The driver's side of tracking: one experiment and one parent run per study; trial status from what Ray says
happened; at the end the best trial, the trials table, plots and the registry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptplus_tune.data import EMBEDDED_DATASET
from ptplus_tune.data.identity import dataset_identity, model_identity
from ptplus_tune.errors import PTPlusError
from ptplus_tune.tracking.target import (
    MODEL_URI,
    REGISTERED_MODEL,
    SPACE_SHA256,
    STATUS,
    STOP_REASON,
    STUDY,
    TRIAL_ID,
    Target,
    check_reachable,
    child_runs,
    client,
    trial_run,
)
from ptplus_tune.trial.layout import ADAPTER_DIR

log = logging.getLogger(__name__)
LIBRARIES = ("ptplus-tune", "torch", "transformers", "peft", "ray", "optuna", "mlflow", "datasets")
# The MLflow UI opens a model-training experiment on its runs, not on the GenAI traces overview.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
NOTE = "mlflow.note.content"  # a run's description in the UI, rendered as markdown
RUN_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
def _versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[f"ptplus.version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _study_params(spec) -> dict[str, Any]:
    params = {"metric": spec.metric, "mode": spec.mode, "num_samples": spec.num_samples,
              "max_concurrent": spec.max_concurrent, "seed": spec.seed, "max_steps": spec.max_steps,
              "sampler": spec.sampler, "scheduler": spec.scheduler.type,
              "asha.grace_period": spec.scheduler.grace_period,
              "asha.reduction_factor": spec.scheduler.reduction_factor, "resources.cpus": spec.resources.cpus,
              "resources.gpus": spec.resources.gpus,
              "searched": ",".join(p.name for p in spec.parameters if p.type != "fixed")}
    params.update({f"trial.{k}": v for k, v in sorted(spec.trial.items())})
    params["base_model"] = model_identity(spec.trial.get("model"))
    params["dataset"] = dataset_identity(spec.trial.get("dataset", EMBEDDED_DATASET))
    return params


def _log_params(mlflow_client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


def open_study(uri: str, spec, name: str, resume: bool, registered_model: str | None = None,
               tags: dict[str, str] | None = None) -> Target:
    """The study's experiment and parent run: new ones, or with `resume` the existing ones (reopened).
    `registered_model` ("" for none) is kept on the study run, so that a resumed study registers where the study
    was meant to unless told otherwise (None). `tags`: more tags on a new study run (e.g. `ptplus.warm_start`)."""
    import mlflow

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise PTPlusError(f"the MLflow experiment {name!r} at {uri} was deleted; restore it or choose another --name")
    parent = None
    if experiment is not None and experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    if experiment is not None:
        found = mlflow_client.search_runs([experiment.experiment_id], f"tags.`{STUDY}` = '{name}'", max_results=1)
        parent = found[0] if found else None
        if parent is not None and not resume:
            raise PTPlusError(f"MLflow at {uri} already has a study {name!r}; choose another --name")
    experiment_id = experiment.experiment_id if experiment else mlflow_client.create_experiment(
        name, tags={STUDY: name, EXPERIMENT_KIND: MODEL_TRAINING})
    if parent is None:
        parent = mlflow_client.create_run(experiment_id, run_name=name,
                                          tags={STUDY: name, SPACE_SHA256: spec.sha256, **_versions(),
                                                NOTE: spec.description or "", REGISTERED_MODEL: registered_model or "",
                                                **(tags or {})})
        _log_params(mlflow_client, parent.info.run_id, _study_params(spec))
        mlflow_client.log_text(parent.info.run_id, spec.to_yaml(), "study_space.yaml")
    else:
        mlflow_client.update_run(parent.info.run_id, status="RUNNING")
        if registered_model is None:
            registered_model = parent.data.tags.get(REGISTERED_MODEL)
        else:
            mlflow_client.set_tag(parent.info.run_id, REGISTERED_MODEL, registered_model)
    log.info("tracking study %s in MLflow experiment %s, run %s", name, experiment_id, parent.info.run_id)
    return Target(uri, experiment_id, parent.info.run_id, name, registered_model)


def mark_trial(mlflow_client, target: Target, trial_id: str, status: str, config: dict[str, Any],
               stop_reason: str | None = None) -> Any:
    """Record what Ray says happened to a trial: the status tag (and why it stopped early), and its run ended
    (created if it never started)."""
    run = trial_run(mlflow_client, target, trial_id, config)
    mlflow_client.set_tag(run.info.run_id, STATUS, status)
    if stop_reason:
        mlflow_client.set_tag(run.info.run_id, STOP_REASON, stop_reason)
    if run.info.status == "RUNNING":
        mlflow_client.set_terminated(run.info.run_id, RUN_STATUS[status])
    return run


LOST_NOTE = ("**Lost trial.** The study's driver was killed after this trial started but before Ray Tune saved it "
             "in the study's state, so `--resume` could not continue it; its Optuna trial was closed as failed and "
             "another trial took its place. Its metrics are real but it is not one of the study's trials.")


def close_lost_runs(mlflow_client, target: Target, known: set[str]) -> None:
    """Runs whose trial Tune no longer knows (it started after Tune last saved its state, then the driver was
    killed): with an evaluation, ended FAILED like its Optuna trial and say why; with none, nothing worth keeping,
    deleted (MLflow keeps deleted runs restorable until `mlflow gc`)."""
    for run in child_runs(mlflow_client, target):
        # (a lost run closed by an earlier finish: `--resume` of a finished study finishes it again)
        if run.data.tags.get(TRIAL_ID) in known or run.data.tags.get(NOTE) == LOST_NOTE:
            continue
        if "step" not in run.data.metrics:
            mlflow_client.delete_run(run.info.run_id)
            continue
        mlflow_client.set_tag(run.info.run_id, STATUS, "failed")
        mlflow_client.set_tag(run.info.run_id, NOTE, LOST_NOTE)
        if run.info.status != "FAILED":
            mlflow_client.set_terminated(run.info.run_id, "FAILED")
        log.warning("trial %s was lost with the killed driver after its first evaluation; its MLflow run %s is "
                    "marked failed", run.data.tags.get(TRIAL_ID), run.info.run_id)


def evaluation_sha256(trial_settings: dict[str, Any], metric: str) -> str:
    """What a metric value depends on besides the adapter: base model, data, split and prompt."""
    from ptplus_tune.trial import TrialConfig

    identity = TrialConfig.from_dict(trial_settings).evaluation_inputs()
    identity.update(metric=metric, model=model_identity(identity["model"]),
                    dataset=dataset_identity(identity["dataset"]))
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class TrackingReport:
    experiment_id: str
    parent_run_id: str
    best_run_id: str | None = None
    registration: Any = None  # registry.Registration, when the best adapter was registered
    ranked_run_ids: list[str] = field(default_factory=list)  # runs of the trials that reported the metric, best first
    front_versions: list[str] = field(default_factory=list)  # --register-front: the other front members' versions


def interrupt_study(target: Target, result) -> None:
    """An interrupted study: each trial's run says how far it got (KILLED and `ptplus.status=interrupted` for those
    still running, which `--resume` reopens), the study's run is KILLED, nothing is registered."""
    mlflow_client = client(target.uri)
    for trial in result.trials:
        mark_trial(mlflow_client, target, trial.trial_id, trial.status, trial.config, trial.stop_reason)
    mlflow_client.set_tag(target.parent_run_id, STATUS, "interrupted")
    mlflow_client.set_terminated(target.parent_run_id, "KILLED")


PARETO = "ptplus.pareto"  # on every trial run of a study with several objectives: true / false


def log_pareto(mlflow_client, parent: str, result, objectives, runs: dict) -> None:
    """`ptplus.pareto` on each trial's run (whether it is on the front of the completed trials) and the front as
    `pareto.csv` on the study run."""
    front = result.pareto_front(objectives)
    on_front = {t.trial_id for t in front}
    for trial in result.trials:
        mlflow_client.set_tag(runs[trial.trial_id].info.run_id, PARETO, str(trial.trial_id in on_front).lower())
    names = [m for m, _ in objectives]
    keys = sorted({k for t in front for k in t.config})
    lines = [",".join(["trial_id", "run_id", *names, *keys])]
    for t in front:
        lines.append(",".join([t.trial_id, runs[t.trial_id].info.run_id, *(repr(t.metrics[m]) for m in names),
                               *(str(t.config.get(k, "")) for k in keys)]))
    mlflow_client.log_text(parent, "\n".join(lines) + "\n", "pareto.csv")


def finish_study(target: Target, result, spec, optuna_storage: str | None = None,
                 registered_model: str | None = None, status: str = "finished",
                 register_front: bool = False) -> TrackingReport:
    """After the study: every trial's run ended with its status and adapter; the parent gets the best trial (the
    champion: `StudyResult.champion`), the trials table and plots; the champion's adapter is registered under
    `registered_model` (None: not registered), and with `register_front` every other member of a Pareto study's front
    as a version without an alias. `status`: the study run's `ptplus.status` (`time_budget` when its time ran
    out)."""
    from ptplus_tune.tracking.pyfunc import log_adapter
    from ptplus_tune.tracking.registry import register
    from ptplus_tune.tracking.report import log_plots, log_trials_table, study_note

    mlflow_client = client(target.uri)
    runs = {}
    for trial in result.trials:
        run = mark_trial(mlflow_client, target, trial.trial_id, trial.status, trial.config, trial.stop_reason)
        if MODEL_URI not in run.data.tags and trial.checkpoint_ref is not None:
            # A trial ASHA stopped (or that failed) cannot log its adapter itself; its last checkpoint holds it.
            with trial.checkpoint_ref.as_directory() as folder:
                if (Path(folder) / ADAPTER_DIR).is_dir():
                    log_adapter(mlflow_client, run.info.run_id, folder, int(trial.metrics.get("step", 0)))
                else:  # e.g. a failed trial whose recorded checkpoint a newer one replaced before the driver died
                    log.warning("trial %s: its checkpoint %s is gone; its run gets no adapter", trial.trial_id,
                                trial.checkpoint)
        runs[trial.trial_id] = mlflow_client.get_run(run.info.run_id)
    close_lost_runs(mlflow_client, target, {trial.trial_id for trial in result.trials})

    report = TrackingReport(target.experiment_id, target.parent_run_id,
                            ranked_run_ids=[runs[t.trial_id].info.run_id for t in result.ranked])
    parent = target.parent_run_id
    if spec.objectives:
        log_pareto(mlflow_client, parent, result, spec.objectives, runs)
    log_trials_table(mlflow_client, parent, result, runs)
    mlflow_client.set_tag(parent, NOTE, study_note(result, spec, runs)[:7900])  # MLflow's tag size limit
    if optuna_storage:
        log_plots(mlflow_client, parent, optuna_storage, target.study, spec.objectives)
    best = result.champion(spec)
    if best is not None:
        best_run = runs[best.trial_id]
        report.best_run_id = best_run.info.run_id
        from mlflow.entities import Metric

        numeric = {k: v for k, v in best.metrics.items() if k in best_run.data.metrics}
        mlflow_client.log_batch(parent, metrics=[Metric(k, float(v), 0, int(best.metrics.get("step", 0)))
                                                 for k, v in sorted(numeric.items())])
        for key, value in sorted(best.config.items()):
            mlflow_client.set_tag(parent, f"best.{key}", str(value))
        mlflow_client.set_tag(parent, "ptplus.best_run_id", best_run.info.run_id)
        mlflow_client.log_dict(parent, {"trial_id": best.trial_id, "run_id": best_run.info.run_id,
                                        "config": best.config, "metrics": best.metrics}, "best_trial.json")
        model_uri = best_run.data.tags.get(MODEL_URI)

        def lineage(trial, run) -> dict[str, str]:
            objectives = {f"ptplus.objective.{m}": repr(float(trial.metrics[m])) for m, _ in spec.objectives
                          if isinstance(trial.metrics.get(m), (int, float))}
            return {STUDY: target.study, "ptplus.study_run_id": parent, "ptplus.trial_run_id": run.info.run_id,
                    TRIAL_ID: trial.trial_id, SPACE_SHA256: spec.sha256,
                    "ptplus.base_model": model_identity(spec.trial.get("model")),
                    "ptplus.dataset": dataset_identity(spec.trial.get("dataset", EMBEDDED_DATASET)), **objectives}

        if registered_model and model_uri:
            value = float(best.metrics[result.metric])
            report.registration = register(
                mlflow_client, registered_model, model_uri, best_run.info.run_id, metric=result.metric,
                mode=result.mode, value=value,
                eval_sha256=evaluation_sha256({**spec.trial, **best.config}, result.metric),
                lineage=lineage(best, best_run))
        if registered_model and register_front and spec.objectives:
            from ptplus_tune.tracking.registry import add_version

            for trial in result.pareto_front(spec.objectives):
                run = runs[trial.trial_id]
                if trial.trial_id != best.trial_id and MODEL_URI in run.data.tags:
                    version = add_version(mlflow_client, registered_model, run.data.tags[MODEL_URI],
                                          run.info.run_id, {**lineage(trial, run), PARETO: "true"})
                    report.front_versions.append(str(version.version))
    mlflow_client.set_tag(parent, STATUS, status)
    mlflow_client.set_terminated(parent, "FINISHED")
    return report

