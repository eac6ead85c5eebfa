"""Feature maps φ of Prefix-Tuning+: the kernel that replaces softmax for the prefix's attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_FIXED = {
    "elu": F.elu,  # the paper's choice
    "elu_plus_one": lambda x: F.elu(x) + 1.0,  # positive kernel of linear attention (Katharopoulos et al.)
    "gelu": F.gelu,
    "relu": F.relu,
    "identity": lambda x: x,
}


class FeatureMap(nn.Module):
    """φ: R^head_dim → R^d_φ, applied on the last dimension.

    The learned `mlp` kernel ReLU(Wx + b) is shared by all query heads of a layer (its W is d_φ × head_dim), which
    keeps its parameter count per layer independent of the head count; the fixed maps have d_φ = head_dim.
    """

    def __init__(self, name: str, head_dim: int, feature_dim: int | None = None):
        super().__init__()
        self.name = name
        if name == "mlp":
            self.out_dim = feature_dim or head_dim
            self.weight = nn.Parameter(torch.randn(self.out_dim, head_dim) * math.sqrt(2.0 / head_dim))
            self.bias = nn.Parameter(torch.zeros(self.out_dim))
            self._fn = None
        else:
            self.out_dim = head_dim
            self._fn = _FIXED[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is not None:
            return self._fn(x)
        return F.relu(F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype)))

    def extra_repr(self) -> str:
        return f"{self.name}, out_dim={self.out_dim}"
