"""ModelHost: what the trials of one worker process share, loaded once and kept between trials: frozen base models,
their tokenizers, and the data splits. A trial wraps the resident base model with its adapter and takes the adapter
off again when it ends (`release`), so the next trial starts from the untouched base model in well under a second.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ptplus_tune.data import Splits, load_labelled, make_splits
from ptplus_tune.data.datasets import CLASSIFICATION, EMBEDDED_DATASET, GENERATION, examples_from, load_tables
from ptplus_tune.data.generation import (
    REASONING_GYM,
    detect_task,
    make_generation_splits,
    pairs_from,
    reasoning_gym_pairs,
)
from ptplus_tune.errors import PTPlusError

if TYPE_CHECKING:  # a study's driver checks its data with load_splits: no torch there
    import torch

log = logging.getLogger(__name__)


class ModelHost:
    def __init__(self) -> None:
        self._models: dict[tuple, tuple[Any, Any]] = {}
        self._splits: dict[tuple, Splits] = {}
        self.model_loads = 0  # how often a base model was actually loaded (the tests count it)
        self.data_loads = 0

    def base(self, name: str | None, device: torch.device, dtype: torch.dtype):
        """(model, tokenizer), loaded on first use. One base model is kept per process: a study uses one."""
        from ptplus_tune.data import load_base_model

        key = (name, str(device), str(dtype))
        if key not in self._models:
            self._models.clear()  # another base model: let the old one go rather than hold two
            self._models[key] = load_base_model(name, device=str(device), dtype=dtype)
            self.model_loads += 1
            log.info("loaded base model %s on %s (%s)", name or "embedded default", device, dtype)
        return self._models[key]

    def splits(self, config) -> Splits:
        key = (config.dataset, config.task, config.text_column, config.label_column, config.prompt_column,
               config.completion_column, config.validation_size, config.test_size, config.k_shot, config.train_size,
               config.data_seed)
        if key not in self._splits:
            self._splits[key] = load_splits(config)
            self.data_loads += 1
        return self._splits[key]


def load_splits(config) -> Splits:
    """A TrialConfig's train / validation / test examples: labelled texts (classification) or prompt → completion
    pairs (generation), as `config.task` says or the data's columns tell."""
    if config.dataset == EMBEDDED_DATASET and config.task == GENERATION:
        raise PTPlusError(f"the embedded dataset {EMBEDDED_DATASET} is a classification task; give a generation "
                          f"data set with --dataset")
    if config.dataset.startswith(REASONING_GYM) and config.task == CLASSIFICATION:
        raise PTPlusError(f"{config.dataset} is a generation task (prompt -> answer); drop --task classification")
    if config.dataset == EMBEDDED_DATASET:
        parts = load_labelled(config.dataset, config.text_column, config.label_column)
        return make_splits(parts, config.validation_size, config.test_size, config.k_shot, config.data_seed,
                           where=config.dataset)
    if config.dataset.startswith(REASONING_GYM):
        return make_generation_splits({"all": reasoning_gym_pairs(config.dataset)}, config.validation_size,
                                      config.test_size, config.train_size, config.data_seed, where=config.dataset)
    tables = load_tables(config.dataset)
    rows, where = next(iter(tables.values()))
    task = config.task or detect_task(rows.column_names, where, config.text_column, config.label_column,
                                      config.prompt_column, config.completion_column)
    if task == CLASSIFICATION:
        parts = {name: examples_from(rows, config.text_column, config.label_column, where)
                 for name, (rows, where) in tables.items()}
        return make_splits(parts, config.validation_size, config.test_size, config.k_shot, config.data_seed,
                           where=config.dataset)
    parts = {name: pairs_from(rows, where, config.prompt_column, config.completion_column)
             for name, (rows, where) in tables.items()}
    return make_generation_splits(parts, config.validation_size, config.test_size, config.train_size,
                                  config.data_seed, where=config.dataset)


def release(model) -> None:
    """Take the adapter off a wrapped base model, leaving the base model as it was loaded (frozen, eval mode)."""
    from ptplus_tune.adapter.model import AdapterAPI

    if isinstance(model, AdapterAPI):  # ours (PTPlusModel, or a PackedAdapter leaving its pack): no peft import
        model.unload().eval()
        return
    base = model.base_model  # a peft.PeftModel
    base = base.unload() if hasattr(base, "unload") else model.get_base_model()  # LoRA layers out; prefix: none in
    original = getattr(model, "base_model_prepare_inputs_for_generation", None)
    if original is not None:  # PEFT patches the base model's generation hook; put it back
        base.prepare_inputs_for_generation = original
    base.eval()


_SHARED: ModelHost | None = None


def shared_host() -> ModelHost:
    """The host of this process (a Ray Tune worker keeps it across the trials it runs)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = ModelHost()
    return _SHARED
