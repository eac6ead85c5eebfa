"""Prefix-Tuning+ adapter behaviour: exact identity at init, frozen base, save/load, KV cache, learning, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

from ptplus_tune.adapter import (
    FEATURE_MAPS,
    MEMORIES,
    PTPlusConfig,
    PTPlusModel,
    build_adapter,
    count_trainable_parameters,
    get_ptplus_model,
)
from ptplus_tune.errors import PTPlusError
from tests.tiny_models import VOCAB, randomise_adapter, tiny_gpt2, tiny_llama, tiny_mistral, tiny_qwen2, tiny_qwen3

ARCHS = {"llama_gqa": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gpt2": tiny_gpt2}
IDS = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_fresh_adapter_is_exactly_the_base_model(feature_map, memory, arch):
    base = ARCHS[arch]()
    with torch.no_grad():
        expected = base(IDS).logits
        model = get_ptplus_model(base, PTPlusConfig(feature_map=feature_map, memory=memory, prefix_length=4))
        assert torch.equal(model(IDS).logits, expected)
    for m in model.effective_memory().values():
        assert torch.count_nonzero(m) == 0


def test_unload_removes_the_hooks_and_returns_the_untouched_base():
    base = tiny_llama()
    with torch.no_grad():
        expected = base(IDS).logits
        model = get_ptplus_model(base, PTPlusConfig(prefix_length=4))
        randomise_adapter(model)
        assert not torch.equal(model(IDS).logits, expected)
        assert torch.equal(model.unload()(IDS).logits, expected)


def test_effective_memory_shape_and_slot_rank():
    model = get_ptplus_model(tiny_llama(), PTPlusConfig(feature_map="mlp", feature_dim=5, prefix_length=3))
    randomise_adapter(model)
    memory = model.effective_memory()
    assert sorted(memory) == [0, 1]
    assert memory[0].shape == (4, 5, 8)  # [query heads (not kv heads), d_φ, head_dim]
    assert all(torch.linalg.matrix_rank(m) <= 3 for m in memory[0])  # prefix length bounds the rank


def test_only_adapter_parameters_train_and_base_stays_bit_identical():
    model = get_ptplus_model(tiny_llama(), PTPlusConfig(feature_map="mlp", prefix_length=4))
    before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(IDS, labels=IDS).loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("ptplus_layers."), name
    for name, value in model.base_model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.ptplus_layers.parameters())


def _plain_autograd_readout(layer, query):
    """φ(q)ᵀM with ordinary autograd ops, the reference for the hand-written backward."""
    q = query.reshape(-1, layer.num_heads, layer.head_dim).transpose(0, 1)
    out = torch.matmul(layer.feature_map(q), layer.effective_memory())
    return out.transpose(0, 1).reshape(*query.shape[:-2], -1)


@pytest.mark.parametrize("prefix_length", [2, 16])  # slots: factorised (p small) and via M
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_hand_written_backward_matches_plain_autograd(feature_map, memory, prefix_length):
    config = PTPlusConfig(feature_map=feature_map, memory=memory, prefix_length=prefix_length, feature_dim=6)
    layer = get_ptplus_model(tiny_llama(), config).ptplus_layers["0"].double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    query = torch.randn(2, 5, 4, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for fn in (layer, lambda q: _plain_autograd_readout(layer, q)):
        out = fn(query)
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), [query, *layer.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prefix_length", [2, 16])
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("feature_map", ["elu", "mlp"])
def test_without_autograd_the_memory_is_derived_once_per_parameter_state(feature_map, memory, prefix_length):
    """Decoding calls each layer once per token: without autograd the read-out reuses M (or φ(K)) until a parameter
    changes, and gives what computing it afresh gives, before and after an update."""
    config = PTPlusConfig(feature_map=feature_map, memory=memory, prefix_length=prefix_length, feature_dim=6)
    layer = get_ptplus_model(tiny_llama(), config).ptplus_layers["0"]
    query = torch.randn(2, 5, 4, 8)
    for _ in range(2):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))  # an optimizer step (in place)
            reused = [layer(query), layer(query)]
        fresh = layer(query).detach()  # with autograd: computed afresh
        for out in reused:
            torch.testing.assert_close(out, fresh)
    with torch.no_grad():
        derived = layer._frozen
        layer(query)
        assert layer._frozen is derived  # the same parameters: nothing derived again


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_save_and_load_roundtrip_holds_only_adapter_weights(tmp_path, arch):
    model = get_ptplus_model(ARCHS[arch](), PTPlusConfig(feature_map="gelu", memory="slots", prefix_length=3))
    randomise_adapter(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == set(model.ptplus_layers.state_dict())
    assert sum(t.numel() for t in saved.values()) == model.num_trainable_parameters()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["feature_map"] == "gelu"
    loaded = PTPlusModel.from_pretrained(ARCHS[arch](), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert loaded.num_trainable_parameters() == 0  # inference by default


def test_from_pretrained_on_a_folder_without_adapter_says_so(tmp_path):
    with pytest.raises(PTPlusError, match="not a Prefix-Tuning"):
        PTPlusModel.from_pretrained(tiny_llama(), tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decoding_with_kv_cache_equals_full_forward(arch):
    model = get_ptplus_model(ARCHS[arch](), PTPlusConfig(feature_map="elu", prefix_length=4))
    randomise_adapter(model)
    with torch.no_grad():
        full = model(IDS).logits
        out = model(IDS[:, :5], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(5, IDS.shape[1]):
            out = model(IDS[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_cache_matches_greedy_recomputation():
    model = get_ptplus_model(tiny_llama(), PTPlusConfig(prefix_length=4))
    randomise_adapter(model)
    prompt = IDS[:1, :6]
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    ids = prompt
    with torch.no_grad():
        for _ in range(5):  # no cache: the whole sequence every step
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, ids)


def _loss_after_training(model, steps=40, lr=2e-2):
    """A small fixed task: map every token t to (5t + 11) mod V, a content-dependent lookup."""
    torch.manual_seed(0)
    batch = torch.randint(3, VOCAB, (4, 10), generator=torch.Generator().manual_seed(3))
    targets = (batch * 5 + 11) % VOCAB
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(batch).logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_every_feature_map_and_memory_learns(feature_map, memory):
    model = get_ptplus_model(tiny_llama(), PTPlusConfig(feature_map=feature_map, memory=memory, prefix_length=8))
    # elu_plus_one is all-positive, so unnormalised φ(q)·φ(k) scores are large: it needs smaller, more steps.
    slow = feature_map == "elu_plus_one"
    first, last = _loss_after_training(model, steps=60 if slow else 40, lr=5e-3 if slow else 2e-2)
    assert last < 0.7 * first, (first, last)


def test_gpt2_learns():
    first, last = _loss_after_training(get_ptplus_model(tiny_gpt2(), PTPlusConfig(prefix_length=8)))
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("method", ["lora", "prefix_tuning"])
@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_peft_baselines_build_from_the_same_vocabulary_and_learn(method, arch):
    model = build_adapter(ARCHS[arch](), {"method": method, "prefix_length": 6, "lora_r": 4, "learning_rate": 1e-3})
    assert 0 < count_trainable_parameters(model) < 20_000
    first, last = _loss_after_training(model)
    assert last < 0.9 * first, (first, last)  # PEFT's own methods: we only check that our wiring trains them


def test_builder_makes_ptplus_from_flat_hyperparameters():
    model = build_adapter(tiny_llama(), {"method": "ptplus", "feature_map": "relu", "memory": "full",
                                         "prefix_length": 2, "learning_rate": 1e-3})
    assert isinstance(model, PTPlusModel)
    assert model.ptplus_config.memory == "full" and model.ptplus_config.feature_map == "relu"


def test_config_json_round_trip():
    config = PTPlusConfig(feature_map="mlp", memory="full", prefix_length=7, feature_dim=12, layers=[0])
    assert PTPlusConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("bad, message", [
    (dict(feature_map="tanh"), "elu, elu_plus_one, gelu, relu, identity, mlp"),
    (dict(memory="ring"), "slots, full"),
    (dict(prefix_length=0), "prefix_length must be an integer >= 1"),
    (dict(feature_dim=0), "feature_dim must be an integer >= 1"),
])
def test_bad_config_is_one_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        PTPlusConfig(**bad)


def test_unsupported_model_names_the_supported_ones():
    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(ValueError, match="supported: llama, mistral, qwen2, qwen3, gpt2"):
        get_ptplus_model(bert, PTPlusConfig())
    with pytest.raises(ValueError, match="supported: llama"):
        build_adapter(bert, {"method": "lora"})


def test_unknown_method_and_layer_are_clear_errors():
    with pytest.raises(ValueError, match="ptplus, lora, prefix_tuning"):
        build_adapter(tiny_llama(), {"method": "adapterdrop"})
    with pytest.raises(ValueError, match="layers \\[5\\] do not exist"):
        get_ptplus_model(tiny_llama(), PTPlusConfig(layers=[5]))
