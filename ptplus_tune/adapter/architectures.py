"""Where Prefix-Tuning+ plugs into each supported architecture: the module whose output holds the (pre-rotary)
queries, how to cut them into heads, and the attention output projection whose input gets the memory term."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ptplus_tune.errors import PTPlusError

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_MODEL_TYPES = (*LLAMA_FAMILY, "gpt2")


@dataclass
class AttentionSite:
    layer_index: int
    query_source: nn.Module  # its forward output contains the queries
    to_heads: Callable[[torch.Tensor], torch.Tensor]  # that output → [..., num_heads, head_dim]
    output_projection: nn.Module  # its input is the concatenated per-head attention outputs
    num_heads: int
    head_dim: int


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    kind = model_type(model)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise PTPlusError(
            f"Prefix-Tuning+ does not support model type {kind!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    sites = []
    for module in model.modules():
        if kind == "gpt2":
            if hasattr(module, "c_attn") and hasattr(module, "c_proj") and not getattr(module, "is_cross_attention", 0):
                sites.append(_gpt2_site(module))
        elif hasattr(module, "q_proj") and hasattr(module, "o_proj"):
            sites.append(_llama_site(module))
    if not sites:
        raise PTPlusError(f"found no attention layers in this {kind!r} model")
    return sites


def _llama_site(attn: nn.Module) -> AttentionSite:
    num_heads = attn.config.num_attention_heads
    head_dim = attn.head_dim
    q_norm = getattr(attn, "q_norm", None)  # Qwen3 normalises q per head before rotary: tap after it
    if q_norm is not None:
        source, to_heads = q_norm, (lambda out: out)
    else:
        source, to_heads = attn.q_proj, (lambda out: out.unflatten(-1, (num_heads, head_dim)))
    return AttentionSite(attn.layer_idx, source, to_heads, attn.o_proj, num_heads, head_dim)


def _gpt2_site(attn: nn.Module) -> AttentionSite:
    num_heads, head_dim, width = attn.num_heads, attn.head_dim, attn.embed_dim

    def to_heads(fused_qkv: torch.Tensor) -> torch.Tensor:
        return fused_qkv[..., :width].unflatten(-1, (num_heads, head_dim))

    return AttentionSite(attn.layer_idx, attn.c_attn, to_heads, attn.c_proj, num_heads, head_dim)
