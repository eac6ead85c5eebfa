"""The Model Registry: the best adapter of a study becomes a new version; `champion` moves only when it wins.

A version is comparable with the champion when both were judged on the same metric and the same evaluation data
(base model, dataset, split and prompt: `ptplus.eval_sha256`). A version that does not beat a comparable champion,
or cannot be compared with it, gets the alias `challenger`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ptplus_tune.errors import PTPlusError, first_line

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC, METRIC_VALUE, METRIC_MODE, EVAL_SHA256 = "ptplus.metric", "ptplus.metric_value", "ptplus.mode", \
    "ptplus.eval_sha256"


@dataclass
class Registration:
    name: str
    version: str
    alias: str  # champion | challenger
    previous_champion: str | None  # the version that held `champion` before, if any


def _beats(value: float, other: float, mode: str) -> bool:
    return value > other if mode == "max" else value < other


def current_champion(mlflow_client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no champion yet
        return None


def _ensure_registered_model(mlflow_client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(name, description="Prefix-Tuning+ adapters found by ptplus-tune")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another study created it meanwhile: fine
                raise


def add_version(mlflow_client, name: str, model_uri: str, run_id: str, tags: dict[str, str]):
    """A new version of `name` (created if needed) for the logged model `model_uri`, without an alias."""
    from mlflow.exceptions import MlflowException

    try:
        _ensure_registered_model(mlflow_client, name)
        return mlflow_client.create_model_version(name, model_uri, run_id=run_id, tags=tags,
                                                  model_id=model_uri.removeprefix("models:/"))
    except MlflowException as exc:
        raise PTPlusError(f"could not register {model_uri} as {name!r}: {first_line(exc.message, limit=1000)}") from exc


def register(mlflow_client, name: str, model_uri: str, run_id: str, *, metric: str, mode: str, value: float,
             eval_sha256: str, lineage: dict[str, str]) -> Registration:
    """Register the logged model `model_uri` (`models:/<model id>`, logged by `run_id`) as a new version of `name`
    with its lineage tags, then give it the alias `champion` or `challenger`."""
    tags = {**lineage, METRIC: metric, METRIC_MODE: mode, METRIC_VALUE: repr(float(value)), EVAL_SHA256: eval_sha256}
    champion = current_champion(mlflow_client, name)
    version = add_version(mlflow_client, name, model_uri, run_id, tags)
    comparable = (champion is not None and champion.tags.get(METRIC) == metric
                  and champion.tags.get(EVAL_SHA256) == eval_sha256 and METRIC_VALUE in champion.tags)
    if champion is None or (comparable and _beats(value, float(champion.tags[METRIC_VALUE]), mode)):
        alias = CHAMPION
    else:
        alias = CHALLENGER
        if not comparable:
            log.warning("version %s of %s is not comparable with champion version %s (other metric or evaluation "
                        "data); it becomes the challenger", version.version, name, champion.version)
    mlflow_client.set_registered_model_alias(name, alias, version.version)
    return Registration(name, str(version.version), alias, champion.version if champion else None)
