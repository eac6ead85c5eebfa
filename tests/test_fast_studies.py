"""Where a study's compute goes: evaluations only where decisions are made, dead trials ended at once, warm workers
that keep the base model between trials, no scratch left behind, and progress that a user can watch."""

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ptplus_tune.trial import TrialConfig, TrialSession, rules, run_trial
from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, space_file, study_runs, trial_results

RUNGS = [2, 4, 8]  # grace_period 2, reduction_factor 2, max_steps 12


@pytest.fixture(scope="module")
def constant_text_data(tmp_path_factory):
    """Every text is the same, labels are balanced: a model can only answer one label for all, so its accuracy is
    never above the majority share (chance level) whatever it learns."""
    path = tmp_path_factory.mktemp("constant") / "same.jsonl"
    rows = [{"text": "the big sea", "label": ["red", "blue", "green"][i % 3]} for i in range(90)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _counting_evaluations(monkeypatch):
    import ptplus_tune.trial.train as train

    steps, real = [], train.evaluate

    def counted(model, *args, **kwargs):
        steps.append(None)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", counted)
    return steps


def test_a_trial_evaluates_exactly_at_its_eval_steps_and_the_end(tiny_trial, monkeypatch):
    calls = _counting_evaluations(monkeypatch)
    logged = []
    config = TrialConfig(**{**tiny_trial, "eval_every": None, "eval_steps": [3, 7], "log_every": 2})
    session = TrialSession(config, on_log=logged.append)
    history = []
    while not session.done:
        history.append(session.advance())
    assert [m["step"] for m in history] == [3, 7, 12] and len(calls) == 3
    # Cheap training-loss points in between, never on an evaluation step (its report carries the loss).
    assert [p["step"] for p in logged] == [2, 4, 6, 8, 10]
    assert all(set(p) == {"step", "train_loss"} for p in logged)


def test_eval_every_adds_evaluations_and_the_default_is_the_final_step_only(tiny_trial, monkeypatch):
    calls = _counting_evaluations(monkeypatch)
    assert [m["step"] for m in run_trial(TrialConfig(**{**tiny_trial, "eval_every": 5})).history] == [5, 10, 12]
    assert [m["step"] for m in run_trial(TrialConfig(**{**tiny_trial, "eval_every": None})).history] == [12]
    assert len(calls) == 4


def test_dead_trial_rule_stops_a_chance_level_trial_at_its_step(tiny_trial, constant_text_data):
    settings = {**tiny_trial, "dataset": constant_text_data, "eval_every": None, "eval_steps": [4, 8]}
    session = TrialSession(TrialConfig(**settings, dead_trial_step=4))
    assert session.chance == pytest.approx(1 / 3, abs=0.05)
    metrics = session.advance()
    assert session.done and metrics["step"] == 4 and metrics["stop_reason"] == rules.CHANCE_LEVEL
    assert metrics["eval_accuracy"] == pytest.approx(session.chance)  # one answer for every text
    without_rule = run_trial(TrialConfig(**settings))  # the same trial without the rule trains its whole budget
    assert [m["step"] for m in without_rule.history] == [4, 8, 12]
    assert "stop_reason" not in without_rule.metrics


def test_a_trial_whose_loss_turns_nan_stops_at_once(tiny_trial):
    import torch

    session = TrialSession(TrialConfig(**{**tiny_trial, "dead_trial_step": 12}))
    with torch.no_grad():  # weights gone NaN, as a diverged update leaves them
        next(p for p in session.model.parameters() if p.requires_grad).fill_(float("nan"))
    metrics = session.advance()
    assert metrics["stop_reason"] == rules.NON_FINITE_LOSS and metrics["step"] == 1 and session.done
    assert "eval_accuracy" in metrics  # it still reports the metric its study ranks by


def test_loss_rules():
    assert rules.loss_verdict(float("nan"), 2.0) == rules.NON_FINITE_LOSS
    assert rules.loss_verdict(float("inf"), None) == rules.NON_FINITE_LOSS
    assert rules.loss_verdict(8.1, 2.0) == rules.EXPLODED_LOSS
    assert rules.loss_verdict(7.9, 2.0) is None and rules.loss_verdict(100.0, None) is None
    assert rules.accuracy_verdict(0.34, 0.34) == rules.CHANCE_LEVEL and rules.accuracy_verdict(0.35, 0.34) is None


def test_a_resumed_trial_keeps_the_rule_state(tiny_trial, tmp_path):
    config = TrialConfig(**{**tiny_trial, "dead_trial_step": 4, "eval_steps": [4, 8], "eval_every": None})
    session = TrialSession(config)
    session.advance()
    checkpoint = session.write_checkpoint(tmp_path)
    resumed = TrialSession(config)
    resumed.restore(checkpoint)
    assert (resumed.step, resumed.dead_checked, resumed.first_window_loss) == \
        (4, True, session.first_window_loss)


def _study(tmp_path, space: str, name: str, tracking_server: str):
    env = ray_env()
    try:
        proc = run_cli(["--space", space, "--storage-path", str(tmp_path / "results"), "--name", name,
                        "--tracking-uri", tracking_server, "--no-register"], env, cwd=tmp_path)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _scratch_in_temp() -> set[str]:
    root = Path(tempfile.gettempdir())
    return {str(p) for p in root.glob("ptplus-trial-*")} | {str(p.parent) for p in root.glob("*/trainer_state.pt")}


def test_a_study_evaluates_at_rungs_reuses_its_worker_and_leaves_no_scratch(tmp_path, tiny_trial, tracking_server):
    """One worker (max_concurrent 1) runs all trials: it loads the base model once; every trial evaluates at the
    ASHA rungs it reaches and at its end, nowhere else; training-loss points fill the curve in MLflow."""
    space = space_file(tmp_path, tiny_trial, num_samples=4, max_concurrent=1)
    data = yaml.safe_load(Path(space).read_text())
    data["trial"].pop("eval_every")
    data["trial"]["log_every"] = 3
    Path(space).write_text(yaml.safe_dump(data, sort_keys=False))
    before = _scratch_in_temp()
    proc = _study(tmp_path, space, "fast", tracking_server)
    results = trial_results(tmp_path / "results" / "fast")
    assert len(results) == 4
    for rows in results.values():
        last = rows[-1]["step"]
        assert [r["step"] for r in rows] == [s for s in RUNGS if s <= last] + ([12] if last == 12 else [])
        assert {r["worker_model_loads"] for r in rows} == {1}  # the second trial on the worker did not reload
    assert "1 at a time" in proc.stderr  # the start line tells the concurrency the cluster gives
    assert not (tmp_path / "results" / "fast" / ".scratch").exists()
    assert _scratch_in_temp() <= before
    client = MlflowClient(tracking_server)
    for run in study_runs(tracking_server, "fast"):
        evals = [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")]
        losses = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        last = int(run.data.metrics["step"])
        assert sorted(evals) == [s for s in [*RUNGS, 12] if s <= last]
        assert losses == sorted({s for s in range(3, last + 1, 3)} | set(evals))  # each step once


def test_a_dead_trial_alone_at_its_rung_stops_with_its_reason(tmp_path, tiny_trial, constant_text_data,
                                                              tracking_server):
    space = space_file(tmp_path, {**tiny_trial, "dataset": constant_text_data}, num_samples=1, max_concurrent=1,
                       scheduler={"grace_period": 2, "reduction_factor": 2, "dead_trials": True})
    proc = _study(tmp_path, space, "dead", tracking_server)
    (rows,) = trial_results(tmp_path / "results" / "dead").values()
    assert rows[-1]["step"] == 2 and rows[-1]["stop_reason"] == "chance_level"  # alone: ASHA could not stop it
    assert "stopped early at step 2 (chance_level)" in proc.stderr
    assert "1 stopped by the dead-trial rule" in proc.stdout
    (run,) = study_runs(tracking_server, "dead")
    assert run.data.tags["ptplus.status"] == "early_stopped"
    assert run.data.tags["ptplus.stop_reason"] == "chance_level"


def test_progress_is_plain_lines_without_a_terminal_or_with_quiet(monkeypatch, capsys):
    import logging
    import sys

    from ptplus_tune.cli import display

    handler = display.attach("s", quiet=False)  # pytest's captured output is not a terminal
    try:
        assert isinstance(handler, display.PlainEvents)
        logging.getLogger("ptplus_tune.progress").info("trial t1 started", extra={"state": {}})
        logging.getLogger("ptplus_tune.progress.live").debug("refresh", extra={"state": {}})  # not an event
    finally:
        display.detach(handler)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith("] trial t1 started") and "\x1b" not in lines[0]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    quiet = display.attach("s", quiet=True)
    display.detach(quiet)
    assert isinstance(quiet, display.PlainEvents)


def test_the_live_view_shows_the_study_and_each_running_trial():
    from rich.console import Console

    from ptplus_tune.cli import display

    state = {"metric": "eval_accuracy", "finished": 3, "running": 1, "stopped": 2, "failed": 0,
             "best": (0.91, "abc12"), "trials": [{"trial_id": "def34", "step": 23, "max_steps": 60,
                                                  "train_loss": 0.4123, "eval": 0.85, "elapsed": 72.0, "eta": 100.0,
                                                  "config": "feature_map=elu, learning_rate=0.001"}]}
    console = Console(record=True, width=160)
    console.print(display.render("study1", state))
    text = console.export_text()
    assert "study study1: 3 done, 1 running, 2 stopped early, 0 failed; best eval_accuracy 0.9100 (abc12)" in text
    row = next(line for line in text.splitlines() if "def34" in line)
    for cell in ("23/60", "0.4123", "0.8500", "1m12s", "1m40s", "feature_map=elu"):
        assert cell in row


def test_the_live_view_shows_a_dash_for_a_loss_not_logged_yet():
    from rich.console import Console

    from ptplus_tune.cli import display

    state = {"metric": "eval_accuracy", "finished": 0, "running": 1, "stopped": 0, "failed": 0, "best": None,
             "trials": [{"trial_id": "new01", "step": 1, "max_steps": 60, "train_loss": float("nan"),
                         "eval": None, "elapsed": 3.0, "eta": None, "config": "feature_map=elu"}]}
    console = Console(record=True, width=160)
    console.print(display.render("study1", state))
    row = next(line for line in console.export_text().splitlines() if "new01" in line)
    assert "nan" not in row and row.split()[:4] == ["new01", "1/60", "-", "-"]


def test_trials_on_one_host_give_exactly_what_fresh_processes_give(tiny_trial):
    """A warm worker runs trials of every method one after another on its resident base model; each trial's curve
    equals the same configuration trained on a freshly loaded model, and the model is loaded once."""
    from ptplus_tune.trial import ModelHost

    timing = ("tokens_per_s", "peak_mem_mb")
    host = ModelHost()
    configs = [{"method": "ptplus", "feature_map": "elu"}, {"method": "prefix_tuning", "prefix_length": 3},
               {"method": "lora"}, {"method": "ptplus", "feature_map": "mlp", "memory": "full"}]
    for overrides in configs:
        config = TrialConfig(**{**tiny_trial, **overrides})
        session = TrialSession(config, host=host)
        warm = []
        while not session.done:
            warm.append({k: v for k, v in session.advance().items() if k not in timing})
        session.close()
        fresh = [{k: v for k, v in m.items() if k not in timing} for m in run_trial(config).history]
        assert warm == fresh, overrides
    assert host.model_loads == 1 and host.data_loads == 1


def test_eval_steps_is_a_train_flag():
    from ptplus_tune.cli.train import build_train_parser

    args = build_train_parser().parse_args(["--eval-steps", "3", "7", "--log-every", "2"])
    assert args.eval_steps == [3, 7] and args.log_every == 2


def test_concurrency_is_what_the_cluster_can_give(monkeypatch):
    import ray

    from ptplus_tune.cli.tune import _plan
    from ptplus_tune.service import concurrency
    from ptplus_tune.spaces import load_space

    env = ray_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = load_space("default")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec.max_concurrent, spec.resources.cpus = 4, 2
        assert concurrency(spec) == (1, 1)  # max_concurrent says 4, two CPUs fit one 2-CPU trial
        spec.resources.cpus = 1
        assert concurrency(spec) == (2, 2)
        compare = load_space("compare")  # PT+ trials packed 4 to a 2-CPU pack; a baseline reserves all 2 CPUs
        compare.max_concurrent, compare.resources.cpus, compare.resources.pack = 8, 2, 4
        assert concurrency(compare) == (1, 4)
        assert "1 to 4 at a time (room for 4 packed Prefix-Tuning+ trials, or 1 PEFT baseline)" in \
            _plan(compare, "c", "/tmp/c", concurrency(compare))
        compare.resources.cpus = 4  # a pack's 4 CPUs: its PT+ trials fit, a baseline does not
        assert concurrency(compare) == (0, 2)
        spec.resources.gpus = 0.25
        assert concurrency(spec) == (0, 0)  # no GPU yet (an autoscaler may add one)
        assert "none fits the cluster yet" in _plan(spec, "d", "/tmp/d", concurrency(spec))
    finally:
        ray.shutdown()
        kill_ray_under(env["RAY_TMPDIR"])
