"""A trained adapter as an MLflow pyfunc model: the raw adapter files plus task.json inside; `predict` loads the
base model with the adapter and scores every label (and, with the `max_new_tokens` param, generates)."""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ptplus_tune.tracking.target import MODEL_URI
from ptplus_tune.trial.layout import ADAPTER_DIR, TASK_FILE

MODEL_NAME = "adapter"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 0)]),
)
_REQUIREMENTS = ("ptplus-tune", "torch", "transformers", "peft", "safetensors", "pandas")


class AdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ptplus_tune.trial import Predictor

        self.predictor = Predictor.from_files(context.artifacts[ADAPTER_DIR], context.artifacts["task"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        texts = _texts(model_input)
        rows = self.predictor.predict(texts, max_new_tokens=int((params or {}).get("max_new_tokens", 0)))
        return pd.DataFrame(rows)


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


def _requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_adapter(mlflow_client, run_id: str, checkpoint_dir: str, step: int) -> str:
    """Log the adapter in a trial checkpoint folder to `run_id` as a pyfunc model; tag the run with its URI."""
    folder = Path(checkpoint_dir)
    # MLflow files a new logged model under the active experiment (the Default one if none is set), not its run's.
    mlflow.set_experiment(experiment_id=mlflow_client.get_run(run_id).info.experiment_id)
    with warnings.catch_warnings():  # an input example would make MLflow load the base model just to try it
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=step,
            python_model=str(Path(__file__).with_name("adapter_model.py")),
            artifacts={ADAPTER_DIR: str(folder / ADAPTER_DIR), "task": str(folder / TASK_FILE)},
            signature=SIGNATURE, pip_requirements=_requirements(),
        )
    mlflow_client.set_tag(run_id, MODEL_URI, info.model_uri)
    return info.model_uri
