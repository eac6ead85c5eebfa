"""One adapted attention layer: the memory term φ(q_i)ᵀ M_h added to each query head's attention output.

Choices the paper leaves open, made here:
- q_i is the query *before* rotary position embedding (after q_norm where the model has one, e.g. Qwen3). The
  memory then acts as a content-addressed lookup that returns the same value for the same query wherever the token
  sits; a post-rotary q would make φ(q)ᵀM depend on absolute position, which a prefix outside the softmax, with no
  position of its own, should not. It also lets us read q straight off the projection, so any attention kernel works.
- Every query head has its own memory, also under grouped-query attention (the paper's formula is per query head).
- Slot keys start at N(0, 1/head_dim), so φ(q)·φ(k) has the scale of a scaled dot-product logit. With N(0, 1)
  the scores on SmolLM2-135M are ~8x larger (rms 6-9), the memory swamps the attention output within a few steps at
  lr 1e-3, and few-shot BBC News accuracy fell to chance (18% vs 93% after 30 steps). Slot values and the `full`
  memory start at zero, so a fresh adapter returns exactly the base model's outputs.
- No normalisation of the read-out (the paper drops linear attention's denominator). For the all-positive
  elu_plus_one that makes the scores large (≈ Σ φ(q)), so it needs a much smaller learning rate than elu: the
  search space's log-uniform learning rate is what finds it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptplus_tune.adapter.feature_maps import FeatureMap
from ptplus_tune.adapter.readout import MemoryReadout


class PTPlusLayer(nn.Module):
    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        feature_map: str,
        memory: str,
        prefix_length: int,
        feature_dim: int | None = None,
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.memory = num_heads, head_dim, memory
        self.feature_map = FeatureMap(feature_map, head_dim, feature_dim)
        d_phi = self.feature_map.out_dim
        if memory == "slots":
            self.slot_keys = nn.Parameter(torch.randn(num_heads, prefix_length, head_dim) / math.sqrt(head_dim))
            self.slot_values = nn.Parameter(torch.zeros(num_heads, prefix_length, head_dim))
            # (φ(q)φ(K)ᵀ)V costs p·(d_φ + d) per token and head, φ(q)(φ(K)ᵀV) costs d_φ·d: take the cheaper order.
            self._factorised = prefix_length * (d_phi + head_dim) < d_phi * head_dim
        else:
            self.memory_matrix = nn.Parameter(torch.zeros(num_heads, d_phi, head_dim))
        self._frozen: tuple | None = None  # (parameter versions, dtype, the read-out's memory operands)

    def effective_memory(self) -> torch.Tensor:
        """M as [num_heads, d_φ, head_dim]; for slots, φ(K)ᵀV."""
        if self.memory == "slots":
            return torch.matmul(self.feature_map(self.slot_keys).transpose(1, 2), self.slot_values)
        return self.memory_matrix

    def _operands(self, dtype: torch.dtype) -> tuple:
        """(memory, keys, values) of the read-out: M, or for factorised slots φ(K) and V. They change only when the
        parameters do, so without autograd (evaluation, decoding: one call per layer and generated token) they are
        computed once per parameter state instead of per call (with 64 slots, re-deriving M = φ(K)ᵀV at every
        decoding step cost 25% of the bare model's time per token: bench/decode_overhead.py)."""
        if torch.is_grad_enabled():
            return self._compute_operands(dtype)
        state = (dtype, *((p.data_ptr(), p._version) for p in self.parameters()))
        if self._frozen is None or self._frozen[0] != state:
            self._frozen = (state, self._compute_operands(dtype))
        return self._frozen[1]

    def _compute_operands(self, dtype: torch.dtype) -> tuple:
        if self.memory == "slots" and self._factorised:
            return None, self.feature_map(self.slot_keys.to(dtype)), self.slot_values.to(dtype)
        return self.effective_memory().to(dtype), None, None

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """query: [..., num_heads, head_dim] (pre-rotary) → memory read-out [..., num_heads * head_dim]."""
        lead, dtype = query.shape[:-2], query.dtype
        heads_first = query.reshape(-1, self.num_heads, self.head_dim).transpose(0, 1)
        fm = self.feature_map
        weight, bias = (fm.weight.to(dtype), fm.bias.to(dtype)) if fm.weight is not None else (None, None)
        out = MemoryReadout.apply(heads_first, fm.name, weight, bias, *self._operands(dtype))
        return out.transpose(0, 1).reshape(*lead, self.num_heads * self.head_dim)
