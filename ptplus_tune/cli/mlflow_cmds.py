"""`ptplus-tune ui` (the MLflow UI on a study's runs) and `ptplus-tune predict` (a logged or registered adapter)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ptplus_tune.errors import PTPlusError, first_line


def build_ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptplus-tune ui", description="Start the MLflow UI on the runs of your "
                                     "studies (on 127.0.0.1; Ctrl-C stops it).")
    parser.add_argument("--tracking-uri", help="[MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--port", type=int, default=5000, help="[5000]")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def cmd_ui(args) -> int:
    from ptplus_tune.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise PTPlusError(f"{uri} is a tracking server already: open it in a browser")
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///"):]):
        raise PTPlusError(f"no tracking database at {uri[len('sqlite:///'):]}: run a study first or pass "
                          f"--tracking-uri")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://127.0.0.1:{args.port} ({uri}); Ctrl-C stops it", file=sys.stderr, flush=True)
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner for a local UI
    os.execv(sys.executable, command)


def build_predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptplus-tune predict", description="Classify text with an adapter logged by a study: the base model "
        "plus the adapter score every label (and optionally generate).",
        epilog="example: ptplus-tune predict --model-uri models:/ptplus-bbc_news@champion --text \"Shares fell...\"")
    parser.add_argument("--model-uri", required=True, help="models:/NAME@champion, models:/NAME/VERSION, "
                        "models:/<model id> or runs:/<run id>/adapter")
    parser.add_argument("--text", action="append", required=True, help="a text to classify (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="also generate this many tokens [0]")
    parser.add_argument("--tracking-uri", help="[MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db]")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def cmd_predict(args) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ptplus_tune.tracking import default_tracking_uri

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(args.model_uri)
    except MlflowException as exc:
        raise PTPlusError(f"could not load {args.model_uri}: {first_line(exc.message, limit=1000)}") from exc
    import pandas as pd

    rows = model.predict(pd.DataFrame({"text": args.text}), params={"max_new_tokens": args.max_new_tokens})
    for text, row in zip(args.text, rows.to_dict("records")):
        if args.json:
            print(json.dumps({"text": text, **row}))
            continue
        if "completion" in row:  # a generative adapter
            print(row["completion"])
            continue
        scores = "  ".join(f"{label} {value:.3f}" for label, value in row["scores"].items())
        print(f"{row['label']}\t{scores}" + (f"\tgenerated: {row['generated']!r}" if "generated" in row else ""))
    return 0
