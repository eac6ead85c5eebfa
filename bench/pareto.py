"""Pareto search strategies, replayed exactly: accuracy against trainable parameters on the tabulated grids,
Prefix-Tuning+ (bench/grid.py, 72 configurations) and the PEFT baselines LoRA and Prefix-Tuning at the same settings
(bench/baselines_grid.py, 24), through the real service path (run_study: Ray Tune + OptunaSearch + the study's
scheduler), each trial serving its stored curve instead of training. The space is conditional as the shipped
`pareto` space is: a method, then its own parameters; prefix length, LoRA rank and learning rate are replayed as
integer levels into each method's grid values (ordered, as the shipped space's log-scale ranges are; `--categorical`
replays them as unordered choices, as v1 and v2 of the output did). For each strategy and seed, the hypervolume of
the front of the trials that ran their whole budget, as a fraction of the front of all 96 configurations, once 10%
and 20% of the full grid's training steps are spent; median over seeds.

Strategies: Pareto-ASHA + multi-objective TPE (the service's Pareto study), scalarised ASHA (TPE + ASHA on one
number, accuracy minus a weight times the normalised parameter count), random search + Pareto-ASHA, NSGA-II +
Pareto-ASHA (`sampler: nsga2`), and multi-objective TPE without early stopping. The PT+ grid predates parameter
counts; they are computed once per (feature map, prefix length) by building the adapter on the embedded model
(bench/data/ptplus_grid_v1_params.json).

    python bench/pareto.py --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).parent))
import baselines_grid
import grid
import ray
from ray import tune

from ptplus_tune.service import run_study
from ptplus_tune.service.optuna_store import StudySearch
from ptplus_tune.spaces import parse_space
from ptplus_tune.spaces.pareto import pareto_front
from ptplus_tune.spaces.spec import Parameter

for _module in (grid, baselines_grid, sys.modules[__name__]):
    if _module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(_module)

PARAMS_FILE = Path(__file__).with_name("data") / "ptplus_grid_v1_params.json"
BUDGETS = (0.10, 0.20)  # fractions of the full grid's training steps
WEIGHT = 0.1  # scalarised: accuracy - WEIGHT * params / max params
STRATEGIES = {  # name: (sampler, scheduler, objectives?)
    "Pareto-ASHA + MOTPE": ("tpe", "asha", True),
    "scalarised ASHA + TPE": ("tpe", "asha", False),
    "random + Pareto-ASHA": ("random", "asha", True),
    "NSGA-II + Pareto-ASHA": ("nsga2", "asha", True),  # the service's other multi-objective sampler
    "MOTPE, no early stopping": ("tpe", "none", True),
}


def parameter_counts(table: dict) -> dict[str, int]:
    """Trainable parameters of each (feature map, prefix length), computed once and kept next to the grid."""
    if PARAMS_FILE.is_file():
        return json.loads(PARAMS_FILE.read_text())
    from ptplus_tune.adapter import build_adapter, count_trainable_parameters
    from ptplus_tune.data import load_base_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import release

    model, _ = load_base_model(None, device="cpu")
    counts = {}
    for fm in table["grid"]["feature_map"]:
        for pl in table["grid"]["prefix_length"]:
            config = TrialConfig.from_dict({**table["settings"], "feature_map": fm, "prefix_length": pl})
            wrapped = build_adapter(model, config.hyperparameters())
            counts[f"{fm}/{pl}"] = count_trainable_parameters(wrapped)
            release(wrapped)  # the base model as it was, for the next one
    PARAMS_FILE.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
    return counts


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (accuracy to maximise, parameters to minimise) points, bounded by `reference`
    (an accuracy below all and a parameter count above all)."""
    front = {p for p in points if p[0] > reference[0] and p[1] < reference[1]}
    # sweep by parameter count: each point adds the strip between the best accuracy so far and its own, as wide as
    # the parameter range it dominates
    area, best = 0.0, reference[0]
    for accuracy, params in sorted(front, key=lambda p: (p[1], -p[0])):
        if accuracy > best:
            area += (accuracy - best) * (reference[1] - params)
            best = accuracy
    return area


def cost_of_whole_front(found: list[tuple[float, tuple[float, float]]], reference, true_hv: float) -> float:
    """The cost (fraction of the grid's) at which the (cost, point) pairs found so far first span the true front's
    hypervolume; inf if they never do."""
    points = []
    for cost, point in sorted(found, key=lambda f: f[0]):
        points.append(point)
        if hypervolume(points, reference) >= true_hv * (1 - 1e-12):
            return cost
    return math.inf


class Finished(tune.Callback):
    """Training steps spent so far, and the configurations that ran their whole budget with the cost at which each
    finished."""

    def __init__(self, max_steps: int):
        self.max_steps, self.spent, self.last, self.done = max_steps, 0, {}, []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.spent += result["step"] - self.last.get(trial.trial_id, 0)
        self.last[trial.trial_id] = result["step"]
        if result["step"] >= self.max_steps:
            self.done.append((self.spent, dict(trial.config)))


class SpentStopper(tune.Stopper):
    def __init__(self, counter: Finished, limit: float):
        self.counter, self.limit = counter, limit

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.counter.spent >= self.limit


LEVELS = {"lr_level": "learning_rate", "pl_level": "prefix_length", "r_level": "lora_r"}  # replayed as indexes


def grid_key(config: dict, axes: dict[str, dict[str, list]]) -> str:
    """A replayed trial's configuration (a method, its feature map, levels of its other axes) as its grid's key."""
    values = axes[config["method"]]
    config = {LEVELS.get(k, k): (values[LEVELS[k]][v] if k in LEVELS else v) for k, v in config.items()}
    if config["method"] == "ptplus":
        return grid.key(config)
    return baselines_grid.key(config)


def combined(table: dict, baselines: dict) -> tuple[dict[str, tuple[list, int]], dict[str, dict[str, list]]]:
    """Every configuration of both grids, key -> (curve, trainable parameters); and each method's axes."""
    counts = parameter_counts(table)
    entries = {grid.key(run["config"]): (run["curve"], counts[f"{run['config']['feature_map']}/"
                                                               f"{run['config']['prefix_length']}"])
               for run in table["runs"]}
    entries |= {baselines_grid.key(run["config"]): (run["curve"], run["trainable_params"]) for run in baselines["runs"]}
    return entries, {"ptplus": table["grid"]} | baselines["grid"]


def replay(entries: dict, axes: dict, scalarised: bool, max_params: int):
    def trial(config):
        curve, params = entries[grid_key(config, axes)]
        for point in curve:
            accuracy = point["eval_accuracy"]
            value = accuracy - WEIGHT * params / max_params if scalarised else accuracy
            tune.report({**point, "eval_accuracy": value, "trainable_params": params})
    return trial


def spec_for(table: dict, baselines: dict, sampler: str, scheduler: str, multi: bool, seed: int, trials: int,
             ordinal: bool = True):
    settings, axes = table["settings"], baselines["grid"]
    if table["grid"]["prefix_length"] != axes["prefix_tuning"]["prefix_length"]:
        raise SystemExit("error: the PT+ and Prefix-Tuning grids have different prefix lengths")
    spec = parse_space({
        "name": "pareto-replay", "num_samples": trials, "max_concurrent": 1, "seed": seed, "sampler": sampler,
        **({"objectives": [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}]}
           if multi else {"metric": "eval_accuracy", "mode": "max"}),
        "scheduler": ({"grace_period": settings["eval_every"], "reduction_factor": 2, "dead_trials": False}
                      if scheduler == "asha" else {"type": "none", "dead_trials": False}),
        "resources": {"cpus": 1, "gpus": 0}, "trial": {"max_steps": settings["max_steps"],
                                                       "eval_every": settings["eval_every"]},
        "parameters": {
            "method": {"type": "categorical", "choices": ["ptplus", *axes]},
            "feature_map": {"type": "categorical", "choices": table["grid"]["feature_map"],
                            "when": {"method": "ptplus"}},
        },
    }, source="replay")
    # The other axes are replayed as indexes into each method's grid values (not trial settings, hence added after
    # parsing): Optuna keeps one distribution per parameter name, and the methods' learning rates differ. Every axis
    # is evenly spaced in log scale, so an integer index is what the shipped space's log-scale ranges become on the
    # grid; `ordinal=False` replays them as unordered choices (bench/data/pareto_v1.txt and v2).
    def level(name: str, n: int, methods: list[str]) -> Parameter:
        kind = dict(type="int", low=0, high=n - 1) if ordinal else dict(type="categorical", choices=list(range(n)))
        return Parameter(name, **kind, when={"method": methods})

    spec.parameters += [level("pl_level", len(table["grid"]["prefix_length"]), ["ptplus", "prefix_tuning"]),
                        level("r_level", len(axes["lora"]["lora_r"]), ["lora"]),
                        level("lr_level", len(table["grid"]["learning_rate"]), ["ptplus", *axes])]
    return spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=grid.GRID_FILE)
    parser.add_argument("--baselines", type=Path, default=baselines_grid.BASELINES_FILE)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--categorical", action="store_true",
                        help="replay the grid's levels as unordered choices (as v1 and v2 of the output did)")
    parser.add_argument("--train-repeats", action="store_true",
                        help="train a configuration proposed again, as the service did before v3 of the output")
    parser.add_argument("--only", action="append", choices=list(STRATEGIES), metavar="STRATEGY",
                        help="run only this strategy (repeatable; default: all)")
    args = parser.parse_args()
    if args.train_repeats:
        StudySearch.max_repeats = 0
    table, baselines = grid.load(args.grid), baselines_grid.load(args.baselines)
    for path, have, want, script in ((args.grid, table, grid.configurations(), "grid.py"),
                                     (args.baselines, baselines, baselines_grid.configurations(), "baselines_grid.py")):
        if len(have["runs"]) < len(want):
            print(f"error: {path} has {len(have['runs'])} of {len(want)} configurations; run bench/{script}",
                  file=sys.stderr)
            return 2
    entries, axes = combined(table, baselines)
    max_params = max(params for _, params in entries.values())
    steps = table["settings"]["max_steps"]
    if baselines["settings"]["max_steps"] != steps:
        print("error: the two grids ran different step budgets", file=sys.stderr)
        return 2

    def point(key: str) -> tuple[float, float]:
        curve, params = entries[key]
        return curve[-1]["eval_accuracy"], params

    everything = {key: point(key) for key in entries}
    reference = (min(a for a, _ in everything.values()) - 1e-9, max_params * 1.0001)
    true_hv = hypervolume(list(everything.values()), reference)
    keys = list(everything)
    front = [keys[i] for i in pareto_front([(a, -p) for a, p in everything.values()])]
    full = len(entries) * steps
    print(f"grids: {len(entries)} configurations x {steps} steps; hypervolume of all {true_hv:.1f}; the front "
          f"({len(front)} configurations, accuracy / trainable parameters):")
    for key in sorted(front, key=lambda k: everything[k][1]):
        print(f"  {everything[key][0]:.3f} / {everything[key][1]:>9,}  {key}")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    fractions: dict[str, dict[float, list[float]]] = {}
    whole: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as storage:
        for index, (name, (sampler, scheduler, multi)) in enumerate(STRATEGIES.items()):
            if args.only and name not in args.only:
                continue
            for seed in range(args.seeds):
                counter = Finished(steps)
                spec = spec_for(table, baselines, sampler, scheduler, multi, seed, len(entries), not args.categorical)
                run_study(spec, f"{index}-{seed}", storage, trainable=replay(entries, axes, not multi, max_params),
                          callbacks=[counter], stop=SpentStopper(counter, max(BUDGETS) * full))
                found = [(spent / full, everything[grid_key(config, axes)]) for spent, config in counter.done]
                for budget in BUDGETS:
                    fractions.setdefault(name, {}).setdefault(budget, []).append(
                        hypervolume([p for cost, p in found if cost <= budget], reference) / true_hv)
                whole.setdefault(name, []).append(cost_of_whole_front(found, reference, true_hv))
            print(f"  {name}: {fractions[name]}; whole front at {whole[name]}", file=sys.stderr, flush=True)
    ray.shutdown()
    print(f"\nhypervolume of the found front / all configurations' (median of {args.seeds} seeds; accuracy vs "
          f"trainable parameters); the cost at which the whole front was found (inf: not within "
          f"{max(BUDGETS):.0%})\n| strategy | " + " | ".join(f"at {b:.0%} of the grid's cost" for b in BUDGETS) +
          " | whole front found | median cost of the whole front |")
    print("|---|" + "---|" * (len(BUDGETS) + 2))
    for name, by_budget in fractions.items():
        costs = whole[name]
        print(f"| {name} | " + " | ".join(f"{statistics.median(by_budget[b]):.3f}" for b in BUDGETS) +
              f" | {sum(c != math.inf for c in costs)} of {len(costs)} | {statistics.median(costs):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
