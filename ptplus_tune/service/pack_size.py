"""How many Prefix-Tuning+ trials share one base model: `--pack K` or `--pack auto` (`resources.pack` in a space).

`auto` on CPU is a rule of the space (max_concurrent: a node's concurrent trials share one base model; the same
throughput with less memory, bench/packing.py). On a GPU it is measured: as many trials as fit in a GPU's free memory
beside the base model. Importing this module loads neither Ray nor torch (the CLI plans a study without them).
"""

from __future__ import annotations

import logging

from ptplus_tune.errors import PTPlusError

log = logging.getLogger(__name__)
AUTO_MAX_PACK = 16


def resolve_pack(spec, requested: str | None, *, measure: bool) -> bool:
    """Set `spec.resources.pack` from `--pack` (a number, `auto` or None: the space's). `measure`: Ray is connected,
    so `auto` on a GPU can be measured now. Returns True while a GPU's `auto` still waits for that measurement (its
    plan then says so); call again with `measure=True` once connected."""
    if requested is None:
        return False
    if requested != "auto":
        try:
            spec.resources.pack = int(requested)
        except ValueError:
            raise PTPlusError(f"--pack takes a whole number of trials or auto, got {requested!r}") from None
        return False
    if spec.resources.gpus == 0:
        spec.resources.pack = spec.max_concurrent
        return False
    if not measure:
        return True
    spec.resources.pack = gpu_pack(spec)
    return False


def trial_bytes(model_config, batch_size: int, max_length: int, bytes_per_value: int = 2) -> int:
    """A generous estimate of one packed trial's activation memory: per token and layer, ~12 hidden-wide and 3
    MLP-wide values (what autograd keeps for a frozen decoder layer's backward: measured 10.5 and 3 on CPU for
    SmolLM2), times 1.5 for the step's temporaries."""
    hidden = model_config.hidden_size
    mlp = getattr(model_config, "intermediate_size", None) or 4 * hidden
    layers = model_config.num_hidden_layers
    return int(batch_size * max_length * layers * (12 * hidden + 3 * mlp) * bytes_per_value * 1.5)


def pack_size(free_bytes: int, weight_bytes: int, per_trial_bytes: int) -> int:
    """`--pack auto` on a GPU: as many trials as fit in 90% of the free memory after the base model's weights,
    at least 1, at most AUTO_MAX_PACK."""
    return max(1, min(AUTO_MAX_PACK, int((0.9 * free_bytes - weight_bytes) // max(per_trial_bytes, 1))))


def _gpu_room(model: str | None, batch_size: int, max_length: int) -> tuple[int, int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptplus_tune.data.models import resolve_model

    source, gguf_file = resolve_model(model)
    config = AutoConfig.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    free, _ = torch.cuda.mem_get_info()
    return free, parameters * 2, trial_bytes(config, batch_size, max_length)  # bf16 weights


def gpu_pack(spec) -> int:
    """K for `--pack auto` on a GPU: `pack_size` from the free memory of a GPU of the cluster (a task that waits for
    one, so an autoscaling cluster starts a GPU worker) and the base model's shape. Ray must be connected."""
    import ray

    trial = spec.trial
    room = ray.remote(num_gpus=1, num_cpus=0)(_gpu_room)
    free, weights, per_trial = ray.get(room.remote(trial.get("model"), int(trial.get("batch_size", 4)),
                                                   int(trial.get("max_length", 96))))
    k = pack_size(free, weights, per_trial)
    log.info("--pack auto: %d trials per GPU (%.1f GiB free, base model %.1f GiB, ~%.2f GiB per trial)", k,
             free / 2**30, weights / 2**30, per_trial / 2**30)
    return k
