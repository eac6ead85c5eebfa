"""Greedy decoding time per generated token: a Prefix-Tuning+ adapter against the bare model, PEFT LoRA (unmerged)
and PEFT Prefix-Tuning, on the same prompts and batch, decoded the way the service decodes them
(`trial/generate.py`): batched, left-padded `generate` with the KV cache, except PEFT Prefix-Tuning, whose prefix
transformers 5's `generate` drops, decoded prompt by prompt with a whole forward pass per token.

PT+ keeps the base model's KV cache as it is (its memory read-out is one small matmul per layer on the new token's
query), so its per-token cost should stay near the bare model's (target: <= 1.10x). All variants share one
SmolLM2-shaped model (random weights: the cost does not depend on them) and are timed in shuffled interleaved rounds
in one run; ratios are taken within a round, then the median over rounds.

    python bench/decode_overhead.py                  # 30 layers, batch 4, 64-token prompts, 32 new tokens
    python bench/decode_overhead.py --layers 4 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch
from model_shape import add_shape_arguments, random_llama

from ptplus_tune.adapter import build_adapter
from ptplus_tune.trial.generate import decodes_with_cache

VARIANTS = {
    "bare model": None,
    "ptplus elu 16 slots": {"method": "ptplus", "feature_map": "elu", "prefix_length": 16},
    "ptplus gelu 64 slots": {"method": "ptplus", "feature_map": "gelu", "prefix_length": 64},
    "lora r=8 (q,v), unmerged": {"method": "lora", "lora_r": 8, "lora_alpha": 16},
    "prefix_tuning 16": {"method": "prefix_tuning", "prefix_length": 16},
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--prompt", type=int, default=64, help="tokens of the longest prompt (others shorter)")
    parser.add_argument("--new-tokens", type=int, default=32)
    return parser.parse_args()


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> None:
    """`new_tokens` greedy tokens after each prompt, as trial/generate.py decodes (EOS never ends it early here)."""
    if decodes_with_cache(model):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
        return
    for row, row_mask in zip(ids, mask):
        sequence = row[row_mask.bool()].unsqueeze(0)
        for _ in range(new_tokens):
            logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0, -1]
            sequence = torch.cat([sequence, logits.argmax().view(1, 1)], dim=1)


def main():
    args = parse_args()
    torch.manual_seed(0)
    base = random_llama(args).to(args.device).eval()
    config = base.config
    lengths = [args.prompt - 8 * i for i in range(args.batch)]  # prompts of different lengths: left padding
    ids = torch.zeros(args.batch, args.prompt, dtype=torch.long, device=args.device)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, args.prompt - length:] = torch.randint(1, config.vocab_size, (length,))
        mask[row, args.prompt - length:] = 1
    models = {}
    for name, hyperparameters in VARIANTS.items():
        clone = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})  # shared frozen weights
        model = clone if hyperparameters is None else build_adapter(clone, hyperparameters)
        with torch.no_grad():  # a trained-looking adapter (a fresh PT+ memory is zero, LoRA's B too)
            for parameter in (p for p in model.parameters() if p.requires_grad):
                parameter.copy_(torch.randn_like(parameter) * 0.02)
        models[name] = model.eval()
    print(f"device={args.device} layers={args.layers} hidden={args.hidden} heads={args.heads}/{args.kv_heads} "
          f"batch={args.batch} prompts={lengths} new_tokens={args.new_tokens} rounds={args.rounds} "
          f"threads={torch.get_num_threads()}", flush=True)
    for model in models.values():
        decode(model, ids, mask, 2)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    order, shuffle = list(models), random.Random(0)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for name in order:
            start = time.perf_counter()
            decode(models[name], ids, mask, args.new_tokens)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)

    def ratio(name: str, reference: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times[reference]))

    print("\n| variant | decoding | median ms per generated token (batch) | x bare model | x LoRA |")
    print("|---|---|---:|---:|---:|")
    lora = "lora r=8 (q,v), unmerged"
    for name, model in models.items():
        how = "generate, KV cache" if decodes_with_cache(model) else "whole forwards, per prompt"
        per_token = statistics.median(times[name]) / args.new_tokens * 1e3
        print(f"| {name} | {how} | {per_token:.1f} | {ratio(name, 'bare model'):.3f} | {ratio(name, lora):.3f} |")


if __name__ == "__main__":
    main()
