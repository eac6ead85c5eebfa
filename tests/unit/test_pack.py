"""Packed training: several Prefix-Tuning+ adapters on one base model give each the outputs, gradients, losses and
metrics it would get alone."""

import pytest
import torch

from ptplus_tune.adapter import PTPlusConfig, get_ptplus_model
from ptplus_tune.adapter.packed import PackedPTPlus
from ptplus_tune.data import load_base_model
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial import TrialConfig, run_trial
from ptplus_tune.trial.host import ModelHost
from ptplus_tune.trial.pack import TrialPack, run_packed
from tests.tiny_models import randomise_adapter, tiny_gpt2, tiny_llama, tiny_mistral, tiny_qwen2, tiny_qwen3

SHAPES = [tiny_llama, tiny_mistral, tiny_qwen2, tiny_qwen3, tiny_gpt2]
MIXED = [PTPlusConfig("elu", "slots", 3), PTPlusConfig("mlp", "full", 5, feature_dim=6),
         PTPlusConfig("gelu", "slots", 7, layers=[1]), PTPlusConfig("elu_plus_one", "full", 2)]
TIMING = {"tokens_per_s", "peak_mem_mb", "train_step_ms"}


@pytest.mark.parametrize("make", SHAPES)
def test_each_sample_goes_through_its_own_adapter(make):
    pack = PackedPTPlus(make())
    adapters = []
    for index, config in enumerate(MIXED):
        torch.manual_seed(index)
        adapters.append(pack.add(PTPlusConfig.from_dict(config.to_dict())))
        randomise_adapter(adapters[-1], seed=index + 1)
    ids = torch.randint(3, 97, (2 * len(MIXED), 9))
    with pack.routed([(adapter, 2) for adapter in adapters]):
        packed = pack.base_model(input_ids=ids).logits
    packed.square().sum().backward()
    for index, config in enumerate(MIXED):
        torch.manual_seed(index)
        alone = get_ptplus_model(make(), PTPlusConfig.from_dict(config.to_dict()))
        randomise_adapter(alone, seed=index + 1)
        logits = alone(input_ids=ids[2 * index:2 * index + 2]).logits
        logits.square().sum().backward()
        torch.testing.assert_close(packed[2 * index:2 * index + 2], logits)  # fp32; summation order differs
        mine = dict(adapters[index].named_parameters())
        theirs = {n: p for n, p in alone.named_parameters() if p.requires_grad}
        assert mine.keys() == theirs.keys()  # same names: checkpoints move between packed and unpacked
        for name in mine:
            torch.testing.assert_close(mine[name].grad, theirs[name].grad, rtol=1e-4, atol=1e-4)


def test_an_adapter_alone_is_the_base_model_plus_its_memory_and_the_base_stays_clean():
    base = tiny_llama()
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    pack = PackedPTPlus(base)
    adapter = pack.add(PTPlusConfig("elu", "slots", 4))
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=ids).logits, plain, rtol=0, atol=0)  # fresh: M = 0
        randomise_adapter(adapter)
        assert not torch.allclose(adapter(input_ids=ids).logits, plain)
        torch.testing.assert_close(base(input_ids=ids).logits, plain, rtol=0, atol=0)  # unrouted: no adapter
    assert adapter.unload() is base and pack.adapters == []
    with pytest.raises(ValueError, match="not in this pack"), pack.routed([(adapter, 2)]):
        pass


def _comparable(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def _assert_same_history(packed, alone):
    assert [m["step"] for m in packed] == [m["step"] for m in alone]
    for mine, theirs in zip(_comparable(packed), _comparable(alone)):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("rows_per_pass, concurrent_passes", [(None, 1), (2, 1), (2, 2)])
def test_packed_trials_train_exactly_as_alone(tiny_trial, rows_per_pass, concurrent_passes):
    """A pack mixing feature maps, memories, prefix lengths, learning rates, batch sizes, gradient accumulation,
    seeds and lengths (trials leave the pack at different steps); in one pass per step, and with micro-batches split
    over passes of 2 rows, one at a time or two at a time in threads."""
    settings = [dict(feature_map="elu", prefix_length=3),
                dict(feature_map="mlp", memory="full", feature_dim=6, learning_rate=5e-3, seed=1),
                dict(feature_map="gelu", prefix_length=9, grad_accum=2, batch_size=3, max_steps=8),
                dict(feature_map="identity", memory="full", learning_rate=1e-2, eval_test=True, seed=2)]
    configs = [TrialConfig(**{**tiny_trial, **s}) for s in settings]
    host = ModelHost()
    packed = run_packed(configs, host, rows_per_pass, concurrent_passes)
    assert host.model_loads == 1
    base = load_base_model(tiny_trial["model"])
    for config, result in zip(configs, packed):
        alone = run_trial(config, base=base)
        _assert_same_history(result.history, alone.history)
        for name, value in alone.model.adapter_state_dict().items():
            torch.testing.assert_close(result.model.adapter_state_dict()[name], value, rtol=1e-4, atol=1e-6)
        alone.model.unload()


def test_a_packed_checkpoint_resumes_unpacked_and_the_other_way(tiny_trial, tmp_path):
    config = TrialConfig(**{**tiny_trial, "feature_map": "gelu", "seed": 3})
    trial_pack = TrialPack()
    session = trial_pack.attach("a", config)
    trial_pack.attach("b", TrialConfig(**{**tiny_trial, "seed": 4}))
    while not trial_pack.step(["a", "b"]):
        pass
    session.save(tmp_path / "packed")
    rest_packed = []
    while not session.done:
        rest_packed += trial_pack.step(["a"]).values()
    resumed = run_trial(config, resume_from=str(tmp_path / "packed"))
    _assert_same_history(rest_packed, resumed.history)

    other = TrialPack()
    back = other.attach("c", config)
    back.restore(tmp_path / "packed")
    rest = []
    while not back.done:
        rest += other.step(["c"]).values()
    _assert_same_history(rest, resumed.history)


@pytest.mark.parametrize("make", SHAPES)
def test_bf16_compute_keeps_the_adapters_and_their_gradients_in_fp32(make):
    pack = PackedPTPlus(make().to(torch.bfloat16))
    adapters = [pack.add(config) for config in MIXED[:2]]
    for adapter in adapters:
        randomise_adapter(adapter)
    with pack.routed([(adapter, 2) for adapter in adapters]):
        logits = pack.base_model(input_ids=torch.randint(3, 97, (4, 6))).logits
    assert logits.dtype == torch.bfloat16
    logits.float().square().mean().backward()
    for adapter in adapters:
        for parameter in adapter.parameters():
            assert parameter.dtype == torch.float32 and parameter.grad.dtype == torch.float32
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_pack_auto_rule():
    from transformers import LlamaConfig

    from ptplus_tune.service.pack_size import AUTO_MAX_PACK, pack_size, trial_bytes

    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    per_trial = trial_bytes(smollm2, batch_size=4, max_length=96)
    assert 300e6 < per_trial < 500e6  # bf16; generous against ~175 MB measured in fp32/2 on CPU
    assert pack_size(free_bytes=139 * 2**30, weight_bytes=270e6, per_trial_bytes=per_trial) == AUTO_MAX_PACK
    assert pack_size(free_bytes=3 * 2**30, weight_bytes=270e6, per_trial_bytes=per_trial) == 6
    assert pack_size(free_bytes=20 * 2**30, weight_bytes=16e9, per_trial_bytes=3e9) == 1  # an 8B model on 24 GB


def test_pack_flag_is_decided_in_one_place():
    from ptplus_tune.service.pack_size import resolve_pack
    from ptplus_tune.spaces import load_space

    spec = load_space("default")
    spec.max_concurrent = 3
    assert resolve_pack(spec, None, measure=False) is False and spec.resources.pack == 1  # the space's
    assert resolve_pack(spec, "4", measure=False) is False and spec.resources.pack == 4
    assert resolve_pack(spec, "auto", measure=False) is False and spec.resources.pack == 3  # CPU: max_concurrent
    spec.resources.gpus, spec.resources.pack = 1, 1
    assert resolve_pack(spec, "auto", measure=False) is True and spec.resources.pack == 1  # a GPU: measured later
    with pytest.raises(PTPlusError, match="--pack takes a whole number of trials or auto, got 'many'"):
        resolve_pack(spec, "many", measure=False)


def test_only_ptplus_trials_pack(tiny_trial):
    with pytest.raises(PTPlusError, match="only Prefix-Tuning\\+ trials can be packed"):
        TrialPack().attach("x", TrialConfig(**{**tiny_trial, "method": "lora"}))


def test_concurrent_passes_share_the_threads_and_leave_the_callers_setting(tiny_trial):
    """Each pass runs in its own thread on its share of the caller's torch threads: with room for 4 passes but only
    2 to run (two trials, a micro-batch per pass), each gets 2 of 4 threads."""
    import threading

    trial_pack = TrialPack(rows_per_pass=tiny_trial["batch_size"], concurrent_passes=4)
    trial_pack.attach("a", TrialConfig(**tiny_trial))
    trial_pack.attach("b", TrialConfig(**{**tiny_trial, "seed": 1}))
    seen = []
    trial_pack.pack.base_model.register_forward_pre_hook(
        lambda *_: seen.append((threading.current_thread().name, torch.get_num_threads())))
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        trial_pack.step(["a", "b"])
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 2 and all(name.startswith("pack-pass") and threads == 2 for name, threads in seen), seen
    trial_pack.detach("a")
    assert any(t.name.startswith("pack-pass") for t in threading.enumerate())  # "b" still trains
    trial_pack.detach("b")
    assert not any(t.name.startswith("pack-pass") for t in threading.enumerate())  # an empty pack holds no threads


def test_a_trial_that_leaves_frees_its_slot(tiny_trial):
    trial_pack = TrialPack()
    trial_pack.attach("a", TrialConfig(**tiny_trial))
    trial_pack.attach("b", TrialConfig(**tiny_trial))
    trial_pack.step(["a", "b"])
    trial_pack.detach("a")
    assert list(trial_pack.sessions) == ["b"] and len(trial_pack.pack.adapters) == 1
    trial_pack.step(["b"])


@pytest.mark.embedded
def test_packed_trials_on_the_embedded_model_train_exactly_as_alone(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PTPLUS_TUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    common = dict(max_steps=4, eval_every=2, k_shot=2, validation_size=12, test_size=5, max_length=48)
    configs = [TrialConfig(**common, feature_map="elu", learning_rate=1e-3),
               TrialConfig(**common, feature_map="mlp", memory="full", learning_rate=3e-4, seed=1)]
    host = ModelHost()
    packed = run_packed(configs, host)
    for config, result in zip(configs, packed):
        alone = run_trial(config, base=host.base(None, torch.device("cpu"), torch.float32))
        _assert_same_history(result.history, alone.history)
        alone.model.unload()
