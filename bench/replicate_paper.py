"""A small-scale replication of the paper's comparison (Prefix-Tuning+ vs Prefix-Tuning vs LoRA, few-shot).

Runs the `compare` space as the service does (Ray Tune + Optuna TPE + ASHA, every trial tracked in MLflow) with the
same trial budget per method (`balance: method`), picks each method's best trial by validation accuracy, then
measures on the held-out test split: test accuracy of that trial's adapter, its trainable parameters and the time
of one training step (forward + backward + AdamW, all methods on the same batches, interleaved rounds, median).
Prints a markdown table and logs it (`replication.md`, plus `replication.json` and metrics) on the study's parent run.

    python bench/replicate_paper.py                      # 8 trials per method on the embedded default (~1 h, 2 cores)
    python bench/replicate_paper.py --per-method 4 --tracking-uri http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch

from ptplus_tune.errors import PTPlusError

NAMES = {"ptplus": "Prefix-Tuning+", "prefix_tuning": "Prefix-Tuning (PEFT)", "lora": "LoRA (PEFT)"}
GOALS = (("ptplus", "prefix_tuning", 0.0), ("ptplus", "lora", -0.02))  # PT+ - other >= margin (the paper's claims)


def best_per_method(result) -> dict:
    """Each method's trial with the best final validation metric (how the service picks a winner), and its trials."""
    out = {}
    for method in NAMES:
        trials = [t for t in result.trials if t.config.get("method") == method]
        best = dataclasses.replace(result, trials=trials).best
        if best is not None:
            out[method] = (best, trials)
    return out


def score_on_test(trial, spec) -> float:
    """The trial's adapter (from its last checkpoint) on the test split, scored exactly as evaluation does."""
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.evaluate import evaluate
    from ptplus_tune.trial.host import load_splits
    from ptplus_tune.trial.predict import Predictor

    config = TrialConfig.from_dict({**spec.trial, **trial.config})
    splits = load_splits(config)
    with trial.checkpoint_ref.as_directory() as folder:
        predictor = Predictor.from_files(os.path.join(folder, "adapter"), os.path.join(folder, "task.json"))
    scores = evaluate(predictor.model, predictor.encoder, splits.test, splits.labels, config.eval_batch_size,
                      predictor.device)
    return scores["accuracy"]


def zero_shot_accuracy(spec) -> float:
    from ptplus_tune.data import PromptEncoder, load_base_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.device import pick_device
    from ptplus_tune.trial.evaluate import evaluate
    from ptplus_tune.trial.host import load_splits

    config = TrialConfig.from_dict(spec.trial)
    device, dtype = pick_device(config.device)
    model, tokenizer = load_base_model(config.model, device=str(device), dtype=dtype)
    splits = load_splits(config)
    encoder = PromptEncoder(tokenizer, config.max_length, config.prompt_template, config.target_template)
    return evaluate(model, encoder, splits.test, splits.labels, config.eval_batch_size, device)["accuracy"]


def step_times_ms(configs: dict[str, dict], spec, rounds: int) -> dict[str, float]:
    """Median wall time of one training step per method: the same batches for every method, one step of each per
    round in rotating order (the machine's drift hits all methods alike), after two warm-up steps."""
    from ptplus_tune.adapter import build_adapter
    from ptplus_tune.data import PromptEncoder, collate, load_base_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.device import pick_device
    from ptplus_tune.trial.host import load_splits
    from ptplus_tune.trial.train import DataOrder

    base_config = TrialConfig.from_dict(spec.trial)
    device, dtype = pick_device(base_config.device)
    torch.set_num_threads(base_config.num_threads or len(os.sched_getaffinity(0)))
    splits = load_splits(base_config)
    setups = {}
    for method, hyperparameters in configs.items():
        config = TrialConfig.from_dict({**spec.trial, **hyperparameters})
        model, tokenizer = load_base_model(config.model, device=str(device), dtype=dtype)
        torch.manual_seed(config.seed)
        model = build_adapter(model, config.hyperparameters()).to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
        setups[method] = (model, optimizer)
    encoder = PromptEncoder(tokenizer, base_config.max_length, base_config.prompt_template,
                            base_config.target_template)
    items = [encoder.encode(ex.text, ex.label) for ex in splits.train]
    order = DataOrder(len(items), base_config.batch_size, base_config.seed)
    batches = [{k: v.to(device) for k, v in collate([items[i] for i in order.batch(b)],
                                                      tokenizer.pad_token_id).items()} for b in range(rounds + 2)]

    def step(method: str, batch: dict) -> float:
        model, optimizer = setups[method]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    methods = list(setups)
    for batch in batches[:2]:
        for method in methods:
            step(method, batch)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r, batch in enumerate(batches[2:]):
        for method in methods[r % len(methods):] + methods[:r % len(methods)]:
            times[method].append(step(method, batch))
    return {m: 1000 * statistics.median(t) for m, t in times.items()}


def markdown(rows: list[dict], zero_shot: float, setting: str) -> str:
    lora = next((r for r in rows if r["method"] == "lora"), None)
    lines = [setting, "",
             "| method | trials (completed / stopped early) | best configuration | validation acc. | test acc. "
             "| trainable params | train step (ms) | step vs LoRA |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['step_ms'] / lora['step_ms']:.2f}x" if lora else "-"
        lines.append(f"| {NAMES[r['method']]} | {r['trials']} ({r['completed']} / {r['early_stopped']}) | "
                     f"{r['configuration']} | {r['validation_accuracy']:.1%} | {r['test_accuracy']:.1%} | "
                     f"{r['trainable_params']:,} | {r['step_ms']:.0f} | {ratio} |")
    lines.append(f"| base model, zero-shot | - | no adapter | - | {zero_shot:.1%} | 0 | - | - |")
    found = {r["method"]: r for r in rows}
    lines.append("")
    for mine, other, margin in GOALS:
        if mine in found and other in found:
            diff = found[mine]["test_accuracy"] - found[other]["test_accuracy"]
            verdict = "met" if diff >= margin - 1e-9 else "NOT met"
            lines.append(f"- {NAMES[mine]} - {NAMES[other]}: {100 * diff:+.1f} points of test accuracy "
                         f"(paper's claim: >= {100 * margin:+.0f}): {verdict}")
    return "\n".join(lines) + "\n"


def _describe(config: dict) -> str:
    keep = {k: v for k, v in sorted(config.items()) if k != "method"}
    return ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="compare", help="a space with `balance: method` [compare]")
    parser.add_argument("--per-method", type=int, help="trials per method [the space's num_samples / 3]")
    parser.add_argument("--seed", type=int, help="TPE seed [from the space]")
    parser.add_argument("--name", help="study name [replicate-<date>-<time>]")
    parser.add_argument("--storage-path", default=os.environ.get("PTPLUS_STORAGE_PATH", "ptplus_results"))
    parser.add_argument("--tracking-uri", help="MLflow tracking URI [MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--address", help="Ray cluster address [a new local instance]")
    parser.add_argument("--step-rounds", type=int, default=10, help="timed training steps per method [10]")
    args = parser.parse_args()
    try:
        return run(args)
    except PTPlusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from ptplus_tune.cli import display
    from ptplus_tune.data.identity import dataset_identity, model_identity
    from ptplus_tune.service import connect, run_study
    from ptplus_tune.service.storage import check_new
    from ptplus_tune.spaces import load_space, validate
    from ptplus_tune.tracking import check_reachable, default_tracking_uri, finish_study, open_study
    from ptplus_tune.tracking.target import client
    from ptplus_tune.trial import TrialConfig

    spec = load_space(args.space)
    method = spec.parameter("method")
    if spec.balance != "method" or method is None or set(method.choices) - set(NAMES):
        raise PTPlusError(f"{spec.source}: the replication needs `balance: method` over choices among "
                          f"{', '.join(NAMES)}")
    if args.per_method is not None:
        spec.num_samples = args.per_method * len(method.choices)
    if args.seed is not None:
        spec.seed = args.seed
    validate(spec)
    name = args.name or f"replicate-{time.strftime('%Y%m%d-%H%M%S')}"
    display.attach(name, quiet=True)  # the service's one line per trial event, as the CLI prints it
    check_new(args.storage_path, name)
    uri = args.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    per_method = spec.num_samples // len(method.choices)
    print(f"study {name}: {spec.num_samples} trials ({per_method} per method), {spec.max_steps} steps each, "
          f"tracked in {uri}; on {connect(args.address)}", file=sys.stderr, flush=True)

    started = time.time()
    target = open_study(uri, spec, name, resume=False)
    result = run_study(spec, name, args.storage_path, tracking=target)
    path = os.path.join(os.path.abspath(args.storage_path), name)
    finish_study(target, result, spec, optuna_storage=f"sqlite:///{path}/optuna.db")
    print(f"study done in {time.time() - started:.0f} s; measuring the winners on the test split", file=sys.stderr,
          flush=True)

    winners = best_per_method(result)
    rows = []
    for method_name, (best, trials) in winners.items():
        rows.append({
            "method": method_name, "trials": len(trials),
            "completed": sum(t.status == "completed" for t in trials),
            "early_stopped": sum(t.status == "early_stopped" for t in trials),
            "configuration": _describe(best.config), "config": best.config, "trial_id": best.trial_id,
            "validation_accuracy": best.metrics["eval_accuracy"],
            "test_accuracy": score_on_test(best, spec),
            "trainable_params": int(best.metrics["trainable_params"]),
        })
    steps = step_times_ms({r["method"]: r["config"] for r in rows}, spec, args.step_rounds)
    for row in rows:
        row["step_ms"] = steps[row["method"]]
    zero_shot = zero_shot_accuracy(spec)

    trial = TrialConfig.from_dict(spec.trial)
    setting = (f"Base model {model_identity(trial.model)}, dataset {dataset_identity(trial.dataset)}: "
               f"{trial.k_shot or 'all'} training examples per class, {trial.validation_size} validation and "
               f"{trial.test_size} test examples, {spec.max_steps} steps, {per_method} trials per "
               f"method (TPE + ASHA, seed {spec.seed}); best trial per method by validation accuracy, scored once "
               f"on the test split. Device: {'cuda' if torch.cuda.is_available() else 'cpu'}.")
    table = markdown(rows, zero_shot, setting)
    print(table)
    mlflow_client = client(uri)
    mlflow_client.log_text(target.parent_run_id, table, "replication.md")
    mlflow_client.log_dict(target.parent_run_id, {"setting": setting, "zero_shot_test_accuracy": zero_shot,
                                                  "methods": rows}, "replication.json")
    for row in rows:
        for key in ("test_accuracy", "step_ms"):
            mlflow_client.log_metric(target.parent_run_id, f"replication.{row['method']}.{key}", row[key])
    print(f"logged to MLflow run {target.parent_run_id} (replication.md) at {uri}", file=sys.stderr)
    return 0 if len(rows) == len(method.choices) else 1


if __name__ == "__main__":
    sys.exit(main())
