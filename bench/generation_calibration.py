"""Is a generative task a good embedded default? Zero-shot exact match of the bare embedded SmolLM2 against a short
Prefix-Tuning+ training, on the same test split, for each task named (2 CPU cores: a few minutes per task).

    python bench/generation_calibration.py reasoning_gym:aiw reasoning_gym:syllogism --max-steps 60
"""

from __future__ import annotations

import argparse
import collections
import time

from ptplus_tune.trial import TrialConfig, run_trial
from ptplus_tune.trial.device import pick_device
from ptplus_tune.trial.host import load_splits
from ptplus_tune.trial.tasks import GenerationTask


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--feature-map", default="elu")
    parser.add_argument("--train-size", type=int, default=240)
    parser.add_argument("--validation-size", type=int, default=60)
    parser.add_argument("--test-size", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=160)
    args = parser.parse_args()
    from ptplus_tune.data import load_base_model

    print("| task | majority answer share (test) | zero-shot test EM | PT+ test EM | lift (points) | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for dataset in args.datasets:
        config = TrialConfig(dataset=dataset, max_steps=args.max_steps, learning_rate=args.learning_rate,
                             feature_map=args.feature_map, train_size=args.train_size,
                             validation_size=args.validation_size, test_size=args.test_size,
                             max_length=args.max_length, eval_test=True, eval_steps=[args.max_steps])
        splits = load_splits(config)
        device, dtype = pick_device("auto")
        model, tokenizer = load_base_model(None, device=str(device), dtype=dtype)
        bare = GenerationTask(config, tokenizer, splits, device)
        zero_shot = bare.final_metrics(model)["test_exact_match"]
        majority = collections.Counter(p.completion for p in splits.test).most_common(1)[0][1] / len(splits.test)
        started = time.perf_counter()
        result = run_trial(config)
        seconds = time.perf_counter() - started
        trained = result.metrics["test_exact_match"]
        print(f"| {dataset} | {majority:.1%} | {zero_shot:.1%} | {trained:.1%} | {100 * (trained - zero_shot):+.1f} | "
              f"{seconds:.0f} |", flush=True)
        for row in result.metrics["predictions"][:3]:
            print(f"|   e.g. | {row['reference']!r} | | {row['prediction']!r} | | |", flush=True)


if __name__ == "__main__":
    main()
