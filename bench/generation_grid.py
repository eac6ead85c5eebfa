"""Which signal should ASHA's lower rungs judge in a generative study: validation `eval_loss` (teacher-forced, one
forward pass per example) or exact match (greedy decoding), on the whole validation split or a fixed subset?

Trains a Prefix-Tuning+ grid on the embedded generative task with the `generate` space's trial settings, evaluates
every configuration at the space's rungs and at the end with both signals (each validation example's exact match is
stored, so any leading subset can be scored later) and the time each took.
Resumable like bench/grid.py: finished configurations are appended atomically to a versioned data file.
`--analyse` prints, per rung and signal, the Spearman rank correlation with the final validation exact match (what
picks the champion), whether the rung's top third holds the final best, and each signal's evaluation time.

    python bench/generation_grid.py            # bench/data/generation_grid_v1.json (about 12 minutes alone on 2 cores)
    python bench/generation_grid.py --analyse  # the table, from the data file only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grid import save  # the atomic writer of the classification grid
from search_efficiency import spearman

GRID_FILE = Path(__file__).with_name("data") / "generation_grid_v1.json"
GRID = {"feature_map": ["elu", "gelu"], "prefix_length": [4, 32], "learning_rate": [3e-4, 3e-3]}  # 8: ~12 min
SPACE = "generate"
SUBSETS = (20,)  # leading validation examples scored as the cheap exact-match signal


def configurations() -> list[dict]:
    keys = sorted(GRID)
    return [dict(zip(keys, values)) for values in itertools.product(*(GRID[k] for k in keys))]


def key(config: dict) -> str:
    return json.dumps({k: config[k] for k in sorted(GRID)}, sort_keys=True)


def settings() -> tuple[dict, list[int]]:
    """The generate space's fixed trial settings and its rungs (evaluation points below max_steps)."""
    from ptplus_tune.spaces import load_space

    spec = load_space(SPACE)
    fixed = {p.name: p.value for p in spec.parameters if p.type == "fixed"}
    return {**spec.trial, **fixed, "eval_test": False}, spec.rungs


def measure(model, task, pairs) -> dict:
    """Both signals on these pairs, each with its wall time."""
    from ptplus_tune.trial.generate import completion_loss, greedy_completions

    model.eval()
    started = time.perf_counter()
    loss = completion_loss(model, task.encoder, pairs, task.config.eval_batch_size, task.device)
    loss_s = time.perf_counter() - started
    started = time.perf_counter()
    predictions = greedy_completions(model, task.encoder, pairs, task.max_new_tokens, task.config.eval_batch_size,
                                     task.device)
    decode_s = time.perf_counter() - started
    model.train()
    scores = [task.scorer(p, pair.completion) for p, pair in zip(predictions, pairs)]
    return {"loss": loss, "scores": scores, "loss_s": round(loss_s, 2), "decode_s": round(decode_s, 2)}


def train(config: dict, fixed: dict, rungs: list[int], base) -> dict:
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.train import TrialSession

    trial = TrialConfig.from_dict({**fixed, **config, "eval_steps": rungs})
    session = TrialSession(trial, base=base)
    points = []
    while not session.done:
        while not session.after_step(session.train_step()):
            pass
        point = measure(session.model, session.kind, session.splits.validation)
        points.append({"step": session.step, "train_loss": session.train_loss, **point})
    return {"points": points}


def analyse(table: dict) -> str:
    runs = table["runs"]
    final = [statistics.mean(r["points"][-1]["scores"]) for r in runs]
    best = max(final)
    keep = max(1, len(runs) // 3)  # ASHA with reduction factor 3 promotes the top third
    lines = [f"{len(runs)} configurations of {key(GRID)}; settings of the `{SPACE}` space; final = validation exact "
             f"match at step {runs[0]['points'][-1]['step']}, what picks the champion (best {best:.1%}, median "
             f"{statistics.median(final):.1%})", "",
             "| step | signal | Spearman with final | top third holds the final best | mean eval time (s) |",
             "|---|---|---|---|---|"]
    signals = {"eval_loss (all validation)": (lambda p: -p["loss"], "loss_s"),
               "exact match (all validation)": (lambda p: statistics.mean(p["scores"]), "decode_s")}
    for n in SUBSETS:
        signals[f"exact match (first {n})"] = (lambda p, n=n: statistics.mean(p["scores"][:n]), "decode_s")
    for i, point in enumerate(runs[0]["points"][:-1]):
        for name, (value, seconds) in signals.items():
            values = [value(r["points"][i]) for r in runs]
            top = sorted(range(len(runs)), key=lambda j: values[j], reverse=True)[:keep]
            holds = any(final[j] == best for j in top)
            fraction = 1.0
            if "first" in name:  # decoding time scales with the examples decoded
                fraction = int(name.split("first ")[1].rstrip(")")) / len(runs[0]["points"][i]["scores"])
            mean_s = statistics.mean(r["points"][i][seconds] for r in runs) * fraction
            lines.append(f"| {point['step']} | {name} | {spearman(values, final):+.2f} | {'yes' if holds else 'no'} "
                         f"| {mean_s:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=GRID_FILE)
    parser.add_argument("--limit", type=int, help="train at most this many new configurations")
    parser.add_argument("--analyse", action="store_true", help="print the table from the data file and stop")
    args = parser.parse_args()
    table = json.loads(args.out.read_text()) if args.out.is_file() else None
    if args.analyse:
        if not table or not table["runs"]:
            print(f"error: {args.out} holds no configurations yet", file=sys.stderr)
            return 2
        print(analyse(table))
        return 0

    from ptplus_tune.data import load_base_model
    from ptplus_tune.trial.device import pick_device

    fixed, rungs = settings()
    table = table or {"version": 1, "grid": GRID, "settings": fixed, "rungs": rungs, "runs": []}
    if table["grid"] != GRID or table["settings"] != fixed:
        print(f"error: {args.out} was made with other settings; move it away or write to --out", file=sys.stderr)
        return 2
    done = {key(run["config"]) for run in table["runs"]}
    todo = [c for c in configurations() if key(c) not in done][:args.limit]
    device, dtype = pick_device("auto")
    print(f"{len(done)} of {len(configurations())} configurations in {args.out}; training {len(todo)} on {device} "
          f"({os.cpu_count()} CPUs)", file=sys.stderr, flush=True)
    for i, config in enumerate(todo, 1):
        started = time.perf_counter()
        run = train(config, fixed, rungs, load_base_model(fixed.get("model"), device=str(device), dtype=dtype))
        table["runs"].append({"config": config, **run, "seconds": round(time.perf_counter() - started, 1)})
        save(table, args.out)
        print(f"[{i}/{len(todo)}] {key(config)}: final validation exact match "
              f"{statistics.mean(run['points'][-1]['scores']):.3f} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
