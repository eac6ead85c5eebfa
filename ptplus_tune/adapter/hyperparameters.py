"""The flat hyperparameters every searchable method is built from, their defaults and their checks (no torch: a
space is checked before any model is loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptplus_tune.adapter.config import PTPlusConfig
from ptplus_tune.errors import PTPlusError

METHODS = ("ptplus", "lora", "prefix_tuning")
_PTPLUS = PTPlusConfig()
# The one source of the adapter defaults (TrialConfig and the spaces take theirs from here).
DEFAULTS: dict[str, Any] = {
    "method": "ptplus", "feature_map": _PTPLUS.feature_map, "memory": _PTPLUS.memory,
    "prefix_length": _PTPLUS.prefix_length, "feature_dim": _PTPLUS.feature_dim,
    "lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
}


def check_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The flat hyperparameters with defaults filled in; a clear error for a bad method or adapter setting, before
    any model is loaded."""
    hp = {**DEFAULTS, **{k: v for k, v in hyperparameters.items() if v is not None}}
    if hp["method"] not in METHODS:
        raise PTPlusError(f"unknown method {hp['method']!r}; choose one of: {', '.join(METHODS)}")
    if hp["method"] == "ptplus":
        ptplus_config(hp)
    elif isinstance(hp["prefix_length"], bool) or not isinstance(hp["prefix_length"], int) or hp["prefix_length"] < 1:
        raise PTPlusError(f"prefix_length must be an integer >= 1, got {hp['prefix_length']!r}")
    return hp


def ptplus_config(hp: Mapping[str, Any]) -> PTPlusConfig:
    return PTPlusConfig(feature_map=hp["feature_map"], memory=hp["memory"], prefix_length=hp["prefix_length"],
                        feature_dim=hp["feature_dim"])
