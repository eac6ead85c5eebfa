"""Feature maps φ of Prefix-Tuning+: the kernel that replaces softmax for the prefix's attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def preactivation(name: str, query, weight, bias):
    """The feature map's input: the query itself, or Wq + b for the learned `mlp` kernel."""
    return F.linear(query, weight, bias) if name == "mlp" else query


def activation(name: str, x):
    """φ applied to the pre-activation."""
    if name in ("elu", "elu_plus_one"):  # elu: the paper's; elu + 1: the positive kernel of linear attention
        out = F.elu(x)
        return out + 1.0 if name == "elu_plus_one" else out
    if name == "gelu":
        return F.gelu(x)
    if name in ("relu", "mlp"):
        return F.relu(x)
    return x  # identity


def activation_grad(name: str, x, grad):
    """grad · φ'(x), for the hand-written backward of the read-out."""
    if name in ("elu", "elu_plus_one"):
        return torch.where(x > 0, grad, grad * torch.exp(x))
    if name == "gelu":  # d/dx x·Φ(x) = Φ(x) + x·N(x)
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return grad * (cdf + x * pdf)
    if name in ("relu", "mlp"):
        return grad * (x > 0)
    return grad


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
        else:
            self.out_dim = head_dim
            self.weight = self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = (self.weight.to(x.dtype), self.bias.to(x.dtype)) if self.weight is not None else (None, None)
        return activation(self.name, preactivation(self.name, x, weight, bias))

    def extra_repr(self) -> str:
        return f"{self.name}, out_dim={self.out_dim}"
