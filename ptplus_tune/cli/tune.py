"""`ptplus-tune [--space NAME|PATH]`: a study on Ray Tune, with progress lines and a final table."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ptplus_tune.errors import PTPlusError


TUNE_EXAMPLES = """examples:
  ptplus-tune --space default                         # the default study on this machine (or the running cluster)
  ptplus-tune --space quick --dry-run                 # show the resolved space and plan, start nothing
  ptplus-tune --space compare --num-samples 48 --max-concurrent 8 --gpus-per-trial 0.25
  ptplus-tune --space my_space.yaml --address 10.0.0.5:6379 --name study1
  ptplus-tune --resume study1                         # continue a killed study where it stopped
  ptplus-tune --space default --tracking-uri http://127.0.0.1:5000 --registered-model news-topics
  ptplus-tune ui                                      # the MLflow UI on ./mlflow.db
  ptplus-tune predict --model-uri models:/ptplus-bbc_news@champion --text "Shares fell sharply..."
  ptplus-tune train --help                            # one training run
"""
def build_tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptplus-tune", epilog=TUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search Prefix-Tuning+ hyperparameters with Ray Tune (Optuna TPE proposes, ASHA stops early). "
                    "Subcommands: train (one run), ui (the MLflow UI), predict (a logged adapter).")
    parser.add_argument("--space", default=None, help="shipped space name (default, quick, compare) or a YAML "
                        "file [default]")
    parser.add_argument("--num-samples", type=int, help="number of trials [from the space]")
    parser.add_argument("--max-concurrent", type=int, help="trials at once [from the space]")
    parser.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 [from the space]")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial [from the space]")
    parser.add_argument("--pack", metavar="K|auto", help="train K Prefix-Tuning+ trials at once on one resident base "
                        "model per GPU (per node on CPU); the GPU/CPU figures above are then per pack and each "
                        "trial reserves 1/K of them; auto: K from the GPU's free memory (on CPU: max_concurrent) "
                        "[from the space, else 1]")
    parser.add_argument("--seed", type=int, help="TPE seed [from the space]")
    parser.add_argument("--model", help="base model for every trial (folder, .gguf or hub id) [from the space]")
    parser.add_argument("--dataset", help="dataset for every trial [from the space]")
    parser.add_argument("--address", help="Ray cluster address [RAY_ADDRESS, a running `ray start`/`ray up` "
                        "cluster, else a new local instance]")
    parser.add_argument("--storage-path", default=os.environ.get("PTPLUS_STORAGE_PATH", "ptplus_results"),
                        help="where studies keep their state; on a multi-node cluster a folder every node shares "
                             "(NFS) [PTPLUS_STORAGE_PATH, else ./ptplus_results]")
    parser.add_argument("--optuna-storage", metavar="URL", default=os.environ.get("PTPLUS_OPTUNA_STORAGE"),
                        help="database of the Optuna study, e.g. postgresql+psycopg2://user@head:5432/optuna on a "
                             "cluster (one database for all studies; optuna-dashboard URL shows them) "
                             "[PTPLUS_OPTUNA_STORAGE, else optuna.db in the study's folder]")
    parser.add_argument("--name", help="study name [<space>-<date>-<time>]")
    parser.add_argument("--resume", metavar="NAME", help="continue the study NAME under --storage-path")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI: a server (http://host:5000, what a cluster "
                        "uses) or a database [MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--registered-model", metavar="NAME", help="register the best adapter as a new version of "
                        "NAME [ptplus-<dataset>; --resume: what the study was started with]")
    parser.add_argument("--no-register", action="store_true", help="do not register the best adapter (--resume "
                        "remembers it)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved space and plan, start nothing")
    parser.add_argument("--top", type=int, default=5, help="trials in the final table [5]")
    parser.add_argument("-q", "--quiet", action="store_true", help="plain event lines instead of the live view "
                        "(also the behaviour when the output is not a terminal)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def _apply_overrides(spec, args) -> None:
    from ptplus_tune.spaces import validate

    for flag, attr in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            setattr(spec, attr, getattr(args, flag))
    if args.gpus_per_trial is not None:
        spec.resources.gpus = args.gpus_per_trial
    if args.cpus_per_trial is not None:
        spec.resources.cpus = args.cpus_per_trial
    if args.pack == "auto" and spec.resources.gpus == 0:
        from ptplus_tune.service.pack_host import auto_pack  # (imports Ray: only when asked for)

        spec.resources.pack = auto_pack(spec)  # on CPU a rule of the space; on a GPU it waits for the device
    elif args.pack is not None and args.pack != "auto":
        try:
            spec.resources.pack = int(args.pack)
        except ValueError:
            raise PTPlusError(f"--pack takes a whole number of trials or auto, got {args.pack!r}") from None
    for key in ("model", "dataset"):
        if getattr(args, key) is not None:
            spec.trial[key] = getattr(args, key)
    validate(spec)


def _plan(spec, name: str, path, concurrency: tuple[int, int] | None = None) -> str:
    res = spec.resources
    sampler = "TPE" if spec.sampler == "tpe" else "random search"
    if spec.sampler == "tpe":
        sampler += f" after {spec.n_startup_trials} random start-up trials"
    stopping = (f"ASHA may stop trials at steps {spec.rungs} of {spec.max_steps}" if spec.scheduler.type == "asha"
                else f"no early stopping: every trial runs {spec.max_steps} steps")
    policy = spec.trial_policy()
    evaluations = sorted(set(policy["eval_steps"]) | {spec.max_steps})
    every = spec.trial.get("eval_every")
    stopping += f"; trials evaluate at steps {evaluations}" + (f" and every {every}" if every else "")
    if policy["dead_trial_step"] is not None:
        stopping += (f"; dead trials (chance-level accuracy at step {policy['dead_trial_step']}, NaN or exploding "
                     f"loss) stop at once")
    balance = f"; trials take turns over {spec.balance} ({', '.join(map(str, spec.parameter(spec.balance).choices))})" \
        if spec.balance else ""
    return (f"study {name}: {spec.num_samples} trials, {_at_once(spec, concurrency)}, {_each(res)}; {sampler} "
            f"(seed {spec.seed}) optimises {spec.metric} ({spec.mode}){balance}; {stopping}; state in {path}")


def _at_once(spec, concurrency: tuple[int, int] | None) -> str:
    if concurrency is None:
        return f"up to {spec.max_concurrent} at a time"
    fewest, most = concurrency
    if most == 0:
        return f"none fits the cluster yet (up to {spec.max_concurrent} at a time once nodes join)"
    if fewest < most:  # packed PT+ trials beside baselines that reserve a whole pack each
        baselines = f"{fewest} PEFT baseline{'s' * (fewest > 1)}" if fewest else "no PEFT baseline fits it yet"
        return f"{fewest} to {most} at a time (room for {most} packed Prefix-Tuning+ trials, or {baselines})"
    return f"{most} at a time" + (f" (max_concurrent {spec.max_concurrent}; the cluster has room for {most})"
                                  if most < spec.max_concurrent else "")


def _each(res) -> str:
    if res.pack == 1:
        return f"{res.cpus:g} CPU + {res.gpus:g} GPU each"
    return f"Prefix-Tuning+ trials packed {res.pack} to a base model, {res.cpus:g} CPU + {res.gpus:g} GPU per pack"


def _table(result, top: int) -> str:
    from ptplus_tune.tracking.report import format_value

    ranked = result.ranked
    params = sorted({k for t in ranked[:top] for k in t.config})
    header = ["trial", "status", result.metric, "step", *params]
    rows = [[t.trial_id, t.status, f"{t.metrics[result.metric]:.4f}", str(t.metrics.get("step", "")),
             *[format_value(t.config.get(p)) for p in params]] for t in ranked[:top]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def default_registered_model(spec) -> str:
    from ptplus_tune.data.datasets import EMBEDDED_DATASET

    dataset = str(spec.trial.get("dataset", EMBEDDED_DATASET))
    stem = Path(dataset).stem if Path(dataset).suffix in (".json", ".jsonl", ".csv") else dataset
    return "ptplus-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)


def ui_hint(uri: str, experiment_id: str) -> str:
    """Where to look: the experiment's runs page (the study run's description holds the ranked table)."""
    page = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{page}"
    return f"ptplus-tune ui --tracking-uri {uri}   (then open http://127.0.0.1:5000/{page})"


def check_inputs(spec) -> None:
    """The model and data every trial will load, checked once here so that a bad file is one line before Ray
    starts, not a failure per trial."""
    from ptplus_tune.data.models import resolve_model
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import load_splits

    config = TrialConfig.from_dict(spec.trial, where=spec.source)
    if config.model is not None:
        resolve_model(config.model)
    load_splits(config)


def _tracked(action, uri: str, name: str, storage_path: str):
    """The study's last MLflow writes; if the server went away, one line on how to log them once it is back
    (`--resume` of a finished study runs nothing and logs everything again)."""
    from ptplus_tune.service.storage import resume_command

    try:
        return action()
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PTPlusError(f"the study's results are saved, but logging them to MLflow at {uri} failed ({detail}); "
                          f"once it answers again, `{resume_command(name, storage_path)}` logs them") from exc


def cmd_tune(args) -> int:
    # Checking the space and printing the plan need none of torch, transformers, Ray or MLflow: those load after.
    from ptplus_tune.service.storage import (StudyDir, check_new, optuna_storage_of, resume_command, saved_spec,
                                             saved_tracking_uri)
    from ptplus_tune.spaces import load_space, validate

    if args.resume:
        name = args.resume
        spec = saved_spec(args.storage_path, name)
        if args.space:
            print("note: --resume uses the study's saved space; --space is ignored", file=sys.stderr)
    else:
        spec = load_space(args.space or "default")
        _apply_overrides(spec, args)
        name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_new(args.storage_path, name)
    path = StudyDir(args.storage_path, name)
    gpu_auto_pack = args.pack == "auto" and not args.resume and spec.resources.gpus > 0
    if args.dry_run:
        print(spec.to_yaml().rstrip())
        print(f"# space sha256 {spec.sha256}")
        print(f"# {_plan(spec, name, path)}")
        if gpu_auto_pack:
            print("# --pack auto: trials per GPU are chosen at start from a GPU's free memory (pack above is 1)")
        return 0

    from ptplus_tune.cli import display
    from ptplus_tune.service import check_gpus, concurrency, connect, run_study
    from ptplus_tune.service.disk import check_room, describe, free_bytes
    from ptplus_tune.service.interrupt import LOW_DISK, exit_code
    from ptplus_tune.service.optuna_store import check_new_study, display_url, open_storage
    from ptplus_tune.service.pack_host import auto_pack
    from ptplus_tune.tracking import check_reachable, default_tracking_uri, finish_study, interrupt_study, open_study

    check_inputs(spec)
    if path.local is not None:
        check_room(path.local)
    optuna_storage = optuna_storage_of(args.storage_path, name, args.optuna_storage)
    if args.resume:
        open_storage(optuna_storage)
    elif args.optuna_storage:  # (the default, a new study's own sqlite file, is created with the study)
        check_new_study(optuna_storage, name)
    resumed_uri = saved_tracking_uri(args.storage_path, name) if args.resume else None
    tracking_uri = args.tracking_uri or resumed_uri or default_tracking_uri()
    check_reachable(tracking_uri)
    where = connect(args.address)
    if gpu_auto_pack:
        spec.resources.pack = auto_pack(spec)
        validate(spec)
    check_gpus(max(spec.resources.share(method)[1] for method in spec.methods))
    print(f"{'resuming' if args.resume else 'starting'} {_plan(spec, name, path, concurrency(spec))}; on {where}",
          file=sys.stderr)
    started = time.time()
    wanted = "" if args.no_register else args.registered_model or (None if args.resume else
                                                                   default_registered_model(spec))
    target = open_study(tracking_uri, spec, name, resume=bool(args.resume), registered_model=wanted)
    view = display.attach(name, args.quiet)
    try:
        result = run_study(spec, name, args.storage_path, resume=bool(args.resume), tracking=target,
                           optuna_storage=optuna_storage)
    finally:
        display.detach(view)
    if result.interrupted:
        _tracked(lambda: interrupt_study(target, result), tracking_uri, name, args.storage_path)
        counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "early_stopped", "interrupted")}
        why = f"the disk that holds it is nearly full ({describe(free_bytes(path.local))})" \
            if result.interrupted == LOW_DISK else result.interrupted
        print(f"\nstudy {name} interrupted after {time.time() - started:.0f} s ({why}): {counts['completed']} "
              f"trials completed, {counts['early_stopped']} stopped early, {counts['interrupted']} interrupted; "
              f"nothing registered; its state is saved in {path}", file=sys.stderr)
        free = "free some space, then " if result.interrupted == LOW_DISK else ""
        print(f"continue it with: {free}{resume_command(name, args.storage_path)}", file=sys.stderr)
        return exit_code(result.interrupted)
    registered_model = default_registered_model(spec) if target.registered_model is None else \
        target.registered_model or None
    print(f"logging the study to MLflow ({tracking_uri}) ...", file=sys.stderr)
    tracked = _tracked(lambda: finish_study(target, result, spec, optuna_storage=result.optuna_storage,
                                            registered_model=registered_model), tracking_uri, name, args.storage_path)

    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "early_stopped", "failed")}
    by_asha = sum(t.stop_reason == "asha" for t in result.trials)
    dead = counts["early_stopped"] - by_asha
    dead = f"{dead} stopped by the dead-trial rule, " if dead else ""
    print(f"\nstudy {name} done in {time.time() - started:.0f} s: {len(result.trials)} trials "
          f"({counts['completed']} completed, {by_asha} stopped early by ASHA, {dead}{counts['failed']} failed)")
    best = result.best
    if best is None:
        print("no trial reported a result")
        return 1
    print(_table(result, args.top))
    print(f"\nbest {result.metric}: {best.metrics[result.metric]:.4f} (trial {best.trial_id}, step "
          f"{best.metrics.get('step')})")
    print("best configuration:")
    for key, value in sorted(best.config.items()):
        print(f"  {key}: {value}")
    if best.checkpoint:
        print(f"best adapter: {Path(best.checkpoint) / 'adapter'}")
    print(f"optuna study: optuna-dashboard {display_url(result.optuna_storage)}")
    print(f"mlflow: experiment {tracked.experiment_id}, study run {tracked.parent_run_id}, best trial run "
          f"{tracked.best_run_id}")
    reg = tracked.registration
    if reg is not None:
        held = f", replacing version {reg.previous_champion}" if reg.alias == "champion" and reg.previous_champion \
            else (f"; champion stays version {reg.previous_champion}" if reg.previous_champion else "")
        print(f"registered: models:/{reg.name}/{reg.version} as @{reg.alias}{held}")
    print(f"mlflow ui: {ui_hint(tracking_uri, tracked.experiment_id)}")
    return 0
