"""Command line: `ptplus-tune [--space ...]` (a study), `ptplus-tune train` (one run), `ptplus-tune ui` and
`ptplus-tune predict` (MLflow). The only place that prints."""

from __future__ import annotations

import logging
import os
import sys

from ptplus_tune.errors import PTPlusError


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Read when transformers, datasets and huggingface_hub are first imported (importing them here would cost
    # seconds on every command, even one that only prints a plan or an error).
    for variable, value in (("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_VERBOSITY", "error"),
                            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(variable, value)
    if "transformers" in sys.modules:  # imported already (e.g. `main` called in-process): too late for those
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    if not verbose:  # e.g. MLflow's "Creating initial MLflow database tables" on a new sqlite file
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per-trial download bars at the end
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        from ptplus_tune.cli.train import build_train_parser, cmd_train

        args, run = build_train_parser().parse_args(argv[1:]), cmd_train
    elif argv and argv[0] in ("ui", "predict"):
        from ptplus_tune.cli import mlflow_cmds

        parser = getattr(mlflow_cmds, f"build_{argv[0]}_parser")()
        args, run = parser.parse_args(argv[1:]), getattr(mlflow_cmds, f"cmd_{argv[0]}")
    else:
        from ptplus_tune.cli.tune import build_tune_parser, cmd_tune

        args, run = build_tune_parser().parse_args(argv), cmd_tune
    try:
        _quiet_libraries(args.verbose)
        return run(args)
    except PTPlusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a study started (a running study handles it: service.interrupt)
        print("interrupted", file=sys.stderr)
        return 130
