"""What the service adds per trial: N no-op trials through the whole service (spec, OptunaSearch with its RDB
study, ASHA, concurrency limit, progress callback, checkpoint-free reporting) against bare Ray Tune with the same
trainable and the same Ray instance, measured in one run. Target: ratio <= 1.5. A third run adds MLflow tracking
(sqlite store in a temp folder): each trial opens its own run and logs every report, the driver records statuses,
and the study report (trials table, plots) is written at the end; no adapters, since no-op trials have none.

    python bench/service_overhead.py --trials 100
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray
from ray import tune

from ptplus_tune.service import run_study
from ptplus_tune.spaces import load_space
from ptplus_tune.tracking import finish_study, open_study

STEPS = (20, 40, 60)


def noop_trial(config):
    """Reports like a real trial (three evaluations), does no training."""
    score = 1.0 / (1.0 + abs(math.log10(config["learning_rate"]) + 3)) + 0.01 * config["prefix_length"] / 64
    for step in STEPS:
        tune.report({"step": step, "eval_accuracy": score * step / STEPS[-1]})


def tracked_noop_trial(target):
    def trial(config):
        from ptplus_tune.tracking.trial_run import TrialRun

        run = TrialRun(target, tune.get_context().get_trial_id(), config)
        score = 1.0 / (1.0 + abs(math.log10(config["learning_rate"]) + 3)) + 0.01 * config["prefix_length"] / 64
        for step in STEPS:
            metrics = {"step": step, "eval_accuracy": score * step / STEPS[-1]}
            run.log_metrics(metrics)
            tune.report(metrics)
    return trial


def bare(trials: int, storage: str) -> float:
    space = {"prefix_length": tune.lograndint(4, 65), "learning_rate": tune.loguniform(1e-4, 1e-2),
             "feature_map": tune.choice(["elu", "elu_plus_one", "gelu", "relu", "identity", "mlp"])}
    tuner = tune.Tuner(tune.with_resources(noop_trial, {"cpu": 1}), param_space=space,
                       tune_config=tune.TuneConfig(metric="eval_accuracy", mode="max", num_samples=trials),
                       run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0))
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def service(trials: int, storage: str, tracked: bool = False) -> float:
    spec = load_space("default")
    spec.num_samples, spec.max_concurrent, spec.resources.cpus = trials, int(ray.cluster_resources()["CPU"]), 1
    name = "tracked" if tracked else "service"
    start = time.perf_counter()
    if not tracked:
        run_study(spec, name, storage, trainable=noop_trial)
    else:
        target = open_study(f"sqlite:///{storage}/mlflow.db", spec, name, resume=False)
        result = run_study(spec, name, storage, trainable=tracked_noop_trial(target), tracking=target)
        finish_study(target, result, spec, optuna_storage=f"sqlite:///{storage}/{name}/optuna.db")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        t_bare = bare(args.trials, storage)
        t_service = service(args.trials, storage)
        t_tracked = service(args.trials, storage, tracked=True)
    ray.shutdown()
    print(f"{args.trials} no-op trials on {os.cpu_count()} CPUs: bare Ray Tune {t_bare:.1f} s "
          f"({t_bare / args.trials:.2f} s/trial), service {t_service:.1f} s ({t_service / args.trials:.2f} s/trial)")
    print(f"service / bare = {t_service / t_bare:.3f}   (target <= 1.5; added {(t_service - t_bare) / args.trials:.3f} "
          f"s per trial)")
    print(f"service + MLflow tracking {t_tracked:.1f} s ({t_tracked / args.trials:.2f} s/trial): "
          f"tracked / bare = {t_tracked / t_bare:.3f}, tracked / service = {t_tracked / t_service:.3f}")


if __name__ == "__main__":
    main()
