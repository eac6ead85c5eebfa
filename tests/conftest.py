"""Shared fixtures: a tiny model folder (word-level tokenizer + random Llama) and a synthetic labelled dataset."""

import json
import os
import random
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Each test carries the marker of its folder: `unit` (tests/unit: seconds each, no Ray, no servers; `make
    test-fast`) or `study` (tests/study: Ray clusters, MLflow servers, kills)."""
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "study"):
            item.add_marker(kind)


@pytest.fixture(autouse=True)
def _tracking_uri_stays_per_test():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which every later CLI subprocess would inherit."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)


COLOURS = {"red": ["apple", "fire", "rose", "blood"], "blue": ["sea", "sky", "ice", "jeans"],
           "green": ["grass", "leaf", "frog", "lime"]}
FILLER = ["the", "a", "big", "small", "old", "new", "on", "in"]


def synthetic_rows(n: int = 90, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = sorted(COLOURS)[i % 3]
        words = [rng.choice(FILLER) for _ in range(6)] + [rng.choice(COLOURS[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "colours.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in synthetic_rows()) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def constant_text_data(tmp_path_factory):
    """Every text is the same, labels are balanced: a model can only answer one label for all, so its accuracy is
    never above the majority share (chance level) whatever it learns."""
    path = tmp_path_factory.mktemp("constant") / "same.jsonl"
    rows = [{"text": "the big sea", "label": ["red", "blue", "green"][i % 3]} for i in range(90)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def generation_rows(n: int = 90, seed: int = 0):
    """Prompt → completion pairs in the tiny model's vocabulary: the completion is the colour class of the prompt's
    colour word and a full stop (two tokens and EOS)."""
    return [{"prompt": f"Text : {row['text']} Label :", "completion": f"{row['label']} ."}
            for row in synthetic_rows(n, seed)]


@pytest.fixture(scope="session")
def generation_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "colours-gen.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in generation_rows()) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]", "Text", "Label", ":", "Classify", ".", *FILLER]
    words += sorted(COLOURS) + [w for ws in COLOURS.values() for w in ws]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="[EOS]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    directory = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_trial_settings(tiny_model_dir, synthetic_data):
    """Settings for a fast trial on the tiny model and synthetic data."""
    return dict(model=tiny_model_dir, dataset=synthetic_data, prompt_template="Text : {text} Label :",
                k_shot=None, validation_size=15, test_size=15, max_length=32, batch_size=4, max_steps=12,
                eval_every=4, learning_rate=2e-2, warmup_ratio=0.0, num_threads=1)


@pytest.fixture
def tiny_trial(tiny_trial_settings):
    return dict(tiny_trial_settings)


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """One real `mlflow server --workers 1` (sqlite backend, proxied artifacts) for the session, on loopback."""
    from tests.mlflow_server import mlflow_server

    root = tmp_path_factory.mktemp("mlflow")
    (root / "artifacts").mkdir()
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")) as url:
        yield url
