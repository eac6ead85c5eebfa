"""One trial on a tiny model: determinism, resume, label scoring, loss masking, every method trains, bad input."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptplus_tune.adapter import PTPlusModel
from ptplus_tune.data import Example, PromptEncoder, collate, load_base_model
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial import TrialConfig, run_trial, score_labels
from ptplus_tune.trial.evaluate import evaluate

TIMING = {"tokens_per_s", "peak_mem_mb", "train_step_ms"}


def _comparable(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_same_config_and_seed_give_the_same_curve(tiny_trial):
    config = TrialConfig(**tiny_trial)
    first, second = run_trial(config), run_trial(config)
    assert len(first.history) == 3 and [m["step"] for m in first.history] == [4, 8, 12]
    assert _comparable(first.history) == _comparable(second.history)
    other = run_trial(TrialConfig(**{**tiny_trial, "seed": 1}))
    assert _comparable(other.history) != _comparable(first.history)


@pytest.mark.parametrize("method", ["ptplus", "lora"])
def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tiny_trial, tmp_path, method):
    config = TrialConfig(**{**tiny_trial, "method": method, "grad_accum": 2, "lora_dropout": 0.1})
    kept = {}

    def keep(metrics, checkpoint):
        target = tmp_path / f"step{metrics['step']}"
        shutil.copytree(checkpoint, target)
        kept[metrics["step"]] = target

    full = run_trial(config, report=keep)
    resumed = run_trial(config, resume_from=str(kept[4]))
    assert _comparable(resumed.history) == _comparable(full.history[1:])


def test_checkpoints_live_in_a_scratch_folder_only_while_there_is_a_report(tiny_trial, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = TrialConfig(**{**tiny_trial, "max_steps": 4, "eval_every": 2})
    seen = []  # what the temporary folder holds while the trial trains (a killed process would leave it behind)
    run_trial(config, progress=lambda step, total: seen.extend(os.listdir(tmp_path)))
    assert not seen  # no report: no scratch
    handed = []
    run_trial(config, report=lambda metrics, checkpoint: handed.append((checkpoint, os.listdir(checkpoint))))
    assert len(handed) == 2 and all(f"{tmp_path}/ptplus-trial-" in c and files for c, files in handed)
    assert not list(tmp_path.iterdir())  # removed on the way out


def test_resume_refuses_a_checkpoint_of_other_hyperparameters(tiny_trial, tmp_path):
    kept = []
    run_trial(TrialConfig(**{**tiny_trial, "max_steps": 4}),
              report=lambda m, c: kept.append(shutil.copytree(c, tmp_path / "ckpt")))
    with pytest.raises(PTPlusError, match="other hyperparameters \\(learning_rate\\)"):
        run_trial(TrialConfig(**{**tiny_trial, "max_steps": 4, "learning_rate": 1.0}), resume_from=kept[0])
    with pytest.raises(PTPlusError, match="is at step 4, max_steps is 4: nothing left to train"):
        run_trial(TrialConfig(**{**tiny_trial, "max_steps": 4}), resume_from=kept[0])


def test_a_trial_restored_from_its_final_checkpoint_reports_its_end_again(tiny_trial, tmp_path):
    """What a Tune trial does when a killed driver lost its final report but not its final checkpoint."""
    from ptplus_tune.trial import TrialSession
    from ptplus_tune.trial.pack import TrialPack

    config = TrialConfig(**{**tiny_trial, "eval_test": True})
    session = TrialSession(config)
    while not session.done:
        last = session.advance()
    session.save(tmp_path / "final")
    for again in (TrialSession(config), TrialPack().attach("a", config)):
        again.restore(tmp_path / "final", final_ok=True)
        assert again.done
        assert _comparable([again.report_again()]) == _comparable([last]) and last["step"] == config.max_steps
    with pytest.raises(PTPlusError, match="nothing left to train"):  # `ptplus-tune train --resume-from` refuses it
        TrialSession(config).restore(tmp_path / "final")


def _hand_scores(model, tokenizer, prompt_template, target_template, examples, labels):
    """Each candidate's summed target log-probability, one unbatched forward per (example, label)."""
    rows = []
    for ex in examples:
        prompt = tokenizer(prompt_template.format(text=ex.text), add_special_tokens=False)["input_ids"]
        row = []
        for label in labels:
            target = tokenizer(target_template.format(label=label), add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([prompt + target])).logits[0]
            logp = F.log_softmax(logits, -1)
            row.append(sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)))
        rows.append(row)
    return torch.tensor(rows)


def test_both_kinds_of_session_satisfy_the_protocol_the_trainable_talks_to(tiny_trial):
    """The trainable drives a TrialSession in its own process or a RemoteSession on a pack host through one
    protocol (trial.Session); a member missing from either would only show in a study."""
    import inspect

    from ptplus_tune.service.pack_host import RemoteSession
    from ptplus_tune.trial import Session, TrialSession

    session = TrialSession(TrialConfig(**tiny_trial))
    assert isinstance(session, Session)
    assert (session.step, session.pack_trials, session.model_loads, session.done) == (0, 1, 1, False)
    methods = {name for name, member in vars(Session).items() if inspect.isfunction(member) and name[0] != "_"}
    assert methods == {"advance", "report_again", "save", "restore", "close"}
    for name in methods:
        assert inspect.signature(getattr(RemoteSession, name)).parameters.keys() == \
            inspect.signature(getattr(Session, name)).parameters.keys(), name
    source = inspect.getsource(RemoteSession)  # its data members are set from the host's answers
    for attribute in ("step", "done", "train_loss", "model_loads", "pack_trials"):
        assert f"self.{attribute}" in source, attribute


@pytest.mark.parametrize("target_template", [" {label}", " {label} ."])  # one-token fast path, general path
def test_label_scoring_matches_a_hand_computed_case(tiny_model_dir, target_template):
    model, tokenizer = load_base_model(tiny_model_dir)
    examples = [Example("the sea", "blue"), Example("a big old fire on grass", "red"), Example("frog", "green")]
    labels = ["blue", "green", "red"]
    encoder = PromptEncoder(tokenizer, 32, "Text : {text} Label :", target_template)
    with torch.no_grad():
        got = score_labels(model, encoder, examples, labels, batch_size=2, device="cpu")
        want = _hand_scores(model, tokenizer, "Text : {text} Label :", target_template, examples, labels)
        metrics = evaluate(model, encoder, examples, labels, batch_size=2, device="cpu")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gold = torch.tensor([0, 2, 1])
    assert metrics["accuracy"] == pytest.approx((want.argmax(1) == gold).float().mean().item())
    tokens_per_target = len(target_template.split())
    assert metrics["loss"] == pytest.approx(-want[torch.arange(3), gold].sum().item() / (3 * tokens_per_target),
                                            rel=1e-5)


def test_generation_accuracy_matches_unpadded_greedy_decoding(tiny_model_dir):
    from ptplus_tune.trial.evaluate import generation_accuracy

    model, tokenizer = load_base_model(tiny_model_dir)
    encoder = PromptEncoder(tokenizer, 32, "Text : {text} Label :")
    texts = ["the sea", "a big old fire on grass", "frog", "old new on in the leaf"]
    with torch.no_grad():  # one prompt at a time, no padding: what the left-padded batch must reproduce
        greedy = [tokenizer.decode(model(torch.tensor([encoder.prompt_ids(t, room_for=1)])).logits[0, -1].argmax())
                  for t in texts]
    # Gold = the unpadded greedy word for the first two, something else for the last two: accuracy is exactly 1/2.
    examples = [Example(t, g.strip() if i < 2 else g.strip() + "x") for i, (t, g) in enumerate(zip(texts, greedy))]
    assert generation_accuracy(model, encoder, examples, batch_size=4, device="cpu") == 0.5


def test_training_loss_counts_target_tokens_only(tiny_model_dir):
    model, tokenizer = load_base_model(tiny_model_dir)
    encoder = PromptEncoder(tokenizer, 32, "Text : {text} Label :", " {label} .")
    items = [encoder.encode("the sea", "blue"), encoder.encode("a big old fire on the grass", "red")]
    batch = collate(items, tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(**batch).loss
        logp = F.log_softmax(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    nll = [-logp[row, pos - 1, it.input_ids[pos]] for row, it in enumerate(items)
           for pos in range(it.target_start, len(it.input_ids))]
    assert len(nll) == 4
    torch.testing.assert_close(loss, torch.stack(nll).mean())


@pytest.mark.parametrize("method", ["ptplus", "lora", "prefix_tuning"])
def test_each_method_trains(tiny_trial, method):
    config = TrialConfig(**{**tiny_trial, "method": method, "max_steps": 24, "eval_every": 24, "eval_test": True})
    model, tokenizer = load_base_model(config.model)
    encoder = PromptEncoder(tokenizer, config.max_length, config.prompt_template)
    from ptplus_tune.trial.host import load_splits

    splits = load_splits(config)
    before = evaluate(model, encoder, splits.validation, splits.labels, 16, "cpu")
    result = run_trial(config, base=(model, tokenizer))
    assert result.metrics["eval_loss"] < 0.9 * before["loss"], (before, result.metrics)
    assert {"test_loss", "test_accuracy", "trainable_params", "tokens_per_s", "peak_mem_mb"} <= set(result.metrics)


@pytest.mark.parametrize("bad, message", [
    ({"model": "/nonexistent/model"}, "model path /nonexistent/model does not exist"),
    ({"text_column": "body"}, "has no column 'body'"),
    ({"k_shot": 40}, "has 90 rows but the splits need 150"),
    ({"validation_size": 0}, "validation_size must be an integer >= 1"),
    ({"learning_rate": -1.0}, "learning_rate must be > 0"),
    ({"feature_map": "tanh"}, "unknown feature_map 'tanh'"),
    ({"method": "adapters"}, "unknown method 'adapters'"),
])
def test_bad_input_fails_before_training(tiny_trial, bad, message):
    reports = []
    with pytest.raises(PTPlusError, match=message):
        run_trial(TrialConfig(**{**tiny_trial, **bad}), report=lambda m, c: reports.append(m))
    assert reports == []


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ptplus_tune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _flags(tiny_trial):
    out = []
    for key, value in tiny_trial.items():
        out += [f"--{key.replace('_', '-')}", "none" if value is None else str(value)]
    return out


def test_cli_train_writes_an_adapter_that_reproduces_its_metrics(tiny_trial, tmp_path):
    proc = _cli("train", *_flags(tiny_trial), "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "eval_accuracy" in proc.stdout and "adapter:" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapter", "metrics.json", "task.json",
                                                                     "trial_config.json"]
    assert not (tmp_path / "run.partial").exists()
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    config = TrialConfig(**tiny_trial)
    model, tokenizer = load_base_model(config.model)
    model = PTPlusModel.from_pretrained(model, tmp_path / "run" / "adapter")
    from ptplus_tune.trial.host import load_splits

    splits = load_splits(config)
    again = evaluate(model, PromptEncoder(tokenizer, config.max_length, config.prompt_template), splits.validation,
                     splits.labels, 16, "cpu")
    assert again["accuracy"] == pytest.approx(final["eval_accuracy"])
    assert again["loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    # task.json is all a later process needs besides the adapter: the Predictor scores exactly like evaluation.
    from ptplus_tune.trial import Predictor

    predictor = Predictor.from_files(tmp_path / "run" / "adapter", tmp_path / "run" / "task.json")
    assert predictor.labels == splits.labels and predictor.task["model"] == str(Path(tiny_trial["model"]).resolve())
    predicted = [row["label"] for row in predictor.predict([ex.text for ex in splits.validation])]
    assert sum(p == ex.label for p, ex in zip(predicted, splits.validation)) / len(predicted) == \
        pytest.approx(final["eval_accuracy"])


@pytest.mark.parametrize("bad, message", [
    (["--k-shot", "99"], "error: .*has 90 rows but the splits need .* 99 per class x 3 classes"),
    (["--dataset", "missing.jsonl"], "error: data file missing.jsonl does not exist"),
    (["--feature-map", "tanh"], "error: unknown feature_map 'tanh'; choose one of"),
    (["--config", "nope.yaml"], "error: config file nope.yaml does not exist"),
])
def test_cli_bad_input_is_one_error_line_and_writes_nothing(tiny_trial, tmp_path, bad, message):
    proc = _cli("train", *_flags(tiny_trial), "--output", "out", *bad, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and __import__("re").match(message, lines[0]), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_trial_config_from_yaml_with_flag_overrides(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("feature_map: gelu\nlearning_rate: 0.002\nmax_steps: 30\n")
    config = TrialConfig.from_yaml(path, max_steps=5)
    assert (config.feature_map, config.learning_rate, config.max_steps) == ("gelu", 0.002, 5)
    path.write_text("feature_mapp: gelu\n")
    with pytest.raises(PTPlusError, match="unknown key\\(s\\) feature_mapp"):
        TrialConfig.from_yaml(path)
