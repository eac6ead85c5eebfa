"""Build any searchable method (ptplus, PEFT LoRA, PEFT Prefix-Tuning) from a flat dict of hyperparameters."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ptplus_tune.adapter.architectures import LLAMA_FAMILY, SUPPORTED_MODEL_TYPES, model_type
from ptplus_tune.adapter.config import CONFIG_NAME, PTPlusConfig
from ptplus_tune.adapter.hyperparameters import check_hyperparameters, ptplus_config
from ptplus_tune.adapter.model import PTPlusModel, get_ptplus_model
from ptplus_tune.errors import PTPlusError

_LORA_TARGETS = {**{kind: ["q_proj", "v_proj"] for kind in LLAMA_FAMILY}, "gpt2": ["c_attn"]}


def build_adapter(model: nn.Module, hyperparameters: Mapping[str, Any]) -> nn.Module:
    """Freeze `model` and wrap it with the adapter `hyperparameters["method"]` names (other keys are ignored)."""
    hp = check_hyperparameters(hyperparameters)
    method = hp["method"]
    if method == "ptplus":
        return get_ptplus_model(model, ptplus_config(hp))
    kind = model_type(model)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise PTPlusError(f"model type {kind!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    import peft  # heavy; only the baselines need it

    if method == "lora":
        config = peft.LoraConfig(
            task_type="CAUSAL_LM", r=int(hp["lora_r"]), lora_alpha=float(hp["lora_alpha"]),
            lora_dropout=float(hp["lora_dropout"]), target_modules=_LORA_TARGETS[kind],
        )
    else:
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=hp["prefix_length"])
    return peft.get_peft_model(model, config)


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Wrap `model` with a saved adapter of any method (frozen, for inference): PT+ or PEFT, told by its config."""
    config = Path(directory) / CONFIG_NAME
    if not config.is_file():
        raise PTPlusError(f"{directory} is not an adapter folder (no {CONFIG_NAME})")
    if json.loads(config.read_text()).get("peft_type") == PTPlusConfig.peft_type:
        return PTPlusModel.from_pretrained(model, directory)
    import peft

    return peft.PeftModel.from_pretrained(model, str(directory))


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
