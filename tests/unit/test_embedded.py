"""The embedded default, for real: SmolLM2-135M-Instruct (GGUF on PyPI) and BBC News, a few training steps."""

import os
import subprocess
import sys

import pytest

from ptplus_tune.trial import TrialConfig, run_trial

pytestmark = pytest.mark.embedded

CONVERT = "import logging; logging.basicConfig(level=logging.INFO); " \
          "from ptplus_tune.data.models import embedded_model_dir; print(embedded_model_dir())"


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_concurrent_first_use_converts_once(embedded_cache):
    env = {**os.environ, "PTPLUS_TUNE_CACHE": str(embedded_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0] == f"{embedded_cache / 'models' / 'smollm2-135m-instruct'}\n"
    assert sum("converting" in err for _, err in outs) == 1
    leftovers = [p.name for p in (embedded_cache / "models").iterdir() if p.name.startswith(".convert-")]
    assert leftovers == []


def test_a_few_steps_on_the_real_model_and_data_learn_the_task(embedded_cache, monkeypatch):
    monkeypatch.setenv("PTPLUS_TUNE_CACHE", str(embedded_cache))
    config = TrialConfig(max_steps=10, eval_every=10, k_shot=2, validation_size=40, test_size=10, max_length=64,
                         eval_test=True)
    metrics = run_trial(config).metrics
    assert metrics["step"] == 10
    assert metrics["trainable_params"] == 30 * 9 * 16 * 64 * 2  # 30 layers x 9 query heads x 16 slots x (k, v)
    # Zero-shot scores ~55% and chance is 20%; 10 default steps reach ~85%. A broken default (e.g. the memory
    # swamping attention, as with N(0, 1) slot keys) stays near chance.
    assert metrics["eval_accuracy"] >= 0.6, metrics
    assert 0.0 < metrics["eval_loss"] < 1.5 and metrics["tokens_per_s"] > 0 and 0 <= metrics["test_accuracy"] <= 1
