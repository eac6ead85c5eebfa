"""`ptplus-tune train`: one trial from flags or a YAML file, with a progress bar; writes the adapter."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import typing
from pathlib import Path

from ptplus_tune.atomic import replacing_folder
from ptplus_tune.errors import PTPlusError

TRAIN_EXAMPLES = """examples:
  ptplus-tune train                                   # PT+ (elu, 16 slots) on the embedded SmolLM2 + BBC News
  ptplus-tune train --feature-map gelu --learning-rate 5e-4 --max-steps 100
  ptplus-tune train --method lora --lora-r 8
  ptplus-tune train --model ./my-model --dataset data.jsonl --text-column body --label-column topic
  ptplus-tune train --config trial.yaml --output runs/t1   # YAML keys = the flag names with underscores
  ptplus-tune train --resume-from runs/t1.partial/checkpoint  # continue an interrupted run
"""


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_trial_flags(parser: argparse.ArgumentParser) -> None:
    from ptplus_tune.trial import TrialConfig

    hints = typing.get_type_hints(TrialConfig)
    group = parser.add_argument_group("trial settings (defaults in brackets; a --config file sets them too)")
    for field in dataclasses.fields(TrialConfig):
        flag, hint = "--" + field.name.replace("_", "-"), hints[field.name]
        default = repr(field.default) if field.default is not None else "model: embedded default" \
            if field.name == "model" else "none"
        if hint is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"[{default}]")
            continue
        if typing.get_origin(hint) is list:
            group.add_argument(flag, dest=field.name, type=int, nargs="+", default=None, metavar="STEP",
                               help="[none]")
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kind = _none_or(base) if type(None) in typing.get_args(hint) else base
        group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=base.__name__.upper(),
                           help=f"[{default}]")


def build_train_parser() -> argparse.ArgumentParser:
    train = argparse.ArgumentParser(prog="ptplus-tune train", description="Run one trial and write its adapter.",
                                    epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML file of trial settings; flags override it")
    train.add_argument("--output", help="folder for adapter, metrics and config [outputs/train-<time>]")
    train.add_argument("--resume-from", help="a checkpoint folder written by an interrupted run")
    train.add_argument("-v", "--verbose", action="store_true", help="log details")
    _add_trial_flags(train)
    return train


def cmd_train(args) -> int:
    from tqdm import tqdm

    from ptplus_tune.trial import TrialConfig, run_trial, save_adapter
    from ptplus_tune.trial.config import read_yaml_mapping
    from ptplus_tune.trial.layout import ADAPTER_DIR, CONFIG_FILE, TASK_FILE

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialConfig)
                 if getattr(args, f.name) is not None}
    values = {**(read_yaml_mapping(args.config) if args.config else {}), **overrides}
    values.setdefault("eval_test", True)  # a standalone run reports held-out test accuracy unless told otherwise
    config = TrialConfig.from_dict(values, where=args.config or "flags")
    output = Path(args.output or f"outputs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    if output.exists() and any(output.iterdir()):
        raise PTPlusError(f"output folder {output} is not empty; choose another --output")
    if args.resume_from and not Path(args.resume_from).is_dir():
        raise PTPlusError(f"checkpoint folder {args.resume_from} does not exist")
    partial = output.with_name(output.name + ".partial")  # checkpoints live here until the run completes

    bars: list = []  # the bar appears at the first step, so an input error stays a single line

    def progress(step: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True))
        bars[0].update(step - bars[0].n)

    def report(metrics: dict, checkpoint: str | None) -> None:
        if bars:
            task_metric = "eval_accuracy" if "eval_accuracy" in metrics else "eval_exact_match"
            bars[0].set_postfix({key: f"{metrics[key]:.3f}" for key in ("train_loss", "eval_loss", task_metric)})
        if checkpoint:
            target = partial / "checkpoint"
            shutil.rmtree(target, ignore_errors=True)
            partial.mkdir(parents=True, exist_ok=True)
            shutil.copytree(checkpoint, target)

    started = time.time()
    try:
        result = run_trial(config, report=report, resume_from=args.resume_from, progress=progress)
    except KeyboardInterrupt:
        if (partial / "checkpoint").is_dir():
            print(f"interrupted; resume with: ptplus-tune train ... --output {output} "
                  f"--resume-from {partial / 'checkpoint'}", file=sys.stderr)
        return 130
    finally:
        for bar in bars:
            bar.close()
    with replacing_folder(output) as staging:  # (an existing output was checked empty above)
        save_adapter(result.model, staging / ADAPTER_DIR)
        (staging / "metrics.json").write_text(json.dumps({"final": result.metrics, "history": result.history},
                                                         indent=1))
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1))
        (staging / TASK_FILE).write_text(json.dumps(result.task, indent=1))
    shutil.rmtree(partial, ignore_errors=True)

    final = result.metrics
    figures = "  ".join(f"{key} {final[key]:.3f}" for key in ("eval_accuracy", "eval_exact_match") if key in final)
    figures += f"  eval_loss {final['eval_loss']:.4f}"
    figures += "".join(f"  {key} {final[key]:.3f}" for key in ("test_accuracy", "test_exact_match") if key in final)
    print(f"done in {time.time() - started:.0f} s: step {final['step']}  {figures}")
    print(f"trainable params {final['trainable_params']:,}  tokens/s {final['tokens_per_s']:.0f}  "
          f"peak mem {final['peak_mem_mb']:.0f} MB")
    print(f"adapter: {output / 'adapter'}")
    return 0
