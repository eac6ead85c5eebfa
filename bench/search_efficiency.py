"""Search efficiency, replayed exactly: the real service code path (run_study: Ray Tune + OptunaSearch + ASHA) runs
against the tabulated grid (bench/grid.py) instead of training, and counts the training steps each strategy spends
before some trial reports an eval_accuracy within 1 point (0.01) of the grid's best. Printed as the median over
seeds for TPE+ASHA (the service's default), random+ASHA, TPE and random without early stopping, and the full grid;
plus the rank correlation between early-rung and final accuracy (does ASHA's early judgement hold for PT+?).
The warm-start rows run, for each seed s, a whole TPE+ASHA study of seed s + 100 first (all 72 trials, or only 16: an
earlier study that may well have missed the best) and then a study of seed s warm-started from it exactly as
`--warm-start` does (service.warm_start: its best configurations enqueued, its finished trials given to TPE),
counting only the second study's cost.
"now" rows replay the shipped `default` space's policy (its trial budget, start-up trials, rungs, evaluation points and
dead-trial rule) on the grid's values; a seed that does not reach the target within the budget counts as inf.

    python bench/search_efficiency.py --seeds 10
    python bench/search_efficiency.py --seeds 10 --only "TPE + ASHA, before" --eval-step-ratio 6.18   # cold vs warm
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

sys.path.insert(0, str(Path(__file__).parent))
import grid
import ray
from ray import tune

from ptplus_tune.service import run_study
from ptplus_tune.service.warm_start import load_warm_start
from ptplus_tune.spaces import load_space, parse_space
from ptplus_tune.spaces.spec import Parameter

# Trial functions are shipped to Ray workers by pickling; bench/ is not an installed package, so its code must
# travel by value.
for _module in (grid, sys.modules[__name__]):
    if _module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(_module)

TOLERANCE = 0.01
NOW = "TPE + ASHA, now (default policy)"
COLD, WARM = "TPE + ASHA, before", "TPE + ASHA, before, warm-started from another seed's study"
WARM_SHORT = "TPE + ASHA, before, warm-started from another seed's 16-trial study"
WARM_SOURCE_SEED = 100  # the earlier study of seed s has seed s + 100: never the warm study's own cold twin
# name: (sampler, early stopping, policy, trial budget). "before": the whole grid as the space and the budget, 10 random
# start-up trials. "now": the shipped default space's settings (its trial budget, start-up trials sized to it, ASHA
# rungs, evaluations at the rungs, dead-trial rule), with a budget of all 30 of its grid cells for comparison.
STRATEGIES = {
    COLD: ("tpe", True, "before", None),
    WARM: ("tpe", True, "before", None),
    WARM_SHORT: ("tpe", True, "before", None),
    "random + ASHA, before": ("random", True, "before", None),
    "TPE, no early stopping, before": ("tpe", False, "before", None),
    "random, no early stopping, before": ("random", False, "before", None),
    NOW: ("tpe", True, "now", None),
    "random + ASHA, now": ("random", True, "now", None),
    "TPE + ASHA, now, budget of 30 trials": ("tpe", True, "now", 30),
}
# The default space's per-feature-map learning-rate ranges (search_spaces/default.yaml), on the grid's values.
NOW_LEARNING_RATES = {"elu": [3e-4, 1e-3, 3e-3], "gelu": [3e-4, 1e-3, 3e-3], "relu": [1e-4, 3e-4, 1e-3],
                      "identity": [1e-4, 3e-4, 1e-3], "mlp": [1e-4, 3e-4, 1e-3]}
NOW_PREFIX_LENGTHS = [4, 16]  # the default space's range is 4..32


def curves(table: dict) -> dict[str, list[dict]]:
    return {grid.key(run["config"]): run["curve"] for run in table["runs"]}


def replay_trainable(table_curves: dict[str, list[dict]], spec=None, chance: float | None = None):
    """Replays stored curves. With the current policy (`spec` given): the learning rate comes from the feature map's
    range (`lr_level`), only the steps the policy evaluates are reported, and the dead-trial rule (ptplus_tune.trial.
    rules) ends a trial at the first evaluation at or after its step, as a real trial would."""
    from ptplus_tune.trial import rules

    policy = spec.trial_policy() if spec is not None else None
    evaluated = set(policy["eval_steps"]) | {spec.max_steps} if spec is not None else None

    def replayed_trial(config):
        config = dict(config)
        if "lr_level" in config:
            config["learning_rate"] = NOW_LEARNING_RATES[config["feature_map"]][config.pop("lr_level")]
        first_loss, checked = None, False  # the loss rule's reference is the first stored (evaluated) point here
        for point in table_curves[grid.key(config)]:
            if evaluated is not None and point["step"] not in evaluated:
                continue
            report = dict(point)
            if policy is not None and policy["dead_trial_step"] is not None:
                reason = rules.loss_verdict(point["train_loss"], first_loss)
                first_loss = point["train_loss"] if first_loss is None else first_loss
                if reason is None and not checked and point["step"] >= policy["dead_trial_step"]:
                    checked, reason = True, rules.accuracy_verdict(point["eval_accuracy"], chance)
                if reason is not None and point["step"] < spec.max_steps:
                    tune.report({**report, "stop_reason": reason})
                    return
            tune.report(report)
    return replayed_trial


class StepCounter(tune.Callback):
    """Training steps and evaluations spent so far (each trial's last reported step, summed; one evaluation per
    report), and both when the target was first met."""

    def __init__(self, target: float):
        self.target, self.spent, self.evaluations, self.last = target, 0, 0, {}
        self.steps_to_target: int | None = None
        self.evaluations_to_target: int | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.spent += result["step"] - self.last.get(trial.trial_id, 0)
        self.evaluations += 1
        self.last[trial.trial_id] = result["step"]
        if self.steps_to_target is None and result["eval_accuracy"] >= self.target:
            self.steps_to_target, self.evaluations_to_target = self.spent, self.evaluations


class StopAtTarget(tune.Stopper):
    def __init__(self, counter: StepCounter):
        self.counter = counter

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.counter.steps_to_target is not None


def spec_for(table: dict, sampler: str, early_stopping: bool, seed: int, policy: str = "before",
             budget: int | None = None):
    settings = table["settings"]
    steps = settings["max_steps"]
    if policy == "now":
        default = load_space("default")
        scheduler = {"grace_period": default.scheduler.grace_period,
                     "reduction_factor": default.scheduler.reduction_factor}
        spec = parse_space({
            "name": "replay", "metric": "eval_accuracy", "mode": "max", "max_concurrent": 1, "seed": seed,
            "num_samples": budget or default.num_samples, "sampler": sampler,
            **({"startup_trials": default.startup_trials} if default.startup_trials is not None else {}),
            "scheduler": scheduler if early_stopping else {"type": "none"},
            "resources": {"cpus": 1, "gpus": 0}, "trial": {"max_steps": steps},
            "parameters": {"feature_map": {"type": "categorical", "choices": list(NOW_LEARNING_RATES)},
                           "prefix_length": {"type": "categorical", "choices": NOW_PREFIX_LENGTHS}},
        }, source="replay")
        # Which of its map's three learning rates: not a trial setting (the replay maps it), so added after parsing.
        spec.parameters.append(Parameter("lr_level", "categorical", choices=[0, 1, 2]))
        return spec
    return parse_space({
        "name": "replay", "metric": "eval_accuracy", "mode": "max", "num_samples": budget or len(table["runs"]),
        "max_concurrent": 1, "seed": seed, "sampler": sampler, "startup_trials": 10,  # Optuna's default then
        "scheduler": ({"grace_period": settings["eval_every"], "reduction_factor": 2, "dead_trials": False}
                      if early_stopping else {"type": "none", "dead_trials": False}),
        "resources": {"cpus": 1, "gpus": 0}, "trial": {"max_steps": steps, "eval_every": settings["eval_every"]},
        "parameters": {name: {"type": "categorical", "choices": values} for name, values in table["grid"].items()},
    }, source="replay")


def measured_eval_step_ratio(settings: dict) -> float:
    """t_eval / t_step on the embedded model at the grid's settings, with the current code (median of 3 each)."""
    from ptplus_tune.trial import TrialConfig, TrialSession
    from ptplus_tune.trial.evaluate import evaluate

    session = TrialSession(TrialConfig.from_dict({**settings, "max_steps": 100}))
    session.train_step()  # warm-up
    steps, evals = [], []
    for _ in range(3):
        started = time.perf_counter()
        session.train_step()
        steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        evaluate(session.model, session.encoder, session.splits.validation, session.splits.labels,
                 session.config.eval_batch_size, session.device)
        evals.append(time.perf_counter() - started)
    return statistics.median(evals) / statistics.median(steps)


def validation_chance(settings: dict) -> float:
    from ptplus_tune.trial import TrialConfig, rules
    from ptplus_tune.trial.host import load_splits

    return rules.majority_share(load_splits(TrialConfig.from_dict(settings)).validation)


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
    parser.add_argument("--eval-step-ratio", type=float, help="t_eval / t_step [measured]")
    parser.add_argument("--only", metavar="TEXT", help="run only the strategies whose name contains TEXT")
    args = parser.parse_args()
    strategies = {name: how for name, how in STRATEGIES.items() if args.only is None or args.only in name}
    if not strategies:
        print(f"error: --only {args.only!r} matches none of: {'; '.join(STRATEGIES)}", file=sys.stderr)
        return 2
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

    settings = table["settings"]
    ratio = args.eval_step_ratio or measured_eval_step_ratio(settings)
    evals_per_config = len(next(iter(table_curves.values())))
    per_config = statistics.median(run["seconds"] for run in table["runs"] if "seconds" in run)
    t_step = per_config / (steps + evals_per_config * ratio)
    t_eval = ratio * t_step
    chance = validation_chance(settings)
    print(f"cost model: t_eval / t_step = {ratio:.2f} ({'given' if args.eval_step_ratio else 'measured now'}); "
          f"one grid configuration ({steps} steps + {evals_per_config} evaluations) = {per_config:.1f} s (the grid's "
          f"median), so t_step = {t_step:.2f} s, t_eval = {t_eval:.2f} s; validation chance level {chance:.3f}")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    results: dict[str, list[tuple[float, float, float]]] = {}  # steps, evaluations, seconds
    budgets: dict[str, tuple[int, int | None]] = {}  # trials, TPE's random start-up trials
    with tempfile.TemporaryDirectory() as storage:
        for index, (name, (sampler, early, policy, budget)) in enumerate(strategies.items()):
            for seed in range(args.seeds):
                counter = StepCounter(target)
                spec = spec_for(table, sampler, early, seed, policy, budget)
                trainable = replay_trainable(table_curves, spec, chance) if policy == "now" else \
                    replay_trainable(table_curves)
                budgets[name] = (spec.num_samples, spec.n_startup_trials if sampler == "tpe" else None)
                warm = None
                if name in (WARM, WARM_SHORT):  # the earlier study runs its whole budget; its cost is not counted
                    source = f"{index}-source-{seed}"
                    run_study(spec_for(table, sampler, early, seed + WARM_SOURCE_SEED, policy,
                                       16 if name == WARM_SHORT else budget), source, storage, trainable=trainable)
                    warm = load_warm_start([source], storage, spec)
                run_study(spec, f"{index}-{seed}", storage, trainable=trainable, callbacks=[counter],
                          stop=StopAtTarget(counter), warm_start=warm)
                if counter.steps_to_target is None:
                    results.setdefault(name, []).append((float("inf"),) * 3)
                else:
                    results.setdefault(name, []).append((counter.steps_to_target, counter.evaluations_to_target,
                                                         counter.steps_to_target * t_step +
                                                         counter.evaluations_to_target * t_eval))
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    ray.shutdown()

    full_steps, full_evals = len(finals) * steps, len(finals) * evals_per_config
    full_seconds = full_steps * t_step + full_evals * t_eval
    print(f"\ncost to reach within {TOLERANCE} of the grid's best eval_accuracy (median of {args.seeds} seeds; "
          f"inf = not reached)")
    print("| strategy | trials (start-up) | not reached | median steps | median evaluations | median cost (s) | "
          "cost of the full grid |\n|---|---|---|---|---|---|---|")
    medians = {}
    for name, values in results.items():
        medians[name] = [statistics.median(v[i] for v in values) for i in range(3)]
        m_steps, m_evals, m_seconds = medians[name]
        trials, startup = budgets[name]
        missed = sum(v[0] == float("inf") for v in values)
        print(f"| {name} | {trials}{f' ({startup})' if startup is not None else ''} | {missed} of {len(values)} | "
              f"{m_steps:g} | {m_evals:g} | {m_seconds:.0f} | {m_seconds / full_seconds:.1%} |")
    print(f"| full grid | {len(finals)} | 0 | {full_steps} | {full_evals} | {full_seconds:.0f} | 100.0% |")
    if NOW in medians and COLD in medians:
        now, before = medians[NOW][2], medians[COLD][2]
        print(f"\ngoal TPE+ASHA with the current policy <= 10% of the full grid's cost: {now / full_seconds:.1%}; "
              f"before: {before / full_seconds:.1%}; before / now = {before / now:.2f}x")
    if COLD in medians and "random, no early stopping, before" in medians:
        print(f"(steps only, as before issue 12: TPE+ASHA before {medians[COLD][0] / full_steps:.1%} of the grid's "
              f"steps, random without early stopping "
              f"{medians['random, no early stopping, before'][0] / medians[COLD][0]:.2f}x TPE+ASHA's)")
    for warm in (WARM, WARM_SHORT):
        if COLD in medians and warm in medians:
            print(f"goal warm-started <= 50% of a cold study's cost (median of {args.seeds} seeds), {warm}: "
                  f"{medians[warm][2] / medians[COLD][2]:.1%}")
    for rung in sorted({p["step"] for c in table_curves.values() for p in c} - {steps}):
        early = [next(p["eval_accuracy"] for p in table_curves[k] if p["step"] == rung) for k in finals]
        print(f"Spearman rank correlation, eval_accuracy at step {rung} vs step {steps}: "
              f"{spearman(early, list(finals.values())):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
