"""The Ray Tune function trainable: one `run_trial` per Tune trial, reporting through `ray.tune.report`."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

from ptplus_tune.spaces import StudySpec


def make_trainable(spec: StudySpec, tracking=None):
    """`tracking`: a picklable `ptplus_tune.tracking.Target`; the trial then opens (or, when retried, reopens) its
    own MLflow run, logs every report to it before Tune sees it, and logs its adapter at its final step."""
    fixed: dict[str, Any] = dict(spec.trial)
    threads = max(1, math.floor(spec.resources.cpus))

    def ptplus_trial(config: dict[str, Any]) -> None:
        import ray
        from ray import tune

        from ptplus_tune.trial import TrialConfig, run_trial

        trial_config = TrialConfig.from_dict({**fixed, **config, "num_threads": threads})
        node_id = ray.get_runtime_context().get_node_id()  # Tune's node_ip cannot tell nodes on one host apart
        run = None
        if tracking is not None:
            from ptplus_tune.tracking.trial_run import TrialRun

            run = TrialRun(tracking, tune.get_context().get_trial_id(), trial_config.hyperparameters())

        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            if run is not None:
                run.log_metrics(metrics)
                if checkpoint_dir and metrics["step"] >= trial_config.max_steps:
                    run.log_adapter(checkpoint_dir, metrics["step"])
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)

        checkpoint = tune.get_checkpoint()  # set when Tune retries a failed trial or resumes a study
        with checkpoint.as_directory() if checkpoint else nullcontext() as resume_from:
            run_trial(trial_config, report=report, resume_from=resume_from)

    return ptplus_trial
