"""The PEFT baselines tabulated like the Prefix-Tuning+ grid (bench/grid.py): LoRA and Prefix-Tuning over their size
parameter and four learning rates, at the PT+ grid's settings (same data, steps and evaluation points), each
configuration's whole learning curve and trainable parameters stored in bench/data/baselines_grid_v1.json. Together
with the PT+ grid it is a search space where accuracy and adapter size trade off (bench/pareto.py).

Resumable like bench/grid.py. LoRA's alpha is twice its rank (the usual scaling, so every rank trains at the same
effective step size); the learning-rate ranges are the compare space's per method (Prefix-Tuning learns slowest).

    python bench/baselines_grid.py             # 24 configurations, about 30 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import grid

BASELINES_FILE = Path(__file__).with_name("data") / "baselines_grid_v1.json"
BASELINES = {  # method: its grid
    "lora": {"lora_r": [2, 8, 32], "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2]},
    "prefix_tuning": {"prefix_length": [4, 16, 64], "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2]},
}
SETTINGS = {k: v for k, v in grid.SETTINGS.items() if k not in ("method", "memory", "feature_dim")}


def configurations() -> list[dict]:
    out = []
    for method, axes in BASELINES.items():
        names = sorted(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            config = {"method": method, **dict(zip(names, values))}
            if method == "lora":
                config["lora_alpha"] = 2 * config["lora_r"]
            out.append(config)
    return out


def key(config: dict) -> str:
    names = ["method", *sorted(BASELINES[config["method"]])]
    return json.dumps({n: config[n] for n in names}, sort_keys=True)


def load(path: Path = BASELINES_FILE) -> dict:
    table = grid.load(path)
    if not table["runs"] and table.get("grid") == grid.GRID:  # a new file
        table.update(grid=BASELINES, settings=SETTINGS)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BASELINES_FILE)
    parser.add_argument("--limit", type=int, help="train at most this many new configurations")
    args = parser.parse_args()
    return grid.resume(load(args.out), args.out, BASELINES, SETTINGS, configurations(), args.limit, describe=key)


if __name__ == "__main__":
    sys.exit(main())
