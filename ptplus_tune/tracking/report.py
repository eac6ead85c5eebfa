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


def log_plots(mlflow_client, run_id: str, optuna_storage: str, study_name: str) -> None:
    """Optuna's optimisation history, parallel coordinates and parameter importances as PNGs under plots/."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as plots

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(plots, name)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            mlflow_client.log_figure(run_id, figure, f"plots/{name.removeprefix('plot_')}.png")
            plt.close(figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need ≥ 2 finished trials
            log.warning("no %s plot: %s", name.removeprefix("plot_").replace("_", " "), exc)
