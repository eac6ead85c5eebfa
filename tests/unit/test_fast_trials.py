"""Where a study's compute goes: evaluations only where decisions are made, dead trials ended at once, warm workers
that keep the base model between trials, no scratch left behind, and progress that a user can watch."""


import pytest

from ptplus_tune.trial import TrialConfig, TrialSession, rules, run_trial

RUNGS = [2, 4, 8]  # grace_period 2, reduction_factor 2, max_steps 12


def _counting_evaluations(monkeypatch):
    import ptplus_tune.trial.tasks as tasks

    steps, real = [], tasks.evaluate

    def counted(model, *args, **kwargs):
        steps.append(None)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tasks, "evaluate", counted)
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

    timing = ("tokens_per_s", "peak_mem_mb", "train_step_ms")
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
