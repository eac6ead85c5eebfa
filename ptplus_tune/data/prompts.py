"""Prompts and tokenisation. Classification: the target is the class word after the prompt. Generation: the target
is the completion and EOS after the prompt (CompletionEncoder).

Prompt and target are tokenised separately and concatenated, so training and label scoring see the same token
boundary. The text is truncated (never the template or the target) to fit `max_length`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptplus_tune.errors import PTPlusError

if TYPE_CHECKING:  # torch loads with the first batch: a space's defaults (below) are read without it
    import torch

DEFAULT_PROMPT = "Classify the topic of this news article.\nArticle: {text}\nTopic:"
DEFAULT_TARGET = " {label}"
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    target_start: int  # index of the first target token in input_ids


class PromptEncoder:
    def __init__(self, tokenizer, max_length: int, prompt_template: str = DEFAULT_PROMPT,
                 target_template: str = DEFAULT_TARGET):
        if prompt_template.count("{text}") != 1:
            raise PTPlusError(f"prompt_template must contain {{text}} exactly once: {prompt_template!r}")
        if "{label}" not in target_template:
            raise PTPlusError(f"target_template must contain {{label}}: {target_template!r}")
        self.tokenizer, self.max_length, self.target_template = tokenizer, max_length, target_template
        head, tail = prompt_template.split("{text}")
        self._head, self._tail = self._ids(head), self._ids(tail)
        bos = tokenizer.bos_token_id
        with_special = tokenizer("x")["input_ids"]
        if bos is not None and with_special and with_special[0] == bos:  # the model expects a BOS token
            self._head = [bos, *self._head]
        self._target_cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def target_ids(self, label: str) -> list[int]:
        if label not in self._target_cache:
            ids = self._ids(self.target_template.format(label=label))
            if not ids:
                raise PTPlusError(f"label {label!r} tokenises to nothing")
            self._target_cache[label] = ids
        return self._target_cache[label]

    def prompt_ids(self, text: str, room_for: int = 0) -> list[int]:
        budget = self.max_length - len(self._head) - len(self._tail) - room_for
        if budget < 1:
            raise PTPlusError(f"max_length={self.max_length} leaves no room for the text after the template and "
                              f"target; raise max_length")
        return self._head + self._ids(text)[:budget] + self._tail

    def encode(self, text: str, label: str) -> Encoded:
        target = self.target_ids(label)
        prompt = self.prompt_ids(text, room_for=len(target))
        return Encoded(prompt + target, len(prompt))


class CompletionEncoder:
    """Prompt → completion tokenisation for generative tasks: the prompt as given, or a chat's turns rendered with the
    tokenizer's chat template (generation prompt included); then the completion and EOS, the only tokens the loss
    counts. A prompt too long for `max_length` loses its start, never the completion (`truncated` counts the
    prompts cut); a completion that does not fit on its own is bad input."""

    def __init__(self, tokenizer, max_length: int):
        if tokenizer.eos_token_id is None:
            raise PTPlusError("the model's tokenizer has no EOS token; a completion needs one to end")
        self.tokenizer, self.max_length, self.eos = tokenizer, max_length, tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        with_special = tokenizer("x")["input_ids"]
        self._bos = [bos] if bos is not None and with_special and with_special[0] == bos else []
        self.truncated: set = set()

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, pair, room_for: int = 0) -> list[int]:
        """The prompt's tokens, cut at the start to leave `room_for` tokens within max_length."""
        if pair.chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise PTPlusError("conversational data (messages) needs a tokenizer with a chat template, and this "
                                  "model's has none; use prompt / completion columns")
            text = self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in pair.prompt],
                                                      tokenize=False, add_generation_prompt=True)
        else:
            text = pair.prompt
        ids = self._ids(text)
        head = [] if ids[:1] == self._bos else self._bos  # a chat template may write the BOS itself
        budget = self.max_length - len(head) - room_for
        if len(ids) > budget:
            self.truncated.add(pair)
            ids = ids[len(ids) - budget:] if budget > 0 else []
        return head + ids

    def completion_ids(self, completion: str) -> list[int]:
        return [*self._ids(completion), self.eos]

    def encode(self, pair) -> Encoded:
        completion = self.completion_ids(pair.completion)
        if len(completion) + len(self._bos) + 1 > self.max_length:
            raise PTPlusError(f"{pair.where or 'data'}: a completion of {len(completion)} tokens (EOS included) leaves "
                              f"no room for its prompt within max_length={self.max_length}; raise max_length or "
                              f"shorten it")
        prompt = self.prompt_ids(pair, room_for=len(completion))
        return Encoded(prompt + completion, len(prompt))


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels hold the target tokens only (the loss ignores prompt and padding)."""
    import torch

    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        ids[row, :n] = torch.tensor(it.input_ids)
        labels[row, it.target_start:n] = ids[row, it.target_start:n]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_batches(batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batches (from `collate`) stacked into one, padded to the widest."""
    import torch

    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    keys = [k for k in fill if all(k in b for b in batches)]
    return {k: torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1]), value=fill[k]) for b in batches])
            for k in keys}
