"""Train-step time and memory of Prefix-Tuning+ against the floor, PEFT LoRA and PEFT Prefix-Tuning.

All variants share one Llama-shaped model (SmolLM2-135M's shape by default, random weights) and one batch, and are
timed in interleaved rounds in a single run, so the printed ratios are robust to a noisy machine.

Floor: the frozen base model's forward + backward with the gradient taken w.r.t. the input embeddings, which is the
least any adapter's step can cost. Memory: on CUDA, peak allocated bytes during the step; on CPU (no allocator
statistics), the bytes autograd saves for the backward pass, the part of a step's memory that an adapter changes.

    python bench/adapter_overhead.py                 # 30 layers, hidden 576, batch 4 x 256
    python bench/adapter_overhead.py --layers 4 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch
from model_shape import add_shape_arguments, random_llama

from ptplus_tune.adapter import FEATURE_MAPS, build_adapter


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    return parser.parse_args()


def variants(prefix_length: int) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {"floor": None, "lora r=8 (q,v)": {"method": "lora", "lora_r": 8, "lora_alpha": 16}}
    out["prefix_tuning 16"] = {"method": "prefix_tuning", "prefix_length": 16}
    for fm in FEATURE_MAPS:
        out[f"ptplus {fm}"] = {"method": "ptplus", "feature_map": fm, "prefix_length": prefix_length}
    return out


class Step:
    """One training step of one variant, with its own model copy and optimizer."""

    def __init__(self, base, hyperparameters, embeds, labels):
        self.floor = hyperparameters is None
        # Every variant shares the base's (frozen) weight tensors: one copy of the model in memory, not ten.
        clone = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})
        self.model = clone if self.floor else build_adapter(clone, hyperparameters)
        if self.floor:
            self.model.requires_grad_(False)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
        self.embeds, self.labels = embeds, labels

    def __call__(self):
        embeds = self.embeds.detach().requires_grad_(self.floor)
        loss = self.model(inputs_embeds=embeds, labels=self.labels).loss
        loss.backward()
        if self.optimizer:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def saved_bytes(self) -> int:
        """Bytes of activations autograd keeps for backward in one forward (each storage once, weights excluded)."""
        weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self()  # a whole step: backward releases the graph
        return sum(seen.values())


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    args = parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                           else torch.float32)
    torch.manual_seed(0)
    base = random_llama(args, max(2048, args.seq)).to(device=args.device, dtype=dtype)
    config = base.config
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)
    embeds = base.get_input_embeddings()(ids).detach()
    steps = {name: Step(base, hp, embeds, ids) for name, hp in variants(args.prefix_length).items()}
    del base
    print(f"device={args.device} dtype={dtype} layers={args.layers} hidden={args.hidden} heads={args.heads}/"
          f"{args.kv_heads} batch={args.batch}x{args.seq} rounds={args.rounds}", flush=True)

    memory = {}
    for name, step in steps.items():
        step()  # warm-up (allocations, lazy init)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            step()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            memory[name] = step.saved_bytes()

    # Rounds in a fresh random order each; ratios are taken within a round (same machine state), then the median
    # over rounds, so drifts in machine load cancel out.
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for name in order:
            sync(args.device)
            start = time.perf_counter()
            steps[name]()
            sync(args.device)
            times[name].append(time.perf_counter() - start)

    def ratio(name: str, reference: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times[reference]))

    lora = "lora r=8 (q,v)"
    mem_label = "peak MB" if args.device.startswith("cuda") else "saved-for-bw MB"
    print(f"\n| variant | median step ms | × floor | × LoRA | {mem_label} | mem × LoRA |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in steps:
        print(f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {ratio(name, 'floor'):.3f} | "
              f"{ratio(name, lora):.3f} | {memory[name] / 2**20:.1f} | {memory[name] / memory[lora]:.3f} |")

if __name__ == "__main__":
    main()
