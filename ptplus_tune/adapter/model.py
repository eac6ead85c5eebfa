"""PTPlusModel: a frozen transformers model with Prefix-Tuning+ injected through forward hooks.

The hooks read the query projection's output and add the memory term to the attention output projection's input,
so the attention computation itself (eager, sdpa, flash, KV cache) is untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ptplus_tune.adapter.architectures import AttentionSite, find_attention_sites
from ptplus_tune.adapter.config import CONFIG_NAME, WEIGHTS_NAME, PTPlusConfig
from ptplus_tune.adapter.layer import PTPlusLayer
from ptplus_tune.atomic import replacing_file, write_text
from ptplus_tune.errors import PTPlusError


def make_layers(sites: list[AttentionSite], config: PTPlusConfig, device) -> nn.ModuleDict:
    """One PTPlusLayer per adapted site, keyed by layer index, created in site order (so the same RNG state gives
    the same initial adapter, packed or not)."""
    if config.layers is not None:
        unknown = sorted(set(config.layers) - {s.layer_index for s in sites})
        if unknown:
            raise PTPlusError(f"layers {unknown} do not exist; the model has layers 0..{len(sites) - 1}")
        sites = [s for s in sites if s.layer_index in set(config.layers)]
    return nn.ModuleDict({
        str(site.layer_index): PTPlusLayer(site.num_heads, site.head_dim, config.feature_map, config.memory,
                                           config.prefix_length, config.feature_dim).to(device)
        for site in sites
    })


class AdapterAPI:
    """What a Prefix-Tuning+ adapter offers besides its forward: its weights, M, saving. Needs `ptplus_layers` and
    `ptplus_config`."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.ptplus_layers.state_dict().items()}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def effective_memory(self) -> dict[int, torch.Tensor]:
        """Per adapted layer index, M as [num_query_heads, d_φ, head_dim]."""
        with torch.no_grad():
            return {int(i): layer.effective_memory().detach().clone() for i, layer in self.ptplus_layers.items()}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write only the adapter: adapter_config.json and adapter_model.safetensors (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        with replacing_file(directory / WEIGHTS_NAME) as tmp:
            save_file(weights, str(tmp), metadata={"format": "pt", "peft_type": "PTPLUS"})
        write_text(directory / CONFIG_NAME, self.ptplus_config.to_json())


class PTPlusModel(AdapterAPI, nn.Module):
    """A frozen causal LM with Prefix-Tuning+ memories in its attention layers (`ptplus_tune.adapter.layer`); build
    it with `get_ptplus_model`, reload a saved one with `PTPlusModel.from_pretrained(base_model, directory)`.
    `save_pretrained` writes the adapter only; `effective_memory()` returns each layer's M; `unload()` hands the
    base model back untouched."""

    def __init__(self, base_model: nn.Module, config: PTPlusConfig):
        super().__init__()
        self.base_model = base_model
        self.ptplus_config = config
        for parameter in base_model.parameters():
            parameter.requires_grad_(False)
        sites = find_attention_sites(base_model)
        self.ptplus_layers = make_layers(sites, config, next(base_model.parameters()).device)
        self._handles = []
        for site in sites:
            if str(site.layer_index) in self.ptplus_layers:
                self._attach(site, self.ptplus_layers[str(site.layer_index)])

    def _attach(self, site: AttentionSite, layer: PTPlusLayer) -> None:
        captured: dict[str, torch.Tensor] = {}

        def keep_query(module, args, output):
            captured["query"] = site.to_heads(output)

        def add_memory(module, args):
            query = captured.pop("query")
            hidden = args[0]
            return (hidden + layer(query).to(hidden.dtype), *args[1:])

        self._handles.append(site.query_source.register_forward_hook(keep_query))
        self._handles.append(site.output_projection.register_forward_pre_hook(add_memory))

    # --- the model's own API, delegated --------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, directory: str | os.PathLike, is_trainable: bool = False):
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise PTPlusError(f"{directory} is not a Prefix-Tuning+ adapter (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = PTPlusConfig.from_json((directory / CONFIG_NAME).read_text())
        model = cls(base_model, config)
        device = next(model.ptplus_layers.parameters()).device
        model.ptplus_layers.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)))
        model.ptplus_layers.requires_grad_(is_trainable)
        return model

    def unload(self) -> nn.Module:
        """Remove the hooks and return the untouched base model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.base_model


def get_ptplus_model(model: nn.Module, config: PTPlusConfig) -> PTPlusModel:
    """Freeze `model` and inject Prefix-Tuning+ into its attention layers, as PEFT's `get_peft_model` does for its
    methods.

    Args:
        model (`nn.Module`): a causal LM of a supported architecture (Llama, Mistral, Qwen2, Qwen3, GPT-2). Its
            weights are frozen in place.
        config (`PTPlusConfig`): feature map, memory kind, prefix length, feature dimension and layers.

    Returns:
        `PTPlusModel`: the wrapper. Only the adapter's parameters require grad; with a fresh adapter (M = 0) it
        computes exactly what `model` does; `forward` and `generate` work as before, KV cache included.

    Example:

    ```py
    >>> from transformers import AutoModelForCausalLM
    >>> from ptplus_tune.adapter import PTPlusConfig, get_ptplus_model
    >>> base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> model = get_ptplus_model(base, PTPlusConfig(feature_map="elu", memory="slots", prefix_length=16))
    >>> model.save_pretrained("adapter/")  # adapter_config.json + adapter_model.safetensors
    ```
    """
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return PTPlusModel(model, config)
