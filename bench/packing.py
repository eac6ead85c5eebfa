"""Packed trials against one process per trial, with the same total resources, for K = 1, 2, 4, 8 in one run.

Each K trains the same K configurations (mixed feature maps, memories, prefix lengths and learning rates) on the
embedded SmolLM2-135M and BBC News, two ways:
- packed: one process holds the base model once and trains the K adapters as one TrialPack (every step one
  forward/backward over the K concatenated micro-batches), with all the threads (or the whole GPU);
- separate: K processes, one TrialSession each, started together and sharing the threads (each gets threads / K, at
  least one) or the GPU (like K trials at 1/K GPU each).
Both do the same per-trial bookkeeping (optimizer, schedule, loss rules); no evaluation. Each process warms up, waits
for all to be ready, then times `--steps` steps. Throughput: trial-steps per second over the timed window. Memory:
peak RSS (CPU) or peak CUDA allocation (GPU), summed over the processes of a run. Printed: packed / separate ratios
and packed memory / one trial's memory (the separate process at K = 1: one unpacked trial). Targets (CPU): at K = 4,
memory <= 1.3x one trial's and throughput >= 1.0x separate; on a GPU, 8 packed trials >= 4x the throughput of 8
separate ones.

    python bench/packing.py --json bench/data/packing_v1.json        # K = 1 2 4 8, 6 timed steps each
    python bench/packing.py --ks 1 2 --steps 2                         # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIX = [dict(feature_map="elu", prefix_length=16, learning_rate=1e-3),
       dict(feature_map="gelu", prefix_length=8, learning_rate=3e-4),
       dict(feature_map="mlp", memory="full", learning_rate=1e-3),
       dict(feature_map="relu", prefix_length=32, learning_rate=2e-3)]


def trial_configs(k: int, device: str, threads: int):
    from ptplus_tune.trial import TrialConfig

    return [TrialConfig(**MIX[i % len(MIX)], seed=i, max_steps=100_000, device=device, num_threads=threads)
            for i in range(k)]


def worker(args) -> None:
    """One process of a run: warm up, report ready, wait for the go file, time the steps, print a JSON line."""
    import torch

    from ptplus_tune.trial import TrialSession
    from ptplus_tune.trial.pack import TrialPack

    configs = trial_configs(args.k, args.device, args.threads)
    if args.packed:
        trial_pack = TrialPack(rows_per_pass=args.rows_per_pass, concurrent_passes=args.concurrent_passes)
        for i, config in enumerate(configs):
            trial_pack.attach(i, config)
        keys = list(range(args.k))

        def step():
            trial_pack.step(keys)
        device = trial_pack.sessions[0].device
    else:
        session = TrialSession(configs[args.index])

        def step():
            session.after_step(session.train_step())
        device = session.device
    step()  # warm-up: first-touch allocations, kernel selection
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"start": started, "end": time.time(), "trial_steps": args.steps * (args.k if args.packed else 1),
                      "peak_mb": peak}), flush=True)


def run(k: int, packed: bool, steps: int, device: str, threads: int, rows_per_pass: int | None = None,
        concurrent_passes: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs, readies = [], []
        for index in range(1 if packed else k):
            ready = Path(tmp) / f"ready{index}"
            readies.append(ready)
            command = [sys.executable, __file__, "--worker", "--k", str(k), "--index", str(index), "--steps",
                       str(steps), "--device", device, "--threads", str(threads if packed else max(1, threads // k)),
                       "--ready", str(ready), "--go", str(go)] + (["--packed"] if packed else [])
            command += ["--rows-per-pass", str(rows_per_pass)] if rows_per_pass else []
            command += ["--concurrent-passes", str(concurrent_passes)]
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        while not all(r.exists() for r in readies):
            if any(p.poll() not in (None, 0) for p in procs):
                raise SystemExit(f"a worker failed (K={k}, packed={packed})")
            time.sleep(0.05)
        go.touch()
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    window = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"trial_steps_per_s": sum(o["trial_steps"] for o in outs) / window, "seconds": window,
            "peak_mb": sum(o["peak_mb"] for o in outs), "processes": len(outs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps per trial")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads in all")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--rows-per-pass", type=int, default=None,
                        help="packed: rows per forward/backward pass, 0 for all in one (default: what a pack host "
                             "uses on this device: all in one on a GPU, CPU_ROWS_PER_PASS on a CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="packed and separate runs per K, alternating which "
                        "goes first; ratios are the median over rounds [3]")
    parser.add_argument("--concurrent-passes", type=int, default=None,
                        help="packed: passes run at once, each in its own thread with its share of the threads "
                             "(default: what a pack host uses: 1 on a GPU, one per thread on a CPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--packed", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--k", "--index"):
        parser.add_argument(hidden, type=int, default=0, help=argparse.SUPPRESS)
    for hidden in ("--ready", "--go"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        return worker(args)
    from ptplus_tune.data.models import embedded_model_dir
    from ptplus_tune.trial.pack import host_passes

    embedded_model_dir()  # converted from its GGUF once, here: not inside the first timed process's peak memory
    rows_per_pass, concurrent_passes = host_passes(args.device == "cuda", args.threads)
    args.rows_per_pass = rows_per_pass if args.rows_per_pass is None else (args.rows_per_pass or None)
    args.concurrent_passes = args.concurrent_passes or concurrent_passes
    print(f"device {args.device}, {args.threads} threads, {args.steps} timed steps per trial; packed: "
          f"{args.rows_per_pass or 'all'} rows per pass, {args.concurrent_passes} pass(es) at once", flush=True)
    print(f"{args.rounds} round(s) per K; steps/s and ratio: medians over rounds; MB: the largest peak", flush=True)
    print(f"{'K':>2} {'packed steps/s':>14} {'separate':>9} {'ratio':>6} {'packed MB':>10} {'separate MB':>12} "
          f"{'mem vs 1 trial':>14}", flush=True)
    rows, one_trial_mb = [], None
    for k in args.ks:
        rounds = []
        for r in range(args.rounds):  # alternate which goes first: the machine's drift then hits both alike
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {packed: run(k, packed, args.steps, args.device, args.threads, args.rows_per_pass,
                               args.concurrent_passes) for packed in order}
            rounds.append({"packed": got[True], "separate": got[False],
                           "throughput_ratio": got[True]["trial_steps_per_s"] / got[False]["trial_steps_per_s"]})
        packed_mb = max(r["packed"]["peak_mb"] for r in rounds)
        if k == 1:  # one trial alone: one unpacked process
            one_trial_mb = max(r["separate"]["peak_mb"] for r in rounds)
        row = {"k": k, "rounds": rounds,
               "throughput_ratio": statistics.median(r["throughput_ratio"] for r in rounds),
               "packed_steps_per_s": statistics.median(r["packed"]["trial_steps_per_s"] for r in rounds),
               "separate_steps_per_s": statistics.median(r["separate"]["trial_steps_per_s"] for r in rounds),
               "packed_peak_mb": packed_mb, "separate_peak_mb": max(r["separate"]["peak_mb"] for r in rounds),
               "memory_vs_one_trial": packed_mb / one_trial_mb if one_trial_mb else None}
        rows.append(row)
        vs_one = f"{row['memory_vs_one_trial']:.2f}x" if one_trial_mb else "-"
        ratios = ", ".join(f"{r['throughput_ratio']:.2f}x" for r in rounds)
        each = f"  (rounds: {ratios})" if args.rounds > 1 else ""
        print(f"{k:>2} {row['packed_steps_per_s']:>14.3f} {row['separate_steps_per_s']:>9.3f} "
              f"{row['throughput_ratio']:>5.2f}x {packed_mb:>10.0f} {row['separate_peak_mb']:>12.0f} "
              f"{vs_one:>14}{each}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "threads": args.threads, "steps": args.steps,
                                               "rows_per_pass": args.rows_per_pass,
                                               "concurrent_passes": args.concurrent_passes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
