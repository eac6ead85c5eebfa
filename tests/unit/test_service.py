"""The tuning service on a real local Ray instance (2 CPUs) with the tiny model: ASHA, conditions, best, resume."""


import shutil
import subprocess
import sys

import pytest

from tests.ray_env import ray_env
from tests.studies import run_cli, space_file


def test_dry_run_prints_the_resolved_space_and_starts_nothing(tmp_path):
    proc = run_cli(["--space", "default", "--num-samples", "7", "--dry-run", "--storage-path", str(tmp_path)],
                    ray_env())
    assert proc.returncode == 0, proc.stderr
    assert "num_samples: 7" in proc.stdout and "ASHA may stop trials at steps [10, 30]" in proc.stdout
    assert "trials evaluate at steps [10, 30, 60]" in proc.stdout and "dead trials" in proc.stdout
    assert list(tmp_path.iterdir()) == []
    proc = run_cli(["--space", "compare", "--dry-run", "--storage-path", str(tmp_path)], ray_env())
    assert "balance: method" in proc.stdout
    assert "trials take turns over method (ptplus, lora, prefix_tuning)" in proc.stdout
    # --pack auto on CPU is a rule of the space (max_concurrent trials share a node's base model); on a GPU it needs
    # the device's free memory, so the plan says when it will be chosen
    proc = run_cli(["--space", "default", "--max-concurrent", "3", "--pack", "auto", "--dry-run", "--storage-path",
                    str(tmp_path)], ray_env())
    assert "pack: 3" in proc.stdout and "trials packed 3 to a base model" in proc.stdout, proc.stdout
    proc = run_cli(["--space", "default", "--gpus-per-trial", "1", "--pack", "auto", "--dry-run", "--storage-path",
                    str(tmp_path)], ray_env())
    assert "--pack auto: trials per GPU are chosen at start" in proc.stdout, proc.stdout
    proc = run_cli(["--space", "default", "--time-budget", "1h30m", "--dry-run", "--storage-path", str(tmp_path)],
                   ray_env())
    assert "time_budget: 5400.0" in proc.stdout and "; time budget 5400 s" in proc.stdout, proc.stdout
    proc = run_cli(["--space", "default", "--time-budget", "soon", "--storage-path", str(tmp_path)], ray_env())
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: --time-budget: not a duration: 'soon' (e.g. 90s, "
                                                             "15m, 2h, 1h30m)"), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--space", "default", "--dry-run"], ["--space", "nosuch"],
                                  ["--space", "default", "--num-samples", "0"],
                                  ["--space", "default", "--time-budget", "soon"],
                                  ["--space", "default", "--warm-start", "never-ran"],
                                  ["--space", "default", "--warm-start", ","],
                                  ["--resume", "x", "--warm-start", "y"]])
def test_a_plan_or_a_bad_input_answers_without_loading_the_heavy_libraries(tmp_path, args):
    """A dry run or a one-line error loads none of torch, transformers, peft, Ray, MLflow, Optuna (~10 s)."""
    code = ("import sys; from ptplus_tune.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray', 'mlflow', 'optuna', 'datasets') "
            "if m in sys.modules)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args, "--storage-path", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == (0 if "--dry-run" in args else 2), proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert list(tmp_path.iterdir()) == []


def test_checking_a_studys_model_and_data_loads_no_training_stack(tmp_path, tiny_trial):
    """The driver checks every trial's model and data before Ray starts, and its tracking code reads checkpoint
    folders; neither needs torch, transformers or peft (the trials load them). Transformers and peft were ~4 s of
    every study's start here; torch still loads later in the driver, with Tune's TensorBoard logger."""
    code = ("import sys; from ptplus_tune.cli.tune import check_inputs; from ptplus_tune.spaces import load_space; "
            "import ptplus_tune.tracking.pyfunc; check_inputs(load_space(sys.argv[1])); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, space_file(tmp_path, tiny_trial)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_a_restore_whose_checkpoint_was_replaced_continues_from_the_newer_one(tmp_path, tiny_trial):
    """A killed driver's saved state can name a checkpoint `num_to_keep` already deleted (seen in CI): the trial
    continues from the newer one in its folder (a non-final one before a final one, never an older leftover)
    instead of failing."""
    import torch
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    from ptplus_tune.service.trainable import newest_checkpoint
    from ptplus_tune.trial.layout import STATE_FILE

    trial_dir = tmp_path / "trial"
    for index, step in ((1, 2), (4, 8), (5, 10), (6, 12)):
        (trial_dir / f"checkpoint_{index:06d}").mkdir(parents=True)
        torch.save({"step": step}, trial_dir / f"checkpoint_{index:06d}" / STATE_FILE)
    (trial_dir / "checkpoint_000007").mkdir()  # half-written: no state file
    lost = trial_dir / "checkpoint_000003"
    saved = _TrainingResult(checkpoint=Checkpoint(str(lost)), metrics={"step": 6, "training_iteration": 3})

    chosen = newest_checkpoint(saved, max_steps=12)
    assert chosen.checkpoint.path == str(trial_dir / "checkpoint_000005") and chosen.metrics == saved.metrics
    assert lost.is_dir()  # so that Tune can delete it later without failing
    present = _TrainingResult(checkpoint=Checkpoint(str(trial_dir / "checkpoint_000001")), metrics={})
    assert newest_checkpoint(present, max_steps=12) is present
    nothing = _TrainingResult(checkpoint=Checkpoint(str(tmp_path / "other" / "checkpoint_000000")), metrics={})
    assert newest_checkpoint(nothing, max_steps=12) is nothing  # Tune then reports the missing checkpoint itself
    # Only the final one is left (seen in CI: the driver died after the last checkpoint was persisted and the one
    # before deleted, before Tune saved its state or the final report): continue from it; the trial reports its end
    # again (test_trial.py::test_a_trial_restored_from_its_final_checkpoint_reports_its_end_again).
    for index in (1, 3, 4, 5):
        shutil.rmtree(trial_dir / f"checkpoint_{index:06d}")
    chosen = newest_checkpoint(saved, max_steps=12)
    assert chosen.checkpoint.path == str(trial_dir / "checkpoint_000006")
