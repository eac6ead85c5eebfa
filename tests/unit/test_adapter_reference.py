"""The adapted model against an independent hand-written forward pass (explicit softmax attention + φ(q)ᵀM)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ptplus_tune.adapter import FEATURE_MAPS, MEMORIES, PTPlusConfig, get_ptplus_model
from tests.tiny_models import randomise_adapter, tiny_gpt2, tiny_llama

PHI = {
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "elu_plus_one": lambda x: torch.where(x > 0, x + 1, torch.exp(x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "relu": lambda x: x.clamp_min(0),
    "identity": lambda x: x,
}


def phi(name, layer, x):
    if name == "mlp":
        fm = layer.feature_map
        return (x @ fm.weight.double().T + fm.bias.double()).clamp_min(0)
    return PHI[name](x)


def memory_of(name, layer):
    """M_h from the raw parameters: φ(K)ᵀV for slots, the free matrix for full."""
    if layer.memory == "slots":
        return phi(name, layer, layer.slot_keys.double()).transpose(1, 2) @ layer.slot_values.double()
    return layer.memory_matrix.double()


def softmax_attention(q, k, v, scale):
    """q: [H, s, d], k/v: [H, s, d], causal."""
    s = q.shape[1]
    scores = (q @ k.transpose(1, 2)) * scale
    scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(scores, -1) @ v


def memory_term(name, layer, q_pre_rotary):
    """φ(q_i)ᵀ M_h per head: q [H, s, d] → [H, s, d]."""
    return phi(name, layer, q_pre_rotary) @ memory_of(name, layer)


def llama_reference(model, adapter_layers, feature_map, ids):
    cfg, W = model.config, {k: v.double() for k, v in model.state_dict().items()}
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // H
    s = ids.shape[0]

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    inv_freq = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(x):
        rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + rotated * sin

    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(s, H, d).transpose(0, 1)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(s, Hkv, d).transpose(0, 1)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(s, Hkv, d).transpose(0, 1)
        groups = H // Hkv
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        out = softmax_attention(rope(q), rope(k), v, d**-0.5)
        if str(i) in adapter_layers:
            out = out + memory_term(feature_map, adapter_layers[str(i)], q)
        x = x + out.transpose(0, 1).reshape(s, H * d) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        mlp = F.silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ W[p + "mlp.down_proj.weight"].T
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T


def gpt2_reference(model, adapter_layers, feature_map, ids):
    cfg, W = model.config, {k: v.double() for k, v in model.state_dict().items()}
    H, E = cfg.n_head, cfg.n_embd
    d, s = E // H, ids.shape[0]

    def ln(x, p):
        return F.layer_norm(x, (E,), W[p + ".weight"], W[p + ".bias"], cfg.layer_norm_epsilon)

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][:s]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        qkv = ln(x, p + "ln_1") @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = (t.view(s, H, d).transpose(0, 1) for t in qkv.split(E, -1))
        out = softmax_attention(q, k, v, d**-0.5)
        if str(i) in adapter_layers:
            out = out + memory_term(feature_map, adapter_layers[str(i)], q)
        x = x + out.transpose(0, 1).reshape(s, E) @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = gelu_new(ln(x, p + "ln_2") @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ W["transformer.wte.weight"].T


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_adapted_logits_match_hand_written_reference(arch, feature_map, memory):
    base, reference = (tiny_llama(), llama_reference) if arch == "llama_gqa" else (tiny_gpt2(), gpt2_reference)
    ids = torch.randint(3, 97, (11,), generator=torch.Generator().manual_seed(5))
    base_logits = base(ids[None]).logits[0]
    model = get_ptplus_model(base, PTPlusConfig(feature_map=feature_map, memory=memory, prefix_length=5,
                                                feature_dim=6 if feature_map == "mlp" else None))
    randomise_adapter(model)
    with torch.no_grad():
        got = model(ids[None]).logits[0].double()
        want = reference(base, model.ptplus_layers, feature_map, ids)
    assert (got - base_logits).abs().max() > 1e-2, "random adapter weights should change the logits"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_without_adapter_matches_base_model():
    base = tiny_llama()
    ids = torch.arange(3, 14)
    torch.testing.assert_close(base(ids[None]).logits[0].double(), llama_reference(base, {}, "elu", ids),
                               atol=1e-5, rtol=1e-5)
