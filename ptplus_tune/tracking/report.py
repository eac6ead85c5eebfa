"""The study's artifacts on its parent run: a trials table (CSV) and Optuna's plots of the search."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
PLOTS = ("plot_optimization_history", "plot_parallel_coordinate", "plot_param_importances")


def log_trials_table(mlflow_client, run_id: str, result, runs: dict) -> None:
    import pandas as pd

    rows = []
    for trial in result.trials:
        run = runs.get(trial.trial_id)
        rows.append({"trial_id": trial.trial_id, "run_id": run.info.run_id if run else "", "status": trial.status,
                     **{k: v for k, v in sorted(trial.config.items())},
                     **{k: v for k, v in sorted(trial.metrics.items()) if isinstance(v, (int, float))}})
    table = pd.DataFrame(rows)
    if result.metric in table:
        table = table.sort_values(result.metric, ascending=result.mode == "min", na_position="last")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        table.to_csv(path, index=False)
        mlflow_client.log_artifact(run_id, str(path))


def study_note(result, spec, runs: dict, top: int = 10) -> str:
    """The study run's description (`mlflow.note.content`, markdown): what was searched, the ranked trials with a
    link to each run, and the best configuration."""
    ranked = result.ranked
    params = sorted({k for t in ranked[:top] for k in t.config})
    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "early_stopped", "failed")}
    lines = [f"**{result.name}**: {spec.description}".rstrip(": "), "",
             f"{len(result.trials)} trials: {counts['completed']} completed, {counts['early_stopped']} stopped early, "
             f"{counts['failed']} failed. Metric: `{result.metric}` ({result.mode}).", "",
             "| trial | run | status | " + " | ".join([result.metric, "step", *params]) + " |",
             "|" + "---|" * (5 + len(params))]
    for t in ranked[:top]:
        run = runs.get(t.trial_id)
        link = f"[{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})" if run else ""
        status = t.status + (f" ({t.stop_reason})" if t.stop_reason else "")
        values = " | ".join(format_value(t.config.get(p)) for p in params)
        lines.append(f"| {t.trial_id} | {link} | {status} | {t.metrics[result.metric]:.4f} | "
                     f"{t.metrics.get('step', '')} | {values} |")
    best = result.champion(spec)
    if best is not None:
        lines += ["", f"**Best**: trial {best.trial_id}, {result.metric} {best.metrics[result.metric]:.4f} at step "
                      f"{best.metrics.get('step')}:", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(best.config.items())]
    lines += ["", "Compare the trials: select their runs in the Runs table (the study's child runs) and press "
                  "*Compare*; `trials.csv` and `plots/` are this run's artifacts."]
    return "\n".join(lines)


def format_value(value) -> str:
    """A hyperparameter as the tables show it."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def log_plots(mlflow_client, run_id: str, optuna_storage: str, study_name: str, objectives=()) -> None:
    """Optuna's optimisation history, parallel coordinates and parameter importances as PNGs under plots/; with
    several objectives also the Pareto front, and the others on the first objective."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as plots

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    options = {name: {} for name in PLOTS}
    if len(objectives) > 1:
        names = [m for m, _ in objectives]
        options = {"plot_pareto_front": {"target_names": names},
                   **{name: {"target": lambda t: t.values[0], "target_name": names[0]} for name in PLOTS}}
    for name, kwargs in options.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(plots, name)(study, **kwargs)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            mlflow_client.log_figure(run_id, figure, f"plots/{name.removeprefix('plot_')}.png")
            plt.close(figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need ≥ 2 finished trials
            log.warning("no %s plot: %s", name.removeprefix("plot_").replace("_", " "), exc)
