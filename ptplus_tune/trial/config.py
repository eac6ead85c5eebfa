"""TrialConfig: everything one training run needs, as flat keys (the shared hyperparameter vocabulary)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ptplus_tune.adapter.hyperparameters import DEFAULTS as ADAPTER_DEFAULTS
from ptplus_tune.adapter.hyperparameters import check_hyperparameters
from ptplus_tune.data.datasets import EMBEDDED_DATASET, TASKS
from ptplus_tune.data.prompts import DEFAULT_PROMPT, DEFAULT_TARGET
from ptplus_tune.errors import PTPlusError, first_line

HYPERPARAMETERS = (
    "method", "feature_map", "memory", "prefix_length", "feature_dim", "lora_r", "lora_alpha", "lora_dropout",
    "learning_rate", "weight_decay", "warmup_ratio", "batch_size", "grad_accum", "max_steps", "max_length", "seed",
)

EVALUATION_INPUTS = ("model", "dataset", "text_column", "label_column", "validation_size", "test_size", "data_seed",
                     "prompt_template", "target_template", "max_length")
# ... and, where they differ from their defaults (so a classification study's inputs are what they always were):
GENERATION_INPUTS = ("task", "prompt_column", "completion_column", "max_new_tokens", "scorer")


@dataclass
class TrialConfig:
    # adapter (see ptplus_tune.adapter.build_adapter; defaults from ptplus_tune.adapter.hyperparameters)
    method: str = ADAPTER_DEFAULTS["method"]
    feature_map: str = ADAPTER_DEFAULTS["feature_map"]
    memory: str = ADAPTER_DEFAULTS["memory"]
    prefix_length: int = ADAPTER_DEFAULTS["prefix_length"]
    feature_dim: int | None = ADAPTER_DEFAULTS["feature_dim"]
    lora_r: int = ADAPTER_DEFAULTS["lora_r"]
    lora_alpha: float = ADAPTER_DEFAULTS["lora_alpha"]
    lora_dropout: float = ADAPTER_DEFAULTS["lora_dropout"]
    # optimisation
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 60
    max_length: int = 96
    seed: int = 0
    # model and data (None: the embedded default model); the task (classification | generation) is detected from
    # the data's columns unless `task` forces it
    model: str | None = None
    dataset: str = EMBEDDED_DATASET
    task: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    prompt_template: str = DEFAULT_PROMPT
    target_template: str = DEFAULT_TARGET
    k_shot: int | None = 4  # classification: training examples per class (None: the whole training split)
    prompt_column: str = "prompt"  # generation: prompt-completion columns (or a `messages` column)
    completion_column: str = "completion"
    train_size: int | None = None  # generation: training examples (None: the whole training split)
    validation_size: int = 150
    test_size: int = 300
    data_seed: int = 0
    # evaluation and execution: evaluate at `eval_steps` (a study passes its scheduler's rungs), every `eval_every`
    # steps if set, and always at max_steps; the training loss is logged every `log_every` steps (cheap)
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    eval_every: int | None = None
    log_every: int = 5
    dead_trial_step: int | None = None  # the dead-trial rule (trial.rules) is on, judged at this step; None: off
    eval_batch_size: int = 16
    eval_test: bool = False
    eval_generate: bool = False
    max_new_tokens: int | None = None  # generation: tokens decoded at most (None: longest reference + a margin)
    scorer: str | None = None  # generation: module:function(prediction, reference) -> [0, 1] (None: exact match)
    # generation: evaluations before max_steps (ASHA's rungs) score only the first N validation pairs, a fixed subset
    # every trial shares, at a fraction of the decoding time; the last step scores all (None: all at every step)
    early_eval_size: int | None = None
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("prefix_length", "lora_r", "batch_size", "grad_accum", "max_steps", "max_length", "log_every",
                    "eval_batch_size", "validation_size", "test_size")
        optional = ("eval_every", "dead_trial_step", "train_size", "max_new_tokens", "early_eval_size")
        for name in positive + optional:
            value = getattr(self, name)
            if name in optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PTPlusError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.eval_steps, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= self.max_steps for s in self.eval_steps):
            raise PTPlusError(f"eval_steps must be a list of steps between 1 and max_steps ({self.max_steps}), "
                              f"got {self.eval_steps!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise PTPlusError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise PTPlusError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise PTPlusError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1):
            raise PTPlusError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise PTPlusError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if self.k_shot is not None and (isinstance(self.k_shot, bool) or not isinstance(self.k_shot, int)
                                        or self.k_shot < 1):
            raise PTPlusError(f"k_shot must be an integer >= 1 (or null for the whole training split), got "
                              f"{self.k_shot!r}")
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{text}") != 1:
            raise PTPlusError(f"prompt_template must contain {{text}} exactly once: {self.prompt_template!r}")
        if not isinstance(self.target_template, str) or "{label}" not in self.target_template:
            raise PTPlusError(f"target_template must contain {{label}}: {self.target_template!r}")
        if self.task is not None and self.task not in TASKS:
            raise PTPlusError(f"task must be {' or '.join(TASKS)} (or unset: detected from the data), got "
                              f"{self.task!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise PTPlusError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        check_hyperparameters(self.hyperparameters())  # adapter settings fail here, before a model is loaded

    def is_eval_step(self, step: int) -> bool:
        every = bool(self.eval_every and step % self.eval_every == 0)
        return step == self.max_steps or step in self.eval_steps or every

    def evaluation_inputs(self) -> dict[str, Any]:
        """What an evaluation's figures depend on besides the adapter: base model, data, splits and prompt. Trials
        that agree on these are evaluated on the same examples (a pack evaluates them in shared passes; the registry
        compares only champions whose evaluations agree)."""
        inputs = {name: getattr(self, name) for name in EVALUATION_INPUTS}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        inputs.update({name: getattr(self, name) for name in GENERATION_INPUTS
                       if getattr(self, name) != defaults[name]})
        return inputs

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "trial config") -> TrialConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PTPlusError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise PTPlusError(f"{where}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrialConfig:
        return cls.from_dict({**read_yaml_mapping(path), **overrides}, where=str(path))


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's content; a missing, unreadable, binary or malformed file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise PTPlusError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PTPlusError(f"{path}: not a text (UTF-8) YAML file (byte {exc.start} is {exc.object[exc.start]:#04x})") \
            from exc
    except OSError as exc:
        raise PTPlusError(f"{path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PTPlusError(f"{path}: not valid YAML ({first_line(exc, limit=1000)})") from exc


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise PTPlusError(f"{path}: expected a mapping of config keys")
    return values
