"""Data: embedded corpus, local files, stable stratified splits, k-shot, prompts, bad input."""

import json
import re
from collections import Counter

import pytest

from ptplus_tune.data import Example, PromptEncoder, collate, load_labelled, make_splits
from ptplus_tune.data.datasets import bbc_news
from ptplus_tune.data.models import resolve_model
from ptplus_tune.errors import PTPlusError
from tests.conftest import synthetic_rows


def test_embedded_bbc_news_has_five_classes_from_folder_names():
    examples = bbc_news()
    assert len(examples) == 2225
    assert sorted(Counter(e.label for e in examples)) == ["business", "entertainment", "politics", "sports", "tech"]
    assert all(e.text for e in examples)


def _parts(n=90):
    return {"all": [Example(r["text"], r["label"]) for r in synthetic_rows(n)]}


def test_splits_are_stable_disjoint_and_stratified():
    a = make_splits(_parts(), validation_size=15, test_size=30, seed=3)
    b = make_splits(_parts(), validation_size=15, test_size=30, seed=3)
    assert a == b
    assert make_splits(_parts(), validation_size=15, test_size=30, seed=4).test != a.test
    assert (len(a.train), len(a.validation), len(a.test)) == (45, 15, 30)
    assert Counter(e.label for e in a.test) == {"blue": 10, "green": 10, "red": 10}
    assert Counter(e.label for e in a.validation) == {"blue": 5, "green": 5, "red": 5}
    ids = lambda split: {id(e) for e in split}
    assert not ids(a.train) & ids(a.test) and not ids(a.train) & ids(a.validation)
    assert a.labels == ["blue", "green", "red"]


def test_k_shot_takes_k_per_class_and_refuses_more_than_a_class_has():
    splits = make_splits(_parts(), validation_size=15, test_size=30, k_shot=4)
    assert Counter(e.label for e in splits.train) == {"blue": 4, "green": 4, "red": 4}
    few_red = {"all": [e for e in _parts()["all"] if e.label != "red"] + [e for e in _parts()["all"]
                                                                          if e.label == "red"][:10]}
    with pytest.raises(PTPlusError, match=r"k_shot=12 but class 'red' has only \d+ training examples"):
        make_splits(few_red, validation_size=3, test_size=3, k_shot=12)


@pytest.mark.parametrize("sizes, k_shot, need", [
    ((150, 300), None, "453 (validation_size 150 + test_size 300 + 1 per class x 3 classes for training)"),
    ((15, 30), 16, "93 (validation_size 15 + test_size 30 + 16 per class x 3 classes for training)"),
])
def test_too_few_rows_for_the_splits_is_one_clear_error(sizes, k_shot, need):
    with pytest.raises(PTPlusError, match=re.escape(f"colours.jsonl has 90 rows but the splits need {need}")):
        make_splits(_parts(), *sizes, k_shot=k_shot, where="colours.jsonl")


def test_given_splits_count_only_what_they_do_not_provide():
    rows = _parts()["all"]
    splits = make_splits({"train": rows[:30], "validation": rows[30:60], "test": rows[60:]}, 150, 300)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (30, 30, 30)


def test_local_jsonl_and_csv(tmp_path):
    rows = synthetic_rows(9)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": r["text"], "y": r["label"]}) for r in rows))
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    assert load_labelled(str(tmp_path / "d.jsonl"), "body", "y")["all"][0] == Example(rows[0]["text"], rows[0]["label"])
    assert len(load_labelled(str(tmp_path / "d.csv"))["all"]) == 9


def test_missing_column_names_the_columns_there(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x", "label": "a"}))
    with pytest.raises(PTPlusError, match="has no column 'text'; its columns are: body, label"):
        load_labelled(str(tmp_path / "d.jsonl"))


def test_label_that_is_not_a_string_is_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x", "label": 3}))
    with pytest.raises(PTPlusError, match="row 0: label 3 is not a non-empty string"):
        load_labelled(str(tmp_path / "d.jsonl"))


def test_missing_data_file_and_model_path_are_clear_errors(tmp_path):
    with pytest.raises(PTPlusError, match="does not exist"):
        load_labelled(str(tmp_path / "nope.jsonl"))
    with pytest.raises(PTPlusError, match=r"model path .* does not exist"):
        resolve_model(str(tmp_path / "missing-model"))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(PTPlusError, match=r"not a \.gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_prompt_truncates_the_text_only_and_targets_are_masked(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoder = PromptEncoder(tokenizer, max_length=10, prompt_template="Text : {text} Label :")
    long = encoder.encode(" ".join(["sea"] * 50), "blue")
    short = encoder.encode("sea", "blue")
    assert len(long.input_ids) == 10
    assert long.input_ids[-3:] == tokenizer.convert_tokens_to_ids(["Label", ":", "blue"])
    assert long.target_start == 9
    batch = collate([long, short], tokenizer.pad_token_id)
    assert batch["labels"][0].tolist() == [-100] * 9 + [tokenizer.convert_tokens_to_ids("blue")]
    assert batch["labels"][1].tolist() == [-100] * 5 + [tokenizer.convert_tokens_to_ids("blue")] + [-100] * 4
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0] * 4
    with pytest.raises(PTPlusError, match="must contain \\{text\\} exactly once"):
        PromptEncoder(tokenizer, 10, prompt_template="no placeholder")


def test_class_label_columns_become_their_names():
    import datasets

    from ptplus_tune.data.datasets import examples_from

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 1]}, features=features)
    assert examples_from(rows, "text", "label", "hub[train]") == [Example("bad", "neg"), Example("good", "pos")]
