"""Generative tasks inside a trial: data formats and their detection, completion-only loss with EOS, prompt
truncation, greedy decoding (cached = uncached, for PT+ and the PEFT baselines), scoring, a trial that learns,
packed = alone, the adapter's completions afterwards, and bad generative input as one error line."""

import json

import pytest
import torch

from ptplus_tune.cli import main
from ptplus_tune.data.generation import Pair
from ptplus_tune.data.prompts import IGNORE, CompletionEncoder, collate
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial import TrialConfig, run_trial
from ptplus_tune.trial.generate import exact_match, greedy_completions, load_scorer
from ptplus_tune.trial.host import load_splits
from tests.conftest import generation_rows


def _jsonl(tmp_path, name, rows) -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _chat(rows):
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in rows]


def _tokenizer(tiny_model_dir, chat_template: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if chat_template:
        tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                                   "{% if add_generation_prompt %}Label :{% endif %}")
    return tokenizer


def _config(tiny_trial, dataset, **extra) -> TrialConfig:
    return TrialConfig(**{**tiny_trial, "dataset": dataset, **extra})


def test_the_task_is_told_by_the_columns_or_forced(tmp_path, tiny_trial, synthetic_data, generation_data):
    chat = _jsonl(tmp_path, "chat.jsonl", _chat(generation_rows()))
    assert load_splits(_config(tiny_trial, synthetic_data)).task == "classification"
    splits = load_splits(_config(tiny_trial, generation_data))
    assert splits.task == "generation" and splits.labels == []
    assert (len(splits.validation), len(splits.test), len(splits.train)) == (15, 15, 60)
    assert splits.train[0] == Pair(splits.train[0].prompt, splits.train[0].completion)
    assert splits == load_splits(_config(tiny_trial, generation_data))  # seeded: the same pairs in the same order
    assert len(load_splits(_config(tiny_trial, generation_data, train_size=8)).train) == 8
    chat_splits = load_splits(_config(tiny_trial, chat))
    assert chat_splits.task == "generation" and chat_splits.train[0].chat
    assert chat_splits.train[0].prompt[0][0] == "user"
    renamed = _jsonl(tmp_path, "renamed.jsonl", [{"question": r["prompt"], "answer": r["completion"]}
                                                for r in generation_rows()])
    assert load_splits(_config(tiny_trial, renamed, prompt_column="question", completion_column="answer")).task == \
        "generation"
    with pytest.raises(PTPlusError, match="has no columns 'prompt' and 'completion' nor 'messages'; its columns are: "
                                          "text, label"):
        load_splits(_config(tiny_trial, synthetic_data, task="generation"))
    other = _jsonl(tmp_path, "other.jsonl", [{"q": "a", "a": "b"}] * 40)
    with pytest.raises(PTPlusError) as error:
        load_splits(_config(tiny_trial, other))
    message = str(error.value)
    assert "its columns are: q, a" in message and "`prompt` + `completion`" in message and "`messages`" in message
    assert "`text` + `label`" in message


def test_the_loss_counts_the_completion_and_eos_only(tiny_model_dir):
    tokenizer = _tokenizer(tiny_model_dir)
    encoder = CompletionEncoder(tokenizer, max_length=32)
    pair = Pair("Text : the big sea Label :", "blue .")
    item = encoder.encode(pair)
    batch = collate([item, encoder.encode(Pair("Text : fire Label :", "red ."))], tokenizer.pad_token_id)
    targets = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert targets == tokenizer("blue .", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert item.input_ids[:item.target_start] == tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]


def test_truncation_cuts_the_prompt_start_never_the_completion(tiny_model_dir, tmp_path, tiny_trial):
    encoder = CompletionEncoder(_tokenizer(tiny_model_dir), max_length=8)
    pair = Pair("Text : the big old new small sea on the ice Label :", "blue .")
    item = encoder.encode(pair)
    assert len(item.input_ids) == 8 and len(item.input_ids) - item.target_start == 3  # "blue", ".", EOS
    assert encoder.tokenizer.decode(item.input_ids[:item.target_start]) == "on the ice Label :"  # its last 5
    assert encoder.truncated == {pair}
    too_long = Pair("Text :", "blue . " * 5, where="data.jsonl row 7")
    with pytest.raises(PTPlusError, match=r"data\.jsonl row 7: a completion of 11 tokens"):
        encoder.encode(too_long)


def test_chat_rows_are_checked_and_rendered_with_the_chat_template(tmp_path, tiny_trial, tiny_model_dir):
    rows = _chat(generation_rows())
    rows[3] = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "sea"}]}
    with pytest.raises(PTPlusError, match=r"row 3: the last message is the 'user''s; the completion is a final "
                                          r"assistant turn"):
        load_splits(_config(tiny_trial, _jsonl(tmp_path, "bad-chat.jsonl", rows)))
    rows[3] = {"messages": [{"role": "user", "content": "sea"}, {"role": "assistant", "content": "  "}]}
    with pytest.raises(PTPlusError, match="row 3: the assistant's answer is empty"):
        load_splits(_config(tiny_trial, _jsonl(tmp_path, "empty.jsonl", rows)))
    pair = Pair((("user", "Text : the sea"),), "blue .")
    with pytest.raises(PTPlusError, match="needs a tokenizer with a chat template"):
        CompletionEncoder(_tokenizer(tiny_model_dir), 32).encode(pair)
    encoder = CompletionEncoder(_tokenizer(tiny_model_dir, chat_template=True), 32)
    item = encoder.encode(pair)
    assert encoder.tokenizer.decode(item.input_ids[:item.target_start]) == "Text : the sea Label :"


@pytest.mark.parametrize("method", ["ptplus", "lora", "prefix_tuning"])
def test_greedy_decoding_with_the_cache_equals_decoding_without(tiny_model_dir, method):
    from ptplus_tune.adapter import build_adapter
    from ptplus_tune.data import load_base_model

    base, tokenizer = load_base_model(tiny_model_dir)
    torch.manual_seed(0)
    model = build_adapter(base, {"method": method, "prefix_length": 4})
    with torch.no_grad():  # a trained-looking adapter, so that it changes what the model decodes
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    model.eval()
    encoder = CompletionEncoder(tokenizer, 32)
    pairs = [Pair(p, "") for p in ("Text : the sea Label :", "Text : a big old red fire on the grass Label :",
                                   "Label :")]  # different lengths: left padding in one batch
    cached = greedy_completions(model, encoder, pairs, 6, batch_size=3, device="cpu", use_cache=True)
    uncached = greedy_completions(model, encoder, pairs, 6, batch_size=3, device="cpu", use_cache=False)
    one_by_one = greedy_completions(model, encoder, pairs, 6, batch_size=1, device="cpu")
    assert cached == uncached == one_by_one
    assert any(cached)  # it decoded something
    # ... and it is what the model computes: one whole forward pass per token, no cache, no padding.
    reference = []
    for pair in pairs:
        ids, tokens = torch.tensor([encoder.prompt_ids(pair)]), []
        for _ in range(6):
            token = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
            if token == encoder.eos:
                break
            tokens.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        reference.append(tokenizer.decode(tokens, skip_special_tokens=True))
    assert cached == reference


def first_word(prediction: str, reference: str) -> float:
    """A task's own checker, as a space's `scorer: tests.unit.test_generation:first_word` names it."""
    return float(prediction.split()[:1] == reference.split()[:1])


def test_scoring_by_exact_match_or_a_task_scorer():
    assert exact_match("  blue \n .", "blue .") == 1.0 and exact_match("blue", "blue .") == 0.0
    assert load_scorer(None) is exact_match
    assert load_scorer("tests.unit.test_generation:first_word")("blue x", "blue .") == 1.0
    with pytest.raises(PTPlusError, match="scorer must be module:function"):
        load_scorer("first_word")
    with pytest.raises(PTPlusError, match="scorer 'no_such_module:f' cannot be imported"):
        load_scorer("no_such_module:f")


def a_colour_and_a_full_stop(prediction: str, reference: str) -> float:
    """A checker of the answer's form only (the tiny random model learns the form long before the colours)."""
    words = prediction.split()
    return float(len(words) == 2 and words[0] in ("red", "green", "blue") and words[1] == ".")


def test_a_generation_trial_learns_and_reports_exact_match(tiny_trial, generation_data):
    config = _config(tiny_trial, generation_data, max_steps=48, eval_every=16, eval_test=True)
    result = run_trial(config)
    first, last = result.history[0], result.history[-1]
    assert {"eval_loss", "eval_exact_match", "predictions", "train_loss"} <= set(last)
    assert "eval_accuracy" not in last and {"test_loss", "test_exact_match"} <= set(last)
    assert last["eval_loss"] < first["eval_loss"] and last["test_loss"] < first["eval_loss"]
    assert first["eval_exact_match"] < last["eval_exact_match"]
    shown = last["predictions"]
    assert len(shown) == 5 and set(shown[0]) == {"prompt", "reference", "prediction", "score"}
    assert [row["score"] for row in shown] == [exact_match(row["prediction"], row["reference"]) for row in shown]
    assert result.task["task"] == "generation" and result.task["max_new_tokens"] == 3 + 8  # "red", ".", EOS + margin
    scored = run_trial(_config(tiny_trial, generation_data, max_steps=48, eval_every=48,
                               scorer="tests.unit.test_generation:a_colour_and_a_full_stop"))
    assert scored.metrics["eval_exact_match"] == 1.0  # the task's own scorer: every answer has the right form


def test_packed_generation_trials_train_exactly_as_alone(tiny_trial, generation_data):
    from ptplus_tune.trial.pack import run_packed

    configs = [_config(tiny_trial, generation_data, feature_map=fm, learning_rate=lr, seed=seed)
               for fm, lr, seed in (("elu", 2e-2, 0), ("gelu", 1e-2, 1))]
    packed = run_packed(configs)
    for config, together in zip(configs, packed):
        alone = run_trial(config)
        for a, b in zip(alone.history, together.history):
            assert a["step"] == b["step"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4, abs=1e-5)
            assert a["eval_exact_match"] == b["eval_exact_match"]


def test_a_trained_generation_adapter_completes_prompts(tiny_trial, generation_data, tmp_path, capsys):
    from ptplus_tune.trial import Predictor

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_trial.items()
             if k not in ("dataset", "num_threads", "prompt_template")]
    assert main(["train", *flags, "--dataset", generation_data, "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "eval_exact_match" in printed and "eval_accuracy" not in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["final"]
    predictor = Predictor.from_files(tmp_path / "out" / "adapter", tmp_path / "out" / "task.json", device="cpu")
    shown = metrics["predictions"]
    rows = predictor.predict([row["prompt"] for row in shown])
    assert [row["completion"] for row in rows] == [row["prediction"] for row in shown]  # as its evaluation decoded


BAD = {  # file rows, extra trial settings, expected message
    "no supported columns": ([{"question": "a", "answer": "b"}] * 40, {},
                             "has no column 'text'; its columns are: question, answer; use"),
    "chat without a final assistant turn": (
        [*_chat(generation_rows())[:5], {"messages": [{"role": "user", "content": "sea"}]}], {},
        "row 5: the last message is the 'user''s"),
    "empty prompt": ([{"prompt": " ", "completion": "blue ."}, *generation_rows()[1:]], {},
                     "row 0: prompt ' ' is not a non-empty string"),
    "completion not a string": ([{"prompt": "Text : sea", "completion": 3}] * 40, {},
                                "row 0: completion 3 is not a non-empty string"),
    "completion longer than max_length": ([*generation_rows()[:40], {"prompt": "Text :", "completion": "blue " * 40}],
                                          {}, "row 40: a completion of 41 tokens"),
    "scorer that cannot be imported": (generation_rows(), {"scorer": "nope_module:score"},
                                       "scorer 'nope_module:score' cannot be imported"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_generation_input_is_one_line_before_ray_starts(case, tmp_path, tiny_trial, monkeypatch, capsys):
    import yaml

    rows, extra, message = BAD[case]
    data = tmp_path / "data" / "gen.jsonl"
    data.parent.mkdir()
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = {k: v for k, v in tiny_trial.items() if k not in ("num_threads", "learning_rate")}
    space = tmp_path / "data" / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "gen", "num_samples": 2, "resources": {"cpus": 1}, "scheduler": {"grace_period": 4},
        "trial": {**settings, "dataset": str(data), "validation_size": 5, "test_size": 5, **extra},
        "parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}))
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    assert main(["--space", str(space), "--storage-path", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert str(data) in err[0] or case == "scorer that cannot be imported"  # the error names the file
    assert set(tmp_path.iterdir()) == before  # no study folder, no mlflow.db
    import ray

    assert not ray.is_initialized()


def test_a_reasoning_gym_task_is_made_locally_and_always_the_same(tiny_trial):
    settings = {**tiny_trial, "validation_size": 10, "test_size": 10, "train_size": 20}
    splits = load_splits(_config(settings, "reasoning_gym:aiw"))
    assert splits.task == "generation" and (len(splits.train), len(splits.validation), len(splits.test)) == (20, 10, 10)
    assert all(pair.completion.strip().isdigit() for pair in splits.test)  # "how many sisters ...?" -> a number
    assert splits == load_splits(_config(settings, "reasoning_gym:aiw"))
    with pytest.raises(PTPlusError, match="reasoning_gym:aiw is a generation task"):
        load_splits(_config(settings, "reasoning_gym:aiw", task="classification"))
    with pytest.raises(PTPlusError, match="reasoning-gym has no task 'no_such_task'"):
        load_splits(_config(settings, "reasoning_gym:no_such_task"))


def _padding(order, lengths, batches: int) -> int:
    return sum(max(lengths[i] for i in order.batch(b)) * len(order.batch(b)) - sum(lengths[i] for i in order.batch(b))
               for b in range(batches))


def test_length_grouped_batches_pad_less_and_stay_a_pure_function_of_the_step():
    from ptplus_tune.trial.train import DataOrder

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 160, (240,), generator=generator).tolist()
    grouped, shuffled = DataOrder(240, 4, seed=3, lengths=lengths), DataOrder(240, 4, seed=3)
    epoch = 240 // 4
    assert sorted(i for b in range(epoch) for i in grouped.batch(b)) == list(range(240))  # each example once
    assert sorted(i for b in range(epoch, 2 * epoch) for i in grouped.batch(b)) == list(range(240))
    assert _padding(grouped, lengths, 2 * epoch) < 0.25 * _padding(shuffled, lengths, 2 * epoch)
    again = DataOrder(240, 4, seed=3, lengths=lengths)  # a resumed trial: the same batch at any step
    assert [again.batch(b) for b in (70, 5, 119)] == [grouped.batch(b) for b in (70, 5, 119)]
    assert [grouped.batch(b) for b in range(epoch)] != [grouped.batch(b) for b in range(epoch, 2 * epoch)]


def test_generation_trials_group_batches_by_length_and_classification_keeps_its_order(tiny_trial, generation_data):
    from ptplus_tune.trial.train import TrialSession

    generative = TrialSession(_config(tiny_trial, generation_data))
    assert generative.order.lengths == [len(item.input_ids) for item in generative.train_items]
    assert TrialSession(TrialConfig.from_dict(tiny_trial)).order.lengths is None


def test_a_resumed_generation_trial_reproduces_the_uninterrupted_run(tiny_trial, generation_data, tmp_path):
    """What a retried or resumed Tune trial relies on: checkpoints of a generation trial (its length-grouped batch
    order included) continue exactly where the uninterrupted run went."""
    import shutil

    config = _config(tiny_trial, generation_data, max_steps=12, eval_every=4, grad_accum=2)
    kept = {}

    def keep(metrics, checkpoint):
        kept[metrics["step"]] = shutil.copytree(checkpoint, tmp_path / f"step{metrics['step']}")

    def comparable(history):
        timing = ("tokens_per_s", "peak_mem_mb", "train_step_ms")
        return [{k: v for k, v in m.items() if k not in timing} for m in history]

    full = run_trial(config, report=keep)
    resumed = run_trial(config, resume_from=str(kept[4]))
    assert [m["step"] for m in full.history] == [4, 8, 12]
    assert comparable(resumed.history) == comparable(full.history[1:])


def test_early_evaluations_score_a_fixed_subset_and_the_last_step_all(tiny_trial, generation_data):
    whole = run_trial(_config(tiny_trial, generation_data, max_steps=8, eval_every=4))
    subset = run_trial(_config(tiny_trial, generation_data, max_steps=8, eval_every=4, early_eval_size=3))
    assert len(subset.history[0]["predictions"]) == 3 and len(whole.history[0]["predictions"]) == 5
    assert subset.history[0]["predictions"] == whole.history[0]["predictions"][:3]  # the leading pairs, same model
    assert subset.history[0]["eval_loss"] != whole.history[0]["eval_loss"]
    for key in ("eval_loss", "eval_exact_match", "predictions", "train_loss"):  # the last step: all of them
        assert subset.history[-1][key] == whole.history[-1][key]
