"""`ptplus-tune [--space NAME|PATH]`: a study on Ray Tune, with progress lines and a final table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ptplus_tune.errors import PTPlusError, first_line
from ptplus_tune.service.interrupt import TIME_BUDGET

LOCAL_UI = "http://127.0.0.1:5000"  # where `ptplus-tune ui` serves MLflow's UI by default
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
    from ptplus_tune.spaces import shipped_spaces

    names = ", ".join(sorted(shipped_spaces(), key=lambda n: (n != "default", n)))
    parser.add_argument("--space", default=None, help=f"shipped space name ({names}) or a YAML file [default]")
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
    parser.add_argument("--dataset", help="dataset for every trial: classification (text, label) or generation "
                        "(prompt, completion; or messages) data, told by its columns [from the space]")
    parser.add_argument("--task", choices=("classification", "generation"), help="force the task instead of "
                        "telling it from the data's columns")
    parser.add_argument("--prompt-column", help="generation data's prompt column [prompt]")
    parser.add_argument("--completion-column", help="generation data's completion column [completion]")
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
    parser.add_argument("--warm-start", metavar="STUDY[,STUDY...]", help="start from earlier studies under "
                        "--storage-path: their best configurations run first, and when they searched the same "
                        "space on the same model and data, TPE also starts from their finished trials")
    parser.add_argument("--time-budget", metavar="DURATION", help="wall time for the study, e.g. 90s, 15m, 2h, "
                        "1h30m: no trial starts that would likely not finish, and at the deadline the running trials "
                        "stop and save; the best evaluated trial is registered as usual (--resume NAME --time-budget "
                        "MORE continues) [from the space, else none]")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI: a server (http://host:5000, what a cluster "
                        "uses) or a database [MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--registered-model", metavar="NAME", help="register the best adapter as a new version of "
                        "NAME [ptplus-<dataset>; --resume: what the study was started with]")
    parser.add_argument("--no-register", action="store_true", help="do not register the best adapter (--resume "
                        "remembers it)")
    parser.add_argument("--register-front", action="store_true", help="a Pareto study (objectives:): also register "
                        "every other member of the front as a version of the registered model, its objectives as "
                        "tags (no alias)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved space and plan, start nothing")
    parser.add_argument("--top", type=int, default=5, help="trials in the final table [5]")
    parser.add_argument("-q", "--quiet", action="store_true", help="plain event lines instead of the live view "
                        "(also the behaviour when the output is not a terminal)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def _apply_overrides(spec, args) -> bool:
    """The command line's settings over the space's; returns whether `--pack auto` waits for a GPU's measurement."""
    from ptplus_tune.service.pack_size import resolve_pack
    from ptplus_tune.spaces import validate

    for flag, attr in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            setattr(spec, attr, getattr(args, flag))
    if args.gpus_per_trial is not None:
        spec.resources.gpus = args.gpus_per_trial
    if args.cpus_per_trial is not None:
        spec.resources.cpus = args.cpus_per_trial
    pending = resolve_pack(spec, args.pack, measure=False)
    for key in ("model", "dataset", "task", "prompt_column", "completion_column"):
        if getattr(args, key) is not None:
            spec.trial[key] = getattr(args, key)
    validate(spec)
    return pending


def _plan(spec, name: str, path, concurrency: tuple[int, int] | None = None) -> str:
    res = spec.resources
    sampler = {"tpe": "TPE", "random": "random search", "nsga2": "NSGA-II"}[spec.sampler]
    if spec.sampler == "tpe":
        sampler += f" after {spec.n_startup_trials} random start-up trials"
    stopping = (f"ASHA may stop trials at steps {spec.rungs} of {spec.max_steps}" if spec.scheduler.type == "asha"
                else f"no early stopping: every trial runs {spec.max_steps} steps")
    if spec.scheduler.type == "asha" and spec.scheduler.group_by:
        stopping += f", each compared only with trials of its own {spec.scheduler.group_by}"
    if spec.scheduler.type == "asha" and spec.objectives:
        stopping += " (ranked by Pareto fronts, then crowding distance)"
    policy = spec.trial_policy()
    evaluations = sorted(set(policy["eval_steps"]) | {spec.max_steps})
    every = spec.trial.get("eval_every")
    stopping += f"; trials evaluate at steps {evaluations}" + (f" and every {every}" if every else "")
    if policy["dead_trial_step"] is not None and spec.metric == "eval_accuracy":
        stopping += (f"; dead trials (chance-level accuracy at step {policy['dead_trial_step']}, NaN or exploding "
                     f"loss) stop at once")
    elif policy["dead_trial_step"] is not None:
        stopping += "; dead trials (NaN or exploding loss) stop at once"
    if spec.time_budget:
        stopping += f"; time budget {spec.time_budget:.0f} s"
    balance = f"; trials take turns over {spec.balance} ({', '.join(map(str, spec.parameter(spec.balance).choices))})" \
        if spec.balance else ""
    return (f"study {name}: {spec.num_samples} trials, {_at_once(spec, concurrency)}, {_each(res)}; {sampler} "
            f"(seed {spec.seed}) optimises {_goal(spec)}{balance}; {stopping}; state in {path}")


def _goal(spec) -> str:
    if not spec.objectives:
        return f"{spec.metric} ({spec.mode})"
    return "the Pareto front of " + ", ".join(f"{m} ({mode})" for m, mode in spec.objectives)


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
    return f"ptplus-tune ui --tracking-uri {uri}   (then open {LOCAL_UI}/{page})"


def compare_link(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare page for these runs: parallel coordinates, scatter plots and metrics side by side."""
    query = f"runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}"
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/compare-runs?{query}"


def check_inputs(spec) -> None:
    """The model and data every trial will load, checked once here so that a bad file is one line before Ray
    starts, not a failure per trial. A space that optimises the other task's metric (`eval_accuracy` on generation
    data, the shipped spaces' default) is switched to this task's, with a note."""
    from ptplus_tune.data.datasets import GENERATION
    from ptplus_tune.data.models import resolve_model
    from ptplus_tune.spaces.spec import TASK_METRICS
    from ptplus_tune.trial import TrialConfig
    from ptplus_tune.trial.host import load_splits

    config = TrialConfig.from_dict(spec.trial, where=spec.source)
    if config.model is not None:
        resolve_model(config.model)
    splits = load_splits(config)
    if splits.task == GENERATION:  # (loads the tokenizer: classification data is checked without transformers)
        from ptplus_tune.trial.tasks import check_generation

        check_generation(config, splits)
    wanted, other = TASK_METRICS[splits.task], [m for t, m in TASK_METRICS.items() if t != splits.task]
    if spec.metric in other:
        print(f"note: {config.dataset} is a {splits.task} task; the study optimises {wanted} instead of "
              f"{spec.metric}", file=sys.stderr)
        spec.metric, spec.mode = wanted, "max"
        spec.objectives = [(wanted, "max") if m in other else (m, d) for m, d in spec.objectives]


def _tracked(action, uri: str, name: str, storage_path: str):
    """The study's last MLflow writes; if the server went away, one line on how to log them once it is back
    (`--resume` of a finished study runs nothing and logs everything again)."""
    from ptplus_tune.service.storage import resume_command

    try:
        return action()
    except Exception as exc:
        raise PTPlusError(f"the study's results are saved, but logging them to MLflow at {uri} failed "
                          f"({first_line(exc)}); "
                          f"once it answers again, `{resume_command(name, storage_path)}` logs them") from exc


@dataclass
class Study:
    """A study as the command line resolved it, before anything starts."""

    name: str
    spec: Any
    path: Any  # service.storage.StudyDir
    resume: bool
    pack_pending: bool = False  # --pack auto on a GPU: measured once Ray is connected
    warm_start: Any = None  # service.warm_start.WarmStart, read when the study is checked


@dataclass
class Connections:
    """Where the study's state goes, checked to answer before Ray starts its trials."""

    tracking_uri: str
    optuna_storage: str
    where: str  # the Ray cluster, in words


def cmd_tune(args) -> int:
    study = resolve_study(args)
    if args.dry_run:
        print_dry_run(study)
        return 0
    connections = check_study(args, study)
    started = time.time()
    target, result = run(args, study, connections)
    if result.interrupted and result.interrupted != TIME_BUDGET:
        return report_interrupted(args, study, target, result, started)
    return report_done(args, study, connections, target, result, started)


def resolve_study(args) -> Study:
    """The space (or a resumed study's saved one) with the command line's settings. Checking the space and printing
    the plan need none of torch, transformers, Ray or MLflow: nothing here loads them."""
    from ptplus_tune.service.storage import StudyDir, check_new, saved_spec
    from ptplus_tune.spaces import load_space

    if args.resume:
        if args.warm_start:
            raise PTPlusError("--warm-start starts a new study; a resumed one keeps what it has")
        if args.space:
            print("note: --resume uses the study's saved space; --space is ignored", file=sys.stderr)
        spec = saved_spec(args.storage_path, args.resume)
        spec.time_budget = _time_budget(args)  # a resumed study is given new time, or none
        _check_front_flag(args, spec)
        return Study(args.resume, spec, StudyDir(args.storage_path, args.resume), resume=True)
    spec = load_space(args.space or "default")
    pending = _apply_overrides(spec, args)
    if args.time_budget is not None:
        spec.time_budget = _time_budget(args)
    _check_front_flag(args, spec)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_new(args.storage_path, name)
    warm = None
    if args.warm_start:
        from ptplus_tune.service.warm_start import load_warm_start

        sources = [s.strip() for s in args.warm_start.split(",") if s.strip()]
        if not sources:
            raise PTPlusError("--warm-start needs one or more study names, e.g. --warm-start default-20261126-101500")
        warm = load_warm_start(sources, args.storage_path, spec)
    return Study(name, spec, StudyDir(args.storage_path, name), resume=False, pack_pending=pending, warm_start=warm)


def _check_front_flag(args, spec) -> None:
    if args.register_front and not spec.objectives:
        raise PTPlusError("--register-front registers a Pareto front: the space needs several `objectives`")


def _time_budget(args) -> float | None:
    from ptplus_tune.spaces.spec import parse_duration

    if args.time_budget is None:
        return None
    try:
        return parse_duration(args.time_budget)
    except ValueError as exc:
        raise PTPlusError(f"--time-budget: {exc}") from None


def print_dry_run(study: Study) -> None:
    print(study.spec.to_yaml().rstrip())
    print(f"# space sha256 {study.spec.sha256}")
    print(f"# {_plan(study.spec, study.name, study.path)}")
    if study.pack_pending:
        print("# --pack auto: trials per GPU are chosen at start from a GPU's free memory (pack above is 1)")


def check_study(args, study: Study) -> Connections:
    """Everything a study needs, checked once before its trials start: model and data, disk room, the Optuna and
    MLflow stores, the Ray cluster and its GPUs (and `--pack auto`'s measurement on a GPU)."""
    from ptplus_tune.service import check_gpus, connect
    from ptplus_tune.service.disk import check_room
    from ptplus_tune.service.optuna_store import check_new_study, open_storage
    from ptplus_tune.service.pack_size import resolve_pack
    from ptplus_tune.service.storage import optuna_storage_of, saved_tracking_uri
    from ptplus_tune.spaces import validate
    from ptplus_tune.tracking import check_reachable, default_tracking_uri

    spec = study.spec
    check_inputs(spec)
    if study.path.local is not None:
        check_room(study.path.local)
    optuna_storage = optuna_storage_of(args.storage_path, study.name, args.optuna_storage)
    if study.resume:
        open_storage(optuna_storage)
    elif args.optuna_storage:  # (the default, a new study's own sqlite file, is created with the study)
        check_new_study(optuna_storage, study.name)
    resumed_uri = saved_tracking_uri(args.storage_path, study.name) if study.resume else None
    tracking_uri = args.tracking_uri or resumed_uri or default_tracking_uri()
    check_reachable(tracking_uri)
    where = connect(args.address)
    if study.pack_pending:
        resolve_pack(spec, "auto", measure=True)
        validate(spec)
    check_gpus(max(spec.resources.share(method)[1] for method in spec.methods))
    return Connections(tracking_uri, optuna_storage, where)


def run(args, study: Study, connections: Connections):
    """The study on Ray Tune with the live view; returns its MLflow target and result."""
    from ptplus_tune.cli import display
    from ptplus_tune.service import concurrency, run_study
    from ptplus_tune.tracking import open_study

    spec = study.spec
    print(f"{'resuming' if study.resume else 'starting'} {_plan(spec, study.name, study.path, concurrency(spec))}; "
          f"on {connections.where}", file=sys.stderr)
    if study.warm_start is not None:
        print(study.warm_start.describe(), file=sys.stderr)
    wanted = "" if args.no_register else args.registered_model or (None if study.resume else
                                                                   default_registered_model(spec))
    tags = {"ptplus.warm_start": ",".join(study.warm_start.sources)} if study.warm_start is not None else {}
    target = open_study(connections.tracking_uri, spec, study.name, resume=study.resume, registered_model=wanted,
                        tags=tags)
    view = display.attach(study.name, args.quiet)
    try:
        result = run_study(spec, study.name, args.storage_path, resume=study.resume, tracking=target,
                           optuna_storage=connections.optuna_storage, warm_start=study.warm_start)
    finally:
        display.detach(view)
    return target, result


def report_interrupted(args, study: Study, target, result, started: float) -> int:
    from ptplus_tune.service.disk import describe, free_bytes
    from ptplus_tune.service.interrupt import LOW_DISK, exit_code
    from ptplus_tune.service.storage import resume_command
    from ptplus_tune.tracking import interrupt_study

    name = study.name
    _tracked(lambda: interrupt_study(target, result), target.uri, name, args.storage_path)
    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "early_stopped", "interrupted")}
    why = f"the disk that holds it is nearly full ({describe(free_bytes(study.path.local))})" \
        if result.interrupted == LOW_DISK else result.interrupted
    print(f"\nstudy {name} interrupted after {time.time() - started:.0f} s ({why}): {counts['completed']} "
          f"trials completed, {counts['early_stopped']} stopped early, {counts['interrupted']} interrupted; "
          f"nothing registered; its state is saved in {study.path}", file=sys.stderr)
    free = "free some space, then " if result.interrupted == LOW_DISK else ""
    print(f"continue it with: {free}{resume_command(name, args.storage_path)}", file=sys.stderr)
    return exit_code(result.interrupted)


def _pareto_table(result, objectives) -> str:
    front = result.pareto_front(objectives)
    done = sum(t.status == "completed" for t in result.trials)
    names = [f"{m} ({mode})" for m, mode in objectives]
    head = f"\nPareto front: {len(front)} of the {done} completed trials on " + ", ".join(names)
    rows = [[t.trial_id, *(_figure(t.metrics[m]) for m, _ in objectives),
             ", ".join(f"{k}={v}" for k, v in sorted(t.config.items()))] for t in front]
    widths = [max(len(str(r[i])) for r in [["trial", *names, "configuration"], *rows]) for i in range(len(names) + 2)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [["trial", *names, "configuration"], *rows]]
    return "\n".join([head, *lines])


def _figure(value) -> str:
    return f"{value:,}" if isinstance(value, int) or float(value).is_integer() else f"{value:.4f}"


def report_done(args, study: Study, connections: Connections, target, result, started: float) -> int:
    """Log the study to MLflow (ranking, registry) and print its summary."""
    from ptplus_tune.service.optuna_store import display_url
    from ptplus_tune.tracking import finish_study

    name, spec, tracking_uri = study.name, study.spec, connections.tracking_uri
    registered_model = default_registered_model(spec) if target.registered_model is None else \
        target.registered_model or None
    print(f"logging the study to MLflow ({tracking_uri}) ...", file=sys.stderr)
    tracked = _tracked(lambda: finish_study(target, result, spec, optuna_storage=result.optuna_storage,
                                            registered_model=registered_model, register_front=args.register_front,
                                            status="time_budget" if result.interrupted == TIME_BUDGET else "finished"),
                       tracking_uri, name, args.storage_path)

    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "early_stopped", "failed",
                                                                      "interrupted")}
    by_asha = sum(t.stop_reason == "asha" for t in result.trials)
    dead = counts["early_stopped"] - by_asha
    dead = f"{dead} stopped by the dead-trial rule, " if dead else ""
    cut = f"{counts['interrupted']} stopped at the deadline, " if counts["interrupted"] else ""
    ended = f"reached its time budget ({spec.time_budget:.0f} s)" if result.interrupted == TIME_BUDGET else "done"
    print(f"\nstudy {name} {ended} after {time.time() - started:.0f} s: {len(result.trials)} of {spec.num_samples} "
          f"trials ({counts['completed']} completed, {by_asha} stopped early by ASHA, {dead}{cut}"
          f"{counts['failed']} failed)")
    if result.interrupted == TIME_BUDGET:
        from ptplus_tune.service.storage import resume_command

        print(f"give it more time with: {resume_command(name, args.storage_path)} --time-budget DURATION")
    best = result.champion(spec)
    if best is None:
        print("no trial reported a result")
        return 1
    print(_table(result, args.top))
    if spec.objectives:
        print(_pareto_table(result, spec.objectives))
    rule = f", picked from the front by select {json.dumps(spec.select)}" if spec.select else ""
    print(f"\nbest {result.metric}: {best.metrics[result.metric]:.4f} (trial {best.trial_id}, step "
          f"{best.metrics.get('step')}{rule})")
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
        if tracked.front_versions:
            print(f"registered the rest of the Pareto front: versions {', '.join(tracked.front_versions)} of "
                  f"{reg.name} (tag ptplus.pareto=true, objectives as ptplus.objective.* tags)")
    print(f"mlflow ui: {ui_hint(tracking_uri, tracked.experiment_id)}")
    top = tracked.ranked_run_ids[:max(args.top, 2)]
    if len(top) >= 2:
        print(f"compare the top {len(top)} trials: {compare_link(tracking_uri, tracked.experiment_id, top)}")
    return 0
