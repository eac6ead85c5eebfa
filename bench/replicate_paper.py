"""A small-scale replication of the paper's comparison (Prefix-Tuning+ vs Prefix-Tuning vs LoRA), over seeds.

Runs the `compare` space as the service does (Ray Tune + Optuna TPE + ASHA, every trial tracked in MLflow) under a
fair protocol: the same trial budget per method (`balance: method`) and ASHA per method (`scheduler.group_by:
method`), so a method's trials are stopped only by its own. Each method's best trial by validation metric is then
measured once on the held-out test split; its trainable parameters and the time of one training step (forward +
backward + AdamW, all methods on the same batches, interleaved rounds, median) complete the row. Repeated for
`--seeds` studies (TPE seed and trial seed s; the data splits stay those of data_seed, so every seed is tested on
the same examples); the table shows mean ± standard deviation over the seeds, and the base model's zero-shot score.

`--task generation` runs the same methods and protocol on the generative default (the `generate` space's data,
trial settings and rungs: reasoning-gym `aiw`, exact match of greedy completions; `--generative-space
generate-quick` for a first look in minutes).

    python bench/replicate_paper.py --seeds 3 --per-method 3                      # classification
    python bench/replicate_paper.py --task generation --seeds 3 --per-method 3    # generation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch

from ptplus_tune.errors import PTPlusError

NAMES = {"ptplus": "Prefix-Tuning+", "prefix_tuning": "Prefix-Tuning (PEFT)", "lora": "LoRA (PEFT)"}
GOALS = (("ptplus", "prefix_tuning", 0.0), ("ptplus", "lora", -0.02))  # PT+ - other >= margin (the paper's claims)
TASKS = {"classification": ("eval_accuracy", "accuracy"), "generation": ("eval_exact_match", "exact match")}


def best_per_method(result) -> dict:
    """Each method's trial with the best final validation metric (how the service picks a winner), and its trials."""
    out = {}
    for method in NAMES:
        trials = [t for t in result.trials if t.config.get("method") == method]
        best = dataclasses.replace(result, trials=trials).best
        if best is not None:
            out[method] = (best, trials)
    return out


def _test_score(model, tokenizer, config, device) -> float:
    """A model's score on the config's test split, computed as the trial's own final test evaluation is."""
    from ptplus_tune.trial.host import load_splits
    from ptplus_tune.trial.tasks import task_for

    task = task_for(dataclasses.replace(config, eval_test=True), tokenizer, load_splits(config), device)
    figures = task.final_metrics(model)
    return figures.get("test_accuracy", figures.get("test_exact_match"))


def score_on_test(trial, spec) -> float:
    """The trial's adapter (from its last checkpoint) on the test split."""
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.predict import Predictor

    config = TrialConfig.from_dict({**spec.trial, **trial.config})
    with trial.checkpoint_ref.as_directory() as folder:
        predictor = Predictor.from_files(os.path.join(folder, "adapter"), os.path.join(folder, "task.json"))
    return _test_score(predictor.model, predictor.encoder.tokenizer, config, predictor.device)


def zero_shot_score(spec) -> float:
    from ptplus_tune.data import load_base_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.device import pick_device

    config = TrialConfig.from_dict(spec.trial)
    device, dtype = pick_device(config.device)
    model, tokenizer = load_base_model(config.model, device=str(device), dtype=dtype)
    return _test_score(model.eval(), tokenizer, config, device)


def step_times_ms(configs: dict[str, dict], spec, rounds: int) -> dict[str, float]:
    """Median wall time of one training step per method: the same batches for every method, one step of each per
    round in rotating order (the machine's drift hits all methods alike), after two warm-up steps."""
    from ptplus_tune.adapter import build_adapter
    from ptplus_tune.data import collate, load_base_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.device import pick_device
    from ptplus_tune.trial.host import load_splits
    from ptplus_tune.trial.loss import target_losses
    from ptplus_tune.trial.tasks import task_for
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
    items = task_for(base_config, tokenizer, splits, device).train_items()
    order = DataOrder(len(items), base_config.batch_size, base_config.seed)
    batches = [{k: v.to(device) for k, v in collate([items[i] for i in order.batch(b)],
                                                      tokenizer.pad_token_id).items()} for b in range(rounds + 2)]

    def step(method: str, batch: dict) -> float:
        model, optimizer = setups[method]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        loss, = target_losses(model, batch)
        loss.backward()
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


def _spread(values: list[float], percent: bool = True) -> str:
    scale, unit = (100, "") if percent else (1, "")
    mean = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}{unit}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}{unit}"


def markdown(rows: list[dict], zero_shot: float, setting: str, label: str) -> str:
    """One row per method over its seeds (mean ± sd), the zero-shot row, and the paper's claims checked on the
    seeds' mean."""
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    steps = {m: statistics.median(r["step_ms"] for r in rs if r.get("step_ms")) for m, rs in by_method.items()
             if any(r.get("step_ms") for r in rs)}
    lines = [setting, "",
             f"| method | seeds | trials per seed (completed / stopped early, summed) | validation {label} (%) | "
             f"test {label} (%) | trainable params | train step (ms) | step vs LoRA |",
             "|---|---|---|---|---|---|---|---|"]
    for method, rs in by_method.items():
        step = steps.get(method)
        ratio = f"{step / steps['lora']:.2f}x" if step and "lora" in steps else "-"
        params = sorted({r["trainable_params"] for r in rs})
        shown = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}-{params[-1]:,}"
        lines.append(f"| {NAMES[method]} | {len(rs)} | {rs[0]['trials']} ({sum(r['completed'] for r in rs)} / "
                     f"{sum(r['early_stopped'] for r in rs)}) | {_spread([r['validation'] for r in rs])} | "
                     f"{_spread([r['test'] for r in rs])} | {shown} | {f'{step:.0f}' if step else '-'} | {ratio} |")
    lines.append(f"| base model, zero-shot | - | no adapter | - | {100 * zero_shot:.1f} | 0 | - | - |")
    lines.append("")
    lines.append("Best configuration per seed: " + "; ".join(
        f"{NAMES[r['method']]} seed {r['seed']}: {r['configuration']}" for r in rows))
    means = {m: statistics.mean(r["test"] for r in rs) for m, rs in by_method.items()}
    lines.append("")
    for mine, other, margin in GOALS:
        if mine in means and other in means:
            diff = means[mine] - means[other]
            verdict = "met" if diff >= margin - 1e-9 else "NOT met"
            lines.append(f"- {NAMES[mine]} - {NAMES[other]}: {100 * diff:+.1f} points of mean test {label} "
                         f"(paper's claim: >= {100 * margin:+.0f}): {verdict}")
    return "\n".join(lines) + "\n"


def _describe(config: dict) -> str:
    keep = {k: v for k, v in sorted(config.items()) if k != "method"}
    return ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=tuple(TASKS), default="classification")
    parser.add_argument("--space", default="compare", help="a space with `balance: method` [compare]")
    parser.add_argument("--generative-space", default="generate",
                        help="--task generation: the space whose data, trial settings and rungs to use [generate]")
    parser.add_argument("--per-method", type=int, help="trials per method and seed [the space's num_samples / 3]")
    parser.add_argument("--seeds", type=int, default=3, help="studies, seeds 0..N-1 (TPE and trial seed) [3]")
    parser.add_argument("--name", help="name prefix of the studies [replicate-<task>-<date>-<time>]")
    parser.add_argument("--storage-path", default=os.environ.get("PTPLUS_STORAGE_PATH", "ptplus_results"))
    parser.add_argument("--tracking-uri", help="MLflow tracking URI [MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--address", help="Ray cluster address [a new local instance]")
    parser.add_argument("--step-rounds", type=int, default=10, help="timed training steps per method [10]")
    parser.add_argument("--rows", type=Path, metavar="FILE",
                        help="keep each scored seed's rows in this JSON file and skip the seeds it already holds: a "
                             "long replication can be split across runs (and machines); the file is its raw result")
    args = parser.parse_args()
    try:
        return run(args)
    except PTPlusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def load_protocol(args):
    """The compare space under the fair protocol, for the task asked."""
    from ptplus_tune.spaces import load_space, validate

    spec = load_space(args.space)
    method = spec.parameter("method")
    if spec.balance != "method" or method is None or set(method.choices) - set(NAMES):
        raise PTPlusError(f"{spec.source}: the replication needs `balance: method` over choices among "
                          f"{', '.join(NAMES)}")
    spec.scheduler.group_by = "method"  # each method's trials compete only with each other at ASHA's rungs
    if args.task == "generation":
        generative = load_space(args.generative_space)
        spec.trial, spec.scheduler = dict(generative.trial), dataclasses.replace(generative.scheduler,
                                                                                 group_by="method")
        spec.metric, spec.mode = generative.metric, generative.mode
    spec.trial["eval_test"] = False  # the winners are scored on the test split once, below
    if args.per_method is not None:
        spec.num_samples = args.per_method * len(method.choices)
    validate(spec)
    return spec


def load_rows(path: Path | None, protocol: dict) -> list[dict]:
    """The rows of the seeds an earlier run already scored (`--rows`), if it measured the same thing."""
    if path is None or not path.is_file():
        return []
    data = json.loads(path.read_text())
    if data.get("protocol") != protocol:
        raise PTPlusError(f"--rows {path}: it holds another replication ({data.get('protocol')}); this one is "
                          f"{protocol}")
    return data["rows"]


def save_rows(path: Path | None, protocol: dict, rows: list[dict], **extra) -> None:
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"protocol": protocol, "rows": rows, **extra}, indent=1, default=str) + "\n")
    os.replace(tmp, path)  # a killed run leaves the last complete file


def run(args) -> int:
    from ptplus_tune.cli import display
    from ptplus_tune.data.identity import dataset_identity, model_identity
    from ptplus_tune.service import connect, run_study
    from ptplus_tune.service.storage import StudyDir, check_new
    from ptplus_tune.service.warm_start import search_sha256
    from ptplus_tune.tracking import check_reachable, default_tracking_uri, finish_study, open_study
    from ptplus_tune.tracking.target import client
    from ptplus_tune.trial import TrialConfig

    spec = load_protocol(args)
    metric, label = TASKS[args.task]
    methods = spec.parameter("method").choices
    per_method = spec.num_samples // len(methods)
    prefix = args.name or f"replicate-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = args.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    protocol = {"task": args.task, "search_sha256": search_sha256(spec), "per_method": per_method}
    kept = load_rows(args.rows, protocol)
    names = [f"{prefix}-seed{seed}" for seed in range(args.seeds) if seed not in {r["seed"] for r in kept}]
    # A seed whose study already exists (an earlier run of this command was stopped) is resumed: a finished one
    # only reports again, an unfinished one continues.
    done = {name for name in names if StudyDir(args.storage_path, name).exists()}
    for name in set(names) - done:
        check_new(args.storage_path, name)
    if kept:
        print(f"seeds {sorted({r['seed'] for r in kept})} taken from {args.rows}", file=sys.stderr)
    if names:
        print(f"{len(names)} studies {', '.join(names)}: {spec.num_samples} trials each ({per_method} per method, "
              f"ASHA per method), {spec.max_steps} steps, tracked in {uri}; on {connect(args.address)}",
              file=sys.stderr, flush=True)

    rows, targets = list(kept), {}
    for name in names:
        seed = int(name.rsplit("seed", 1)[1])
        seeded = dataclasses.replace(spec, seed=seed, trial={**spec.trial, "seed": seed})
        events = display.attach(name, quiet=True)  # the service's one line per trial event, as the CLI prints it
        started = time.time()
        target = open_study(uri, seeded, name, resume=name in done)
        targets[seed] = target
        try:
            result = run_study(seeded, name, args.storage_path, tracking=target, resume=name in done)
        finally:
            display.detach(events)  # else the next seed's lines are printed once per earlier seed too
        path = os.path.join(os.path.abspath(args.storage_path), name)
        finish_study(target, result, seeded, optuna_storage=f"sqlite:///{path}/optuna.db")
        print(f"study {name} done in {time.time() - started:.0f} s; scoring the winners on the test split",
              file=sys.stderr, flush=True)
        for method_name, (best, trials) in best_per_method(result).items():
            rows.append({
                "seed": seed, "method": method_name, "trials": len(trials),
                "completed": sum(t.status == "completed" for t in trials),
                "early_stopped": sum(t.status == "early_stopped" for t in trials),
                "configuration": _describe(best.config), "config": best.config, "trial_id": best.trial_id,
                "step": int(best.metrics["step"]), "validation": best.metrics[metric],
                "test": score_on_test(best, seeded), "trainable_params": int(best.metrics["trainable_params"]),
            })
        save_rows(args.rows, protocol, rows)
    rows = [r for r in rows if r["seed"] < args.seeds]  # the table's seeds (the file keeps every seed it has)
    first = {r["method"]: r["config"] for r in rows if r["seed"] == 0}
    steps = step_times_ms(first, spec, args.step_rounds)  # seed 0's winners: the step time hardly depends on seed
    for row in rows:
        row["step_ms"] = steps[row["method"]] if row["seed"] == 0 else None
    zero_shot = zero_shot_score(spec)

    trial = TrialConfig.from_dict(spec.trial)
    data = (f"{trial.k_shot or 'all'} training examples per class" if args.task == "classification"
            else f"{trial.train_size} training pairs")
    setting = (f"Base model {model_identity(trial.model)}, dataset {dataset_identity(trial.dataset)} ({args.task}): "
               f"{data}, {trial.validation_size} validation and {trial.test_size} test examples (data seed "
               f"{trial.data_seed}), {spec.max_steps} steps, {per_method} trials per method and seed (TPE + ASHA per "
               f"method, rungs {spec.rungs}), seeds 0-{args.seeds - 1}; best trial per method by validation "
               f"{label}, scored once on the test split; mean ± sd over seeds; step time of seed 0's winners. "
               f"Device: {'cuda' if torch.cuda.is_available() else 'cpu'}.")
    table = markdown(rows, zero_shot, setting, label)
    print(table)
    mlflow_client = client(uri)
    save_rows(args.rows, protocol, rows + [r for r in kept if r["seed"] >= args.seeds], zero_shot=zero_shot)
    for seed, target in targets.items():
        mlflow_client.log_text(target.parent_run_id, table, "replication.md")
        mlflow_client.log_dict(target.parent_run_id, {"setting": setting, "zero_shot_test": zero_shot,
                                                      "rows": rows}, "replication.json")
        for row in (r for r in rows if r["seed"] == seed):  # this seed's figures on its own study run
            mlflow_client.log_metric(target.parent_run_id, f"replication.{row['method']}.test_{metric[5:]}",
                                     row["test"])
    if names:
        print(f"logged to the MLflow runs of {', '.join(names)} (replication.md) at {uri}", file=sys.stderr)
    return 0 if {r["method"] for r in rows} == set(methods) else 1


if __name__ == "__main__":
    sys.exit(main())
