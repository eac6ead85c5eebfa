"""The tabulated benchmark: train a full Prefix-Tuning+ grid on the embedded default model and data and store every
configuration's whole learning curve, with the settings that produced it, in a versioned data file under bench/.

Resumable: configurations already in the file are skipped, each finished one is appended atomically (write a copy,
then rename), so a killed run loses at most the configuration it was training. Uses a GPU when torch sees one.

    python bench/grid.py                      # bench/data/ptplus_grid_v1.json (about an hour on 2 CPU cores)
    python bench/grid.py --limit 4            # a few configurations, e.g. to check the setup
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import sys
import time
from pathlib import Path

GRID_FILE = Path(__file__).with_name("data") / "ptplus_grid_v1.json"
# The grid: every feature map x 3 prefix lengths x 4 learning rates, the same step budget and evaluation points.
GRID = {
    "feature_map": ["elu", "elu_plus_one", "gelu", "relu", "identity", "mlp"],
    "prefix_length": [4, 16, 64],
    "learning_rate": [1e-4, 3e-4, 1e-3, 3e-3],
}
SETTINGS = {  # fixed trial settings: a cheaper cousin of search_spaces/default.yaml so the grid fits a CPU
    "method": "ptplus", "memory": "slots", "feature_dim": 32, "dataset": "bbc_news", "k_shot": 4,
    "validation_size": 60, "test_size": 100, "max_length": 64, "batch_size": 4, "max_steps": 40, "eval_every": 10,
    "warmup_ratio": 0.1, "seed": 0, "data_seed": 0,
}


def configurations() -> list[dict]:
    keys = sorted(GRID)
    return [dict(zip(keys, values)) for values in itertools.product(*(GRID[k] for k in keys))]


def key(config: dict) -> str:
    return json.dumps({k: config[k] for k in sorted(GRID)}, sort_keys=True)


def load(path: Path = GRID_FILE) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "ptplus-tune")}
    return {"version": 1, "grid": GRID, "settings": SETTINGS, "metric": "eval_accuracy", "mode": "max",
            "libraries": versions, "runs": []}


def save(table: dict, path: Path = GRID_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(table, indent=1))
    os.replace(tmp, path)


def train(table: dict, todo: list[dict], settings: dict, out: Path, describe=key) -> None:
    """Train each configuration of `todo` with `settings` and append its curve to `table`, saved after each."""
    from ptplus_tune.data import load_base_model
    from ptplus_tune.trial import TrialConfig, run_trial
    from ptplus_tune.trial.device import pick_device

    device, dtype = pick_device("auto")
    print(f"{len(table['runs'])} configurations in {out}; training {len(todo)} on {device}", file=sys.stderr)
    for i, config in enumerate(todo, 1):
        started = time.perf_counter()
        base = load_base_model(None, device=str(device), dtype=dtype)
        result = run_trial(TrialConfig.from_dict({**settings, **config}), base=base)
        seconds = time.perf_counter() - started
        curve = [{k: h[k] for k in ("step", "train_loss", "eval_loss", "eval_accuracy", "train_step_ms")} for h in
                 result.history]
        table["runs"].append({"config": config, "curve": curve, "seconds": round(seconds, 1),
                              "trainable_params": int(result.history[-1]["trainable_params"]),
                              "device": str(device)})
        save(table, out)
        print(f"[{i}/{len(todo)}] {describe(config)}: eval_accuracy {curve[-1]['eval_accuracy']:.3f} "
              f"({seconds:.0f} s)", file=sys.stderr, flush=True)


def resume(table: dict, out: Path, grid: dict, settings: dict, todo: list[dict], limit: int | None,
           describe=key) -> int:
    """Train the configurations of `todo` the table does not hold yet (at most `limit`), if it has these settings."""
    if table["settings"] != settings or table["grid"] != grid:
        print(f"error: {out} was made with other settings; move it away or write to --out", file=sys.stderr)
        return 2
    done = {describe(run["config"]) for run in table["runs"]}
    train(table, [c for c in todo if describe(c) not in done][:limit], settings, out, describe)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=GRID_FILE)
    parser.add_argument("--limit", type=int, help="train at most this many new configurations")
    args = parser.parse_args()
    return resume(load(args.out), args.out, GRID, SETTINGS, configurations(), args.limit)


if __name__ == "__main__":
    sys.exit(main())
