"""What differs between task types inside a trial: the encoder and training items, the evaluation and the names of
its metrics, the dead-trial verdict, the final figures, and what using the adapter later needs (`task.json`).
A TrialSession holds one of these (`session.kind`); the training loop, checkpoints and reports are shared."""

from __future__ import annotations

import logging
from typing import Any

from ptplus_tune.data.datasets import GENERATION
from ptplus_tune.data.prompts import CompletionEncoder, PromptEncoder
from ptplus_tune.trial import rules
from ptplus_tune.trial.evaluate import evaluate, generation_accuracy
from ptplus_tune.trial.generate import default_max_new_tokens, evaluate_generation, load_scorer
from ptplus_tune.trial.predict import task_description

log = logging.getLogger(__name__)


class ClassificationTask:
    """Text → one class word, scored by every label's likelihood (`eval_accuracy`)."""

    shared_evaluation = True  # a pack scores several adapters' labels in shared forward passes
    group_by_length = False  # few-shot prompts of similar length: the shuffled order as it always was

    def __init__(self, config, tokenizer, splits, device):
        self.config, self.splits, self.device = config, splits, device
        self.encoder = PromptEncoder(tokenizer, config.max_length, config.prompt_template, config.target_template)
        self.chance = rules.majority_share(splits.validation)

    def train_items(self) -> list:
        return [self.encoder.encode(ex.text, ex.label) for ex in self.splits.train]

    def evaluation_data(self) -> tuple:
        """(encoder, validation examples, labels, batch size, device): what an evaluation of a model runs on."""
        return self.encoder, self.splits.validation, self.splits.labels, self.config.eval_batch_size, self.device

    @staticmethod
    def named(evaluation: dict[str, float]) -> dict[str, Any]:
        return {"eval_loss": evaluation["loss"], "eval_accuracy": evaluation["accuracy"]}

    def evaluate(self, model, final: bool = True) -> dict[str, Any]:
        return self.named(evaluate(model, *self.evaluation_data()))  # label scoring is cheap: always all

    def verdict(self, metrics: dict[str, Any]) -> str | None:
        """The dead-trial rule at its step: no better than always answering the most frequent class."""
        return rules.accuracy_verdict(metrics["eval_accuracy"], self.chance)

    def final_metrics(self, model) -> dict[str, float]:
        config, out = self.config, {}
        if config.eval_test:
            test = evaluate(model, self.encoder, self.splits.test, self.splits.labels, config.eval_batch_size,
                            self.device)
            out.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        if config.eval_generate:
            out["eval_generation_accuracy"] = generation_accuracy(model, self.encoder, self.splits.validation,
                                                                  config.eval_batch_size, self.device)
        return out

    def description(self) -> dict[str, Any]:
        return task_description(self.config, self.splits.labels)


class GenerationTask:
    """Prompt → completion, scored by greedy decoding (`eval_exact_match`, or the config's `scorer`)."""

    shared_evaluation = False  # decoding runs per trial
    group_by_length = True  # prompts and completions vary in length: batches of similar lengths pad less

    def __init__(self, config, tokenizer, splits, device):
        self.config, self.splits, self.device = config, splits, device
        self.encoder = CompletionEncoder(tokenizer, config.max_length)
        self.scorer = load_scorer(config.scorer)
        self.max_new_tokens = config.max_new_tokens or default_max_new_tokens(
            self.encoder, [*splits.validation, *splits.test])

    def train_items(self) -> list:
        items = [self.encoder.encode(pair) for pair in self.splits.train]
        if self.encoder.truncated:
            log.warning("%d of %d training prompts were cut at the start to fit max_length=%d (the completions are "
                        "whole)", len(self.encoder.truncated), len(items), self.config.max_length)
        return items

    def _evaluate(self, model, pairs) -> dict[str, Any]:
        return evaluate_generation(model, self.encoder, pairs, self.config.eval_batch_size, self.device,
                                   self.max_new_tokens, self.scorer)

    def evaluate(self, model, final: bool = True) -> dict[str, Any]:
        """Validation loss, exact match and a few predictions; before the last step only the first
        `early_eval_size` pairs (the same for every trial, so ASHA compares like with like)."""
        pairs = self.splits.validation
        if not final and self.config.early_eval_size:
            pairs = pairs[:self.config.early_eval_size]
        evaluation = self._evaluate(model, pairs)
        return {"eval_loss": evaluation["loss"], "eval_exact_match": evaluation["exact_match"],
                "predictions": evaluation["predictions"]}

    def verdict(self, metrics: dict[str, Any]) -> str | None:
        return None  # no chance level to compare with: only the loss rules stop a generative trial early

    def final_metrics(self, model) -> dict[str, float]:
        if not self.config.eval_test:
            return {}
        test = self._evaluate(model, self.splits.test)
        return {"test_loss": test["loss"], "test_exact_match": test["exact_match"]}

    def description(self) -> dict[str, Any]:
        config = self.config
        return {**task_description(config, []), "task": GENERATION, "max_new_tokens": self.max_new_tokens,
                "scorer": config.scorer, "chat": any(pair.chat for pair in self.splits.train)}


def check_generation(config, splits) -> None:
    """What would fail every generative trial, checked once before a study starts: its scorer imports, and every
    pair of every split fits max_length with its completion whole (the error names the file and row)."""
    from ptplus_tune.data.models import load_tokenizer

    load_scorer(config.scorer)
    encoder = CompletionEncoder(load_tokenizer(config.model), config.max_length)
    for pair in [*splits.train, *splits.validation, *splits.test]:
        encoder.encode(pair)


def task_for(config, tokenizer, splits, device):
    """The task strategy of these splits (their task was detected from the data's columns, or forced)."""
    kind = GenerationTask if splits.task == GENERATION else ClassificationTask
    return kind(config, tokenizer, splits, device)
