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
    """Freeze `model` and wrap it with the adapter `hyperparameters["method"]` names: how a trial builds any method
    from the flat hyperparameter names of a search space.

    Args:
        model (`nn.Module`): a causal LM of a supported architecture.
        hyperparameters (`Mapping[str, Any]`): `method` (`ptplus` | `lora` | `prefix_tuning`) and that method's
            settings (`feature_map`, `memory`, `prefix_length`, `feature_dim`; `lora_r`, `lora_alpha`,
            `lora_dropout`; `prefix_length`). Missing ones take the defaults of `adapter.hyperparameters.DEFAULTS`;
            other keys (learning rate, batch size, ...) are ignored.

    Returns:
        `nn.Module`: a `PTPlusModel` or a `peft.PeftModel`.

    Raises:
        `PTPlusError`: an unknown method, a bad setting or an unsupported architecture, before anything is built.

    Example:

    ```py
    >>> lora = build_adapter(base, {"method": "lora", "lora_r": 8})
    >>> ptplus = build_adapter(other_base, {"method": "ptplus", "feature_map": "gelu", "prefix_length": 32})
    ```
    """
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
    """Wrap `model` with a saved adapter of any method, frozen, for inference.

    Args:
        model (`nn.Module`): the base model the adapter was trained on.
        directory (`str | os.PathLike`): a folder with `adapter_config.json` (PT+ or PEFT, told by its
            `peft_type`) and the adapter's weights, e.g. `adapter/` of a trial checkpoint or of `ptplus-tune train`.

    Returns:
        `nn.Module`: a `PTPlusModel` or a `peft.PeftModel`.
    """
    config = Path(directory) / CONFIG_NAME
    if not config.is_file():
        raise PTPlusError(f"{directory} is not an adapter folder (no {CONFIG_NAME})")
    if json.loads(config.read_text()).get("peft_type") == PTPlusConfig.peft_type:
        return PTPlusModel.from_pretrained(model, directory)
    import peft

    return peft.PeftModel.from_pretrained(model, str(directory))


def count_trainable_parameters(model: nn.Module) -> int:
    """The number of parameters that require grad (an adapter's size: the `trainable_params` metric)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
