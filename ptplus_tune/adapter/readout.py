"""The memory read-out φ(q)ᵀM as one autograd Function with a hand-written backward.

Autograd would keep q and φ(q) (elu, gelu), and for slots also the scores φ(q)φ(K)ᵀ, for every layer; this keeps
only q, recomputes φ(q) (one elementwise pass; plus one small matmul for the scores) in backward, and never re-runs
the output matmul. That puts PT+'s activation memory below LoRA's (r=8 on q, v) without a checkpointing wrapper's
cost. Shapes: query [H, N, d]; slots: keys [H, p, d_φ] (already φ-mapped), values [H, p, d]; full: memory
[H, d_φ, d]. Gradients are checked against plain autograd in the tests.
"""

from __future__ import annotations

import torch

from ptplus_tune.adapter.feature_maps import activation, activation_grad, preactivation


class MemoryReadout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, name, weight, bias, memory, keys, values):
        phi = activation(name, preactivation(name, query, weight, bias))
        out = torch.matmul(torch.matmul(phi, keys.transpose(1, 2)), values) if keys is not None \
            else torch.matmul(phi, memory)
        ctx.name = name
        ctx.save_for_backward(query, weight, bias, memory, keys, values)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, weight, bias, memory, keys, values = ctx.saved_tensors
        name = ctx.name
        pre = preactivation(name, query, weight, bias)
        phi = activation(name, pre)
        d_memory = d_keys = d_values = d_weight = d_bias = None
        if keys is not None:
            scores = torch.matmul(phi, keys.transpose(1, 2))
            if ctx.needs_input_grad[6]:
                d_values = torch.matmul(scores.transpose(1, 2), grad)
            d_scores = torch.matmul(grad, values.transpose(1, 2))
            if ctx.needs_input_grad[5]:
                d_keys = torch.matmul(d_scores.transpose(1, 2), phi)
            d_phi = torch.matmul(d_scores, keys)
        else:
            if ctx.needs_input_grad[4]:
                d_memory = torch.matmul(phi.transpose(1, 2), grad)
            d_phi = torch.matmul(grad, memory.transpose(1, 2))
        d_pre = activation_grad(name, pre, d_phi)
        if name == "mlp":
            flat_pre, flat_query = d_pre.reshape(-1, d_pre.shape[-1]), query.reshape(-1, query.shape[-1])
            if ctx.needs_input_grad[2]:
                d_weight = torch.matmul(flat_pre.t(), flat_query)
            if ctx.needs_input_grad[3]:
                d_bias = flat_pre.sum(0)
            d_query = torch.matmul(d_pre, weight) if ctx.needs_input_grad[0] else None
        else:
            d_query = d_pre if ctx.needs_input_grad[0] else None
        return d_query, None, d_weight, d_bias, d_memory, d_keys, d_values
