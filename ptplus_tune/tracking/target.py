"""Where a study logs: the tracking URI, its experiment and parent run, and how runs are found again by tag.

A `Target` is small and picklable: the driver creates it and every trial receives it, so trials on any node of a
cluster write their own runs (over HTTP when the URI is a tracking server).
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ptplus_tune.errors import PTPlusError

log = logging.getLogger(__name__)

# Tags (see DESIGN.md): on trial runs and on the study's parent run.
TRIAL_ID = "ptplus.trial_id"
STATUS = "ptplus.status"  # completed | early_stopped | failed
STOP_REASON = "ptplus.stop_reason"  # early_stopped: asha, or the dead-trial rule that fired (trial.rules)
STUDY = "ptplus.study"
PACK_ID = "ptplus.pack_id"  # a packed trial: the model host (node and GPU) it trained on, its last one if retried
SPACE_SHA256 = "ptplus.space_sha256"
MODEL_URI = "ptplus.model_uri"  # the trial's logged adapter model, once it has one
REGISTERED_MODEL = "ptplus.registered_model"  # on the study run: where its best adapter goes ("" = nowhere)
PARENT_RUN = "mlflow.parentRunId"


@dataclass(frozen=True)
class Target:
    uri: str
    experiment_id: str
    parent_run_id: str
    study: str
    registered_model: str | None = None  # the study's choice ("": register nothing); None: not known


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite database in the working directory (artifacts in ./mlruns beside it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail with one clear line, before anything starts, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        raise PTPlusError(f"the MLflow tracking server at {uri} does not answer ({problem}); start it or pass "
                          f"another --tracking-uri")
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise PTPlusError(f"the folder of the tracking database {uri} does not exist")


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def find_trial_run(mlflow_client, target: Target, trial_id: str):
    runs = mlflow_client.search_runs([target.experiment_id], f"tags.`{TRIAL_ID}` = '{trial_id}'", max_results=2)
    if len(runs) > 1:
        log.warning("trial %s has %d runs; using the first", trial_id, len(runs))
    return runs[0] if runs else None


def trial_run(mlflow_client, target: Target, trial_id: str, params: dict | None = None):
    """The trial's run: the existing one (a retried trial, a resumed study), else a new child of the study run."""
    from mlflow.entities import Param

    run = find_trial_run(mlflow_client, target, trial_id)
    if run is not None:
        return run
    run = mlflow_client.create_run(target.experiment_id, run_name=f"trial-{trial_id}",
                                   tags={PARENT_RUN: target.parent_run_id, TRIAL_ID: trial_id})
    if params:
        mlflow_client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
    return mlflow_client.get_run(run.info.run_id)


def child_runs(mlflow_client, target: Target) -> list:
    return mlflow_client.search_runs([target.experiment_id], f"tags.`{PARENT_RUN}` = '{target.parent_run_id}'",
                                     max_results=5000)
