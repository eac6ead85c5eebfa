"""The trial's side of tracking: it opens (or reopens) its own child run and writes its params, metrics and adapter.

Runs in the trial's worker process, wherever Ray placed it; everything goes through the tracking URI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ptplus_tune.tracking.target import MODEL_URI, Target, client, trial_run

log = logging.getLogger(__name__)


class TrialRun:
    def __init__(self, target: Target, trial_id: str, params: dict[str, Any]):
        import mlflow

        mlflow.set_tracking_uri(target.uri)  # process-wide, for mlflow's model logging (this is the trial's worker)
        self.target, self.trial_id = target, trial_id
        self.client = client(target.uri)
        run = trial_run(self.client, target, trial_id, params)
        self.run_id = run.info.run_id
        # A retried trial restarts from its last checkpoint, whose report may already be logged: never log a step twice.
        self.logged_step = run.data.metrics.get("step", 0)
        self.logged_loss_step = self.logged_step  # train-loss-only points (between evaluations), same rule
        if "train_loss" in run.data.metrics:  # reopened: points logged after its last checkpoint are there already
            history = self.client.get_metric_history(self.run_id, "train_loss")
            self.logged_loss_step = max([self.logged_step, *(m.step for m in history)])
        self.has_model = MODEL_URI in run.data.tags
        if run.info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")

    def log_metrics(self, metrics: dict[str, Any], evaluation: bool = True) -> None:
        """An evaluation's report, or (`evaluation=False`) a training-loss point between evaluations."""
        from mlflow.entities import Metric

        step = int(metrics["step"])
        if step <= (self.logged_step if evaluation else self.logged_loss_step):
            return
        now = int(time.time() * 1000)
        # "step" is the last evaluation's step (a reopened run resumes from it), so loss points leave it alone.
        batch = [Metric(key, float(value), now, step) for key, value in sorted(metrics.items())
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and (evaluation or key != "step")]
        self.client.log_batch(self.run_id, metrics=batch)
        self.logged_loss_step = max(self.logged_loss_step, step)
        if evaluation:
            self.logged_step = step

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """Rows an evaluation produced besides its figures (a generative task's predictions beside their
        references) as an MLflow table artifact `name/step_NNNNNN.json`, which the run's page shows; once per step."""
        if step <= self.logged_step or not rows:
            return
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=f"{name}/step_{step:06d}.json")

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_adapter(self, checkpoint_dir: str, step: int) -> None:
        if self.has_model:  # logged by an earlier attempt of this trial that died right after
            return
        from ptplus_tune.tracking.pyfunc import log_adapter

        log_adapter(self.client, self.run_id, checkpoint_dir, step)
        self.has_model = True
