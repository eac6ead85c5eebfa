"""Use a trained adapter: the base model plus the adapter, scoring every label (as evaluation does) or generating.

A `task.json` next to the adapter (written into every trial checkpoint) says which base model, labels and prompt
the adapter was trained with, so the pair is all a later process needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ptplus_tune.adapter import load_adapter
from ptplus_tune.data import Example, PromptEncoder, load_base_model
from ptplus_tune.data.datasets import GENERATION
from ptplus_tune.data.generation import Pair
from ptplus_tune.data.prompts import CompletionEncoder
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.config import TrialConfig
from ptplus_tune.trial.device import pick_device
from ptplus_tune.trial.evaluate import score_labels
from ptplus_tune.trial.generate import greedy_completions


def task_description(config: TrialConfig, labels: Sequence[str]) -> dict[str, Any]:
    model = config.model
    if model and Path(model).expanduser().exists():  # a local model: pin where it was, not where the worker ran
        model = str(Path(model).expanduser().resolve())
    return {"model": model, "labels": list(labels), "prompt_template": config.prompt_template,
            "target_template": config.target_template, "max_length": config.max_length,
            "eval_batch_size": config.eval_batch_size}


class Predictor:
    """A trained adapter on its base model, answering as the trial's evaluation did.

    Build it with `Predictor.from_files(adapter_dir, task_file)`: `task.json` (written beside the adapter in every
    checkpoint and by `ptplus-tune train`) names the base model, labels and prompt. The pyfunc model that MLflow
    logs for each trial wraps one of these.

    Example:

    ```py
    >>> from ptplus_tune.trial import Predictor
    >>> predictor = Predictor.from_files("outputs/t1/adapter", "outputs/t1/task.json", device="cpu")
    >>> predictor.predict(["Shares in the carmaker fell 5% after ..."])[0]["label"]
    'business'
    ```
    """

    def __init__(self, model, tokenizer, task: dict[str, Any], device: torch.device):
        self.model, self.task, self.device = model, task, device
        self.labels: list[str] = task["labels"]
        self.generative = task.get("task") == GENERATION
        if self.generative:
            self.encoder = CompletionEncoder(tokenizer, task["max_length"])
        else:
            self.encoder = PromptEncoder(tokenizer, task["max_length"], task["prompt_template"],
                                         task["target_template"])

    @classmethod
    def from_files(cls, adapter_dir: str | os.PathLike, task_file: str | os.PathLike,
                   device: str = "auto") -> Predictor:
        if not Path(task_file).is_file():
            raise PTPlusError(f"{task_file} is missing: the adapter does not say which base model and labels it "
                              f"was trained with")
        task = json.loads(Path(task_file).read_text())
        torch_device, dtype = pick_device(device)
        base, tokenizer = load_base_model(task["model"], device=str(torch_device), dtype=dtype)
        model = load_adapter(base, adapter_dir).to(torch_device).eval()
        return cls(model, tokenizer, task, torch_device)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """Log-likelihood of each label after each text's prompt: [len(texts), len(labels)]."""
        examples = [Example(text, "") for text in texts]
        return score_labels(self.model, self.encoder, examples, self.labels, self.task.get("eval_batch_size", 16),
                            self.device)

    def predict(self, texts: Sequence[str], max_new_tokens: int = 0) -> list[dict[str, Any]]:
        """Classify texts, or for a generative adapter complete prompts (see `complete`).

        Args:
            texts (`Sequence[str]`): the inputs, as the prompt template's `{text}`.
            max_new_tokens (`int`): also decode this many tokens greedily after each prompt (0: none).

        Returns:
            `list[dict]`: per text, the most likely `label`, every label's log-likelihood (`scores`) and, with
            `max_new_tokens`, the greedy continuation (`generated`). A generative adapter: per prompt its
            `completion`.
        """
        if self.generative:
            return [{"completion": text} for text in self.complete(texts, max_new_tokens or None)]
        scores = self.scores(texts)
        rows = [{"label": self.labels[int(row.argmax())], "scores": dict(zip(self.labels, row.tolist()))}
                for row in scores]
        if max_new_tokens > 0:
            for row, text in zip(rows, texts):
                row["generated"] = self.generate(text, max_new_tokens)
        return rows

    def complete(self, prompts: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        """A generative adapter's greedy completions of `prompts` (a chat adapter's: each as the user's turn), up to
        EOS or `max_new_tokens` (default: what its evaluation decoded)."""
        pairs = [Pair(((("user", p),) if self.task.get("chat") else p), "") for p in prompts]
        return greedy_completions(self.model, self.encoder, pairs, max_new_tokens or self.task["max_new_tokens"],
                                  self.task.get("eval_batch_size", 16), self.device)

    @torch.no_grad()
    def generate(self, text: str, max_new_tokens: int) -> str:
        tokenizer = self.encoder.tokenizer
        ids = torch.tensor([self.encoder.prompt_ids(text, room_for=max_new_tokens)], device=self.device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
