"""Search efficiency, replayed exactly: the real service code path (run_study: Ray Tune + OptunaSearch + ASHA) runs
against the tabulated grid (bench/grid.py) instead of training, and counts the training steps each strategy spends
before some trial reports an eval_accuracy within 1 point (0.01) of the grid's best. Printed as the median over
seeds for TPE+ASHA (the service's default), random+ASHA, TPE and random without early stopping, and the full grid;
plus the rank correlation between early-rung and final accuracy (does ASHA's early judgement hold for PT+?).

    python bench/search_efficiency.py --seeds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

sys.path.insert(0, str(Path(__file__).parent))
import grid  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

from ptplus_tune.service import run_study  # noqa: E402
from ptplus_tune.spaces import parse_space  # noqa: E402

# Trial functions are shipped to Ray workers by pickling; bench/ is not an installed package, so its code must
# travel by value.
for _module in (grid, sys.modules[__name__]):
    if _module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(_module)

TOLERANCE = 0.01
STRATEGIES = {  # name: (sampler, early stopping)
    "TPE + ASHA (default)": ("tpe", True),
    "random + ASHA": ("random", True),
    "TPE, no early stopping": ("tpe", False),
    "random, no early stopping": ("random", False),
}


def curves(table: dict) -> dict[str, list[dict]]:
    return {grid.key(run["config"]): run["curve"] for run in table["runs"]}


def replay_trainable(table_curves: dict[str, list[dict]]):
    def replayed_trial(config):
        for point in table_curves[grid.key(config)]:
            tune.report(dict(point))
    return replayed_trial


class StepCounter(tune.Callback):
    """Training steps spent so far (each trial's last reported step, summed), and when the target was first met."""

    def __init__(self, target: float):
        self.target, self.spent, self.last = target, 0, {}
        self.steps_to_target: int | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.spent += result["step"] - self.last.get(trial.trial_id, 0)
        self.last[trial.trial_id] = result["step"]
        if self.steps_to_target is None and result["eval_accuracy"] >= self.target:
            self.steps_to_target = self.spent


class StopAtTarget(tune.Stopper):
    def __init__(self, counter: StepCounter):
        self.counter = counter

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.counter.steps_to_target is not None


def spec_for(table: dict, sampler: str, early_stopping: bool, seed: int):
    settings = table["settings"]
    steps = settings["max_steps"]
    return parse_space({
        "name": "replay", "metric": "eval_accuracy", "mode": "max", "num_samples": len(table["runs"]),
        "max_concurrent": 1, "seed": seed, "sampler": sampler,
        "scheduler": ({"grace_period": settings["eval_every"], "reduction_factor": 2} if early_stopping
                      else {"type": "none"}),
        "resources": {"cpus": 1, "gpus": 0}, "trial": {"max_steps": steps, "eval_every": settings["eval_every"]},
        "parameters": {name: {"type": "categorical", "choices": values} for name, values in table["grid"].items()},
    }, source="replay")


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):  # average ranks over ties
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=grid.GRID_FILE)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    table = grid.load(args.grid)
    expected = len(grid.configurations())
    if len(table["runs"]) < expected:
        print(f"error: {args.grid} has {len(table['runs'])} of {expected} configurations; run bench/grid.py",
              file=sys.stderr)
        return 2
    table_curves = curves(table)
    finals = {k: c[-1]["eval_accuracy"] for k, c in table_curves.items()}
    best = max(finals.values())
    target = best - TOLERANCE
    steps = table["settings"]["max_steps"]
    print(f"grid: {len(finals)} configurations x {steps} steps; best final eval_accuracy {best:.4f}; target "
          f">= {target:.4f} ({sum(v >= target for v in finals.values())} configurations reach it)")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as storage:
        for name, (sampler, early) in STRATEGIES.items():
            for seed in range(args.seeds):
                counter = StepCounter(target)
                spec = spec_for(table, sampler, early, seed)
                run_study(spec, f"{sampler}-{early}-{seed}", storage, trainable=replay_trainable(table_curves),
                          callbacks=[counter], stop=StopAtTarget(counter))
                results.setdefault(name, []).append(counter.steps_to_target or float("inf"))
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    ray.shutdown()

    full = len(finals) * steps
    print(f"\ntraining steps to reach within {TOLERANCE} of the grid's best eval_accuracy (median of {args.seeds} "
          f"seeds; inf = not reached within {len(finals)} trials)")
    print("| strategy | median steps | of the full grid |\n|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:g} | {median / full:.1%} |")
    print(f"| full grid | {full} | 100.0% |")
    tpe_asha = statistics.median(results["TPE + ASHA (default)"])
    random_plain = statistics.median(results["random, no early stopping"])
    print(f"\ngoal TPE+ASHA <= 25% of the grid: {tpe_asha / full:.1%}; goal random without early stopping >= 2x "
          f"TPE+ASHA: {random_plain / tpe_asha:.2f}x")
    for rung in sorted({p["step"] for c in table_curves.values() for p in c} - {steps}):
        early = [next(p["eval_accuracy"] for p in table_curves[k] if p["step"] == rung) for k in finals]
        print(f"Spearman rank correlation, eval_accuracy at step {rung} vs step {steps}: "
              f"{spearman(early, list(finals.values())):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
