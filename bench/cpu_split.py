"""How to split a machine's CPU cores between trials: one trial with all the threads, or one single-thread trial per
core at the same time. Measures training steps per second (and evaluation time) of both on the embedded model at the
default space's settings, in one run, and prints the throughput ratio. The shipped CPU spaces use the winner
(`resources: {cpus: 1}`, two trials at a time on 2 cores).

    python bench/cpu_split.py                 # all cores of this machine
    python bench/cpu_split.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {"dataset": "bbc_news", "k_shot": 4, "validation_size": 100, "max_length": 96, "batch_size": 4,
            "max_steps": 1000}


def worker(threads: int, steps: int) -> None:
    """One trial: a warm-up step, then `steps` timed training steps and one evaluation; prints JSON."""
    from ptplus_tune.trial import TrialConfig, TrialSession
    from ptplus_tune.trial.evaluate import evaluate

    session = TrialSession(TrialConfig.from_dict({**SETTINGS, "num_threads": threads}))
    session.train_step()
    print("ready", flush=True)
    sys.stdin.readline()  # all workers start timing together
    started = time.perf_counter()
    for _ in range(steps):
        session.train_step()
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate(session.model, session.encoder, session.splits.validation, session.splits.labels,
             session.config.eval_batch_size, session.device)
    print(json.dumps({"train_s": train_s, "eval_s": time.perf_counter() - started}), flush=True)


def run(processes: int, threads: int, steps: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(threads), "--steps", str(steps)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return 0
    whole = run(1, args.cores, args.steps)[0]
    split = run(args.cores, 1, args.steps)
    whole_rate = args.steps / whole["train_s"]
    split_rate = sum(args.steps / r["train_s"] for r in split)
    split_eval = max(r["eval_s"] for r in split) / len(split)  # evaluations per second, as time per evaluation
    print(f"{args.cores} cores, {args.steps} steps each (SmolLM2-135M, batch 4 x 96 tokens, fp32):")
    print(f"  one trial x {args.cores} threads: {whole_rate:.3f} steps/s, one evaluation {whole['eval_s']:.1f} s")
    print(f"  {args.cores} trials x 1 thread:  {split_rate:.3f} steps/s in all, {split_eval:.1f} s per evaluation "
          f"in all")
    print(f"training throughput split / whole = {split_rate / whole_rate:.2f}x; evaluation throughput "
          f"{whole['eval_s'] / split_eval:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
