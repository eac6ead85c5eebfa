"""The default study before and after issue 12, in one invocation, on the same seed and the same Ray instance.

"before" is the old default space and evaluation policy, kept in bench/data/default_v1.yaml (evaluate every 10
steps, all six feature maps over lr 1e-4..1e-2 and prefix 4..64, Optuna's 10 random start-up trials, one ASHA rung
at step 20, no dead-trial rule); "now" is the shipped `default` space with the new policy (evaluate at the rungs
10 and 30 and at the end, the dead-trial rule, evidence-based ranges, start-up trials sized to the budget). Both run
exactly as `ptplus-tune --space ...` does: Ray Tune + Optuna + ASHA, every trial tracked in MLflow, the best adapter
registered (each policy under its own registered model, so each has its own champion). Infrastructure that is not
a policy (warm workers, the cheaper label scoring) serves both runs alike.

For each it prints wall time (start of the study to its registered champion), trials completed / stopped early,
evaluations and training steps spent, best validation accuracy, and the champion's accuracy on the 300 held-out test
articles (the registered MLflow model, loaded with mlflow.pyfunc). Targets: now <= 0.4x the wall time, best
validation accuracy >= before - 1 point, champion test accuracy >= before - 2 points.

    python bench/study_speed.py                          # both studies (about an hour on 2 cores)
    python bench/study_speed.py --output bench/data/study_speed_v1.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

HERE = Path(__file__).parent
POLICIES = (("before", str(HERE / "data" / "default_v1.yaml")), ("now", "default"))
TARGETS = {"wall_ratio": 0.4, "val_drop": 0.01, "test_drop": 0.02}


def spent(study_dir: Path) -> tuple[int, int]:
    """Evaluations (Tune results) and training steps (each trial's last step) the study spent."""
    evaluations = steps = 0
    for result_file in study_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        evaluations += len(rows)
        steps += rows[-1]["step"] if rows else 0
    return evaluations, steps


def champion_test_accuracy(registered_model: str, spec) -> float:
    import mlflow
    import pandas as pd

    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import load_splits

    splits = load_splits(TrialConfig.from_dict(spec.trial))
    model = mlflow.pyfunc.load_model(f"models:/{registered_model}@champion")
    predicted = model.predict(pd.DataFrame({"text": [ex.text for ex in splits.test]}))
    return sum(p == ex.label for p, ex in zip(predicted["label"], splits.test)) / len(splits.test)


def run_policy(label: str, space: str, args, storage: str, uri: str) -> dict:
    from ptplus_tune.service import run_study
    from ptplus_tune.spaces import load_space
    from ptplus_tune.tracking import finish_study, open_study

    spec = load_space(space)
    spec.seed = args.seed
    if args.num_samples:
        spec.num_samples = args.num_samples
    name = f"speed-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    registered = f"study-speed-{label}-{args.seed}"
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {space} as study {name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    target = open_study(uri, spec, name, resume=False)
    result = run_study(spec, name, storage, tracking=target)
    tracked = finish_study(target, result, spec, optuna_storage=f"sqlite:///{Path(storage) / name / 'optuna.db'}",
                           registered_model=registered)
    wall = time.perf_counter() - started
    evaluations, steps = spent(Path(storage) / name)
    best = result.best
    row = {
        "policy": label, "space": space, "space_sha256": spec.sha256, "study": name, "wall_s": round(wall, 1),
        "trials": len(result.trials),
        "completed": sum(t.status == "completed" for t in result.trials),
        "stopped_by_asha": sum(t.stop_reason == "asha" for t in result.trials),
        "stopped_dead": sum(t.status == "early_stopped" and t.stop_reason != "asha" for t in result.trials),
        "failed": sum(t.status == "failed" for t in result.trials),
        "evaluations": evaluations, "training_steps": steps,
        "best_val_accuracy": best.metrics[result.metric] if best else None,
        "best_config": best.config if best else None,
        "registered": None, "champion_test_accuracy": None,
    }
    if tracked.registration is not None:
        reg = tracked.registration
        row["registered"] = f"models:/{reg.name}/{reg.version} @{reg.alias}"
        row["champion_test_accuracy"] = champion_test_accuracy(registered, spec)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| policy | wall time | trials (completed / ASHA / dead rule) | evaluations | training steps | best val "
             "acc. | champion test acc. | best configuration |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        config = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted((r["best_config"] or {}).items()))
        test = f"{r['champion_test_accuracy']:.1%}" if r["champion_test_accuracy"] is not None else "-"
        lines.append(f"| {r['policy']} | {r['wall_s']:.0f} s | {r['trials']} ({r['completed']} / "
                     f"{r['stopped_by_asha']} / {r['stopped_dead']}) | {r['evaluations']} | {r['training_steps']} | "
                     f"{r['best_val_accuracy']:.1%} | {test} | {config} |")
    return "\n".join(lines)


def _check(name: str, value: float, target: float, unit: str, scale: float = 1.0, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target - 1e-9
    sign = "<=" if at_most else ">="
    return (f"{name} = {value * scale:+.1f}{unit}" if unit else f"{name} = {value:.2f}") + \
        f" (target {sign} {target * scale:g}{unit}: {'met' if met else 'NOT met'})"


def verdict(before: dict, now: dict) -> list[str]:
    out = [_check("wall time now / before", now["wall_s"] / before["wall_s"], TARGETS["wall_ratio"], "",
                  at_most=True),
           _check("best validation accuracy now - before", now["best_val_accuracy"] - before["best_val_accuracy"],
                  -TARGETS["val_drop"], " points", 100)]
    if now["champion_test_accuracy"] is not None and before["champion_test_accuracy"] is not None:
        out.append(_check("champion test accuracy now - before",
                          now["champion_test_accuracy"] - before["champion_test_accuracy"], -TARGETS["test_drop"],
                          " points", 100))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the sampler seed of both studies [0]")
    parser.add_argument("--num-samples", type=int, help="trials per study [each space's own: 16]")
    parser.add_argument("--only", choices=[p for p, _ in POLICIES], help="run one policy only (no ratios)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI [sqlite in the work folder]")
    parser.add_argument("--work", help="folder for study state and the MLflow store [a new temp folder]")
    parser.add_argument("--output", help="write the rows and the verdict as JSON here")
    parser.add_argument("--address", help="Ray cluster address [a new local instance]")
    args = parser.parse_args(argv)

    import logging

    from ptplus_tune.cli import display
    from ptplus_tune.service import connect

    display.attach("study-speed", quiet=True)  # the service's one line per trial event, as the CLI prints it
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="study-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    connect(args.address)
    rows = [run_policy(label, space, args, str(work / "studies"), uri) for label, space in POLICIES
            if args.only in (None, label)]
    print(table(rows))
    lines = verdict(*rows) if len(rows) == 2 else []
    for line in lines:
        print(line)
    if args.output:
        output = Path(args.output)
        tmp = output.with_name(f".{output.name}.tmp")
        import importlib.metadata

        versions = {p: importlib.metadata.version(p) for p in ("ptplus-tune", "torch", "ray", "optuna", "mlflow")}
        tmp.write_text(json.dumps({"rows": rows, "verdict": lines, "seed": args.seed, "cpus": os.cpu_count(),
                                   "versions": versions}, indent=1))
        os.replace(tmp, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
