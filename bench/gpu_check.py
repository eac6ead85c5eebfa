"""`make gpu-check`: prove the GPU path end to end in one short run (at most ~8 minutes on one GPU) and write the
figures to bench/data/gpu_check.json (rewritten after every step, so a cut-off run keeps what it measured).

Steps, each a subprocess with its own time limit:
  1. the device (name, memory, bf16 support);
  2. a bf16 `ptplus-tune train` on the embedded model and data (30 steps, validation and test accuracy);
  3. `ptplus-tune --space quick --gpus-per-trial 0.25` (four trials share the GPU as separate processes);
  4. the same study packed: `--gpus-per-trial 1 --pack 4` (one base model, one host);
  5. `bench/adapter_overhead.py` on the GPU (step time and peak memory of PT+ vs LoRA, Prefix-Tuning, the floor);
  6. `bench/packing.py` on the GPU, K = 1, 2, 4, 8 (packed vs one process per trial at 1/K GPU each).
Every figure in the JSON was measured by this run; a step that failed or ran out of time says so.

    python bench/gpu_check.py                     # writes bench/data/gpu_check.json
    python bench/gpu_check.py --cpu-smoke   # the same steps, tiny, on CPU: checks this script without a GPU
                                            # (no GPU figures; written to the temporary folder)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ptplus_tune.cli"]


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_step(name: str, command: list[str], limit_s: int, env: dict, cwd: str) -> dict:
    print(f"== {name}: {' '.join(command)} (limit {limit_s} s)", flush=True)
    started = time.time()
    try:
        proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=limit_s)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # its output so far comes as bytes even with text=True
        rc, out, err = "timeout", _text(exc.stdout), _text(exc.stderr)
    seconds = round(time.time() - started, 1)
    print(out[-2000:], err[-1500:] if rc != 0 else "", f"-> rc {rc} in {seconds} s", sep="\n", flush=True)
    return {"command": " ".join(command), "rc": rc, "seconds": seconds, "stdout_tail": out[-3000:],
            "stderr_tail": err[-3000:] if rc != 0 else ""}


def device_info(smoke: bool) -> dict:
    import torch

    if smoke:
        return {"name": "cpu (smoke run: not GPU figures)", "torch": torch.__version__}
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no GPU here (torch.cuda.is_available() is False)")
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return {"name": props.name, "total_gib": round(total / 2**30, 1), "free_gib": round(free / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__, "cuda": torch.version.cuda}


def study_figures(step: dict) -> dict:
    out = step["stdout_tail"]
    done = re.search(r"done after (\d+) s: (\d+) of \d+ trials \((\d+) completed", out)
    best = re.search(r"best eval_accuracy: ([0-9.]+)", out)
    return {"study_s": int(done.group(1)) if done else None, "trials": int(done.group(2)) if done else None,
            "best_eval_accuracy": float(best.group(1)) if best else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="where the figures go [bench/data/gpu_check.json; with --cpu-smoke "
                        "gpu_check_cpu_smoke.json in the temporary folder, never beside the GPU figures]")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every step on CPU with tiny budgets")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "gpu_check_cpu_smoke.json" if smoke else
                       ROOT / "bench" / "data" / "gpu_check.json")
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_info(smoke), "steps": {}}
    out_path = Path(args.out)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))

    save()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tracking = f"sqlite:///{tmp}/mlflow.db"
        budget = ["--max-steps", "4", "--eval-every", "4", "--k-shot", "2", "--validation-size", "10",
                  "--test-size", "10", "--max-length", "48"] if smoke else ["--max-steps", "30", "--eval-every", "30"]
        train = run_step("train_bf16", [*CLI, "train", "--device", "cpu" if smoke else "cuda", *budget, "--eval-test",
                                        "--output", f"{tmp}/train"], 150, env, tmp)
        metrics_file = Path(tmp) / "train" / "metrics.json"
        if metrics_file.is_file():
            train["metrics"] = json.loads(metrics_file.read_text())
        report["steps"]["train_bf16"] = train
        save()
        common = ["--space", "quick", "--storage-path", f"{tmp}/studies", "--tracking-uri", tracking,
                  "--no-register", "-q"]
        gpus = ("0", "0") if smoke else ("0.25", "1")
        for name, extra in (("quick_gpu_0.25", ["--gpus-per-trial", gpus[0], "--max-concurrent", "4"]),
                            ("quick_packed_4", ["--gpus-per-trial", gpus[1], "--pack", "4", "--max-concurrent", "4"])):
            step = run_step(name, [*CLI, *common, "--name", name.replace(".", ""), *extra], 150, env, tmp)
            step.update(study_figures(step))
            report["steps"][name] = step
            save()
        report["steps"]["adapter_overhead"] = run_step(
            "adapter_overhead", [sys.executable, str(ROOT / "bench" / "adapter_overhead.py"), "--rounds", "5",
                                 *(["--layers", "2", "--seq", "64"] if smoke else [])], 60, env, tmp)
        save()
        packing_json = Path(tmp) / "packing.json"
        step = run_step("packing", [sys.executable, str(ROOT / "bench" / "packing.py"), "--json", str(packing_json),
                                    "--rounds", "1",
                                    *(["--ks", "1", "2", "--steps", "1"] if smoke else ["--steps", "6"])],
                        150, env, tmp)
        if packing_json.is_file():
            step["figures"] = json.loads(packing_json.read_text())
        report["steps"]["packing"] = step
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    failed = [n for n, s in report["steps"].items() if s["rc"] != 0]
    print(f"gpu-check: {len(report['steps']) - len(failed)} of {len(report['steps'])} steps passed"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; figures in {out_path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
