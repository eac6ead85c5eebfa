"""Prompt → completion data for generative tasks, in the two formats TRL's trainers read: *prompt-completion*
(columns `prompt` and `completion`, renamable) and *conversational* (`messages`: a list of `{role, content}`; the
last message is the assistant's answer, the completion; the turns before it are the prompt, rendered with the
tokenizer's chat template). Seeded train / validation / test splits; `train_size` caps the training split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ptplus_tune.data.datasets import CLASSIFICATION, GENERATION, Splits
from ptplus_tune.errors import PTPlusError

MESSAGES = "messages"


@dataclass(frozen=True)
class Pair:
    prompt: str | tuple[tuple[str, str], ...]  # the prompt text, or a chat's (role, content) turns before the answer
    completion: str
    where: str = field(default="", compare=False)  # its file and row, for errors

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)

    def prompt_text(self) -> str:
        """The prompt as a person reads it (a chat: its last turn)."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[-1][1]


def formats(text_column: str, label_column: str, prompt_column: str, completion_column: str) -> str:
    return (f"`{text_column}` + `{label_column}` (classification), `{prompt_column}` + `{completion_column}` "
            f"(prompt-completion) or `{MESSAGES}` (a chat whose last message is the assistant's answer)")


def detect_task(columns, where: str, text_column: str = "text", label_column: str = "label",
                prompt_column: str = "prompt", completion_column: str = "completion") -> str:
    """classification or generation, from a table's columns: the format whose columns it has (one of them is enough
    to tell; the loader then names a missing one)."""
    present = set(columns)
    if {prompt_column, completion_column} & present or MESSAGES in present:
        return GENERATION
    if {text_column, label_column} & present:
        return CLASSIFICATION
    raise PTPlusError(f"{where} has no column {text_column!r}; its columns are: {', '.join(columns)}; use "
                      f"{formats(text_column, label_column, prompt_column, completion_column)} (or rename with "
                      f"--text-column/--label-column, --prompt-column/--completion-column)")


def pairs_from(rows, where: str, prompt_column: str = "prompt", completion_column: str = "completion") -> list[Pair]:
    """A table's rows as prompt → completion pairs; a row that is not one is bad input, named by its number."""
    columns = rows.column_names
    if prompt_column in columns and completion_column in columns:
        pairs = []
        for i, (prompt, completion) in enumerate(zip(rows[prompt_column], rows[completion_column])):
            for name, value in ((prompt_column, prompt), (completion_column, completion)):
                if not isinstance(value, str) or not value.strip():
                    raise PTPlusError(f"{where} row {i}: {name} {value!r} is not a non-empty string")
            pairs.append(Pair(prompt, completion, f"{where} row {i}"))
        return pairs
    if MESSAGES in columns:
        return [_chat_pair(messages, where, i) for i, messages in enumerate(rows[MESSAGES])]
    raise PTPlusError(f"{where} has no columns {prompt_column!r} and {completion_column!r} nor {MESSAGES!r}; its "
                      f"columns are: {', '.join(columns)} (set --prompt-column / --completion-column)")


def _chat_pair(messages, where: str, i: int) -> Pair:
    if not isinstance(messages, list) or not messages:
        raise PTPlusError(f"{where} row {i}: {MESSAGES} is not a non-empty list of {{role, content}} messages")
    turns = []
    for message in messages:
        role, content = (message.get("role"), message.get("content")) if isinstance(message, dict) else (None, None)
        if not isinstance(role, str) or not isinstance(content, str):
            raise PTPlusError(f"{where} row {i}: every message needs a string role and content, got {message!r}")
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        raise PTPlusError(f"{where} row {i}: the last message is the {turns[-1][0]!r}'s; the completion is a final "
                          f"assistant turn")
    if len(turns) < 2:
        raise PTPlusError(f"{where} row {i}: no turns before the assistant's answer to prompt it with")
    if not turns[-1][1].strip():
        raise PTPlusError(f"{where} row {i}: the assistant's answer is empty")
    return Pair(tuple(turns[:-1]), turns[-1][1], f"{where} row {i}")


REASONING_GYM = "reasoning_gym:"  # `--dataset reasoning_gym:TASK`: a task the reasoning-gym package generates
GENERATED_SIZE = 2000


def reasoning_gym_pairs(dataset: str, size: int = GENERATED_SIZE) -> list[Pair]:
    """`reasoning_gym:TASK` (e.g. `reasoning_gym:aiw`): `size` examples of one of the reasoning-gym package's
    procedurally generated tasks, made locally (no download), always the same ones (seed 0)."""
    task = dataset.removeprefix(REASONING_GYM)
    try:
        import reasoning_gym
    except ImportError as exc:
        raise PTPlusError(f"{dataset} needs the reasoning-gym package: pip install reasoning-gym") from exc
    try:
        examples = reasoning_gym.create_dataset(task, size=size, seed=0)
    except Exception as exc:  # an unknown name raises ValueError or KeyError, depending on the version
        raise PTPlusError(f"reasoning-gym has no task {task!r} (or cannot make it: {exc!r})") from exc
    return [Pair(example["question"], str(example["answer"]), f"{dataset} example {i}")
            for i, example in enumerate(examples)]


def make_generation_splits(parts: dict[str, list[Pair]], validation_size: int = 150, test_size: int = 300,
                           train_size: int | None = None, seed: int = 0, where: str = "dataset") -> Splits:
    """Stable splits: the same inputs and seed always give the same pairs in the same order. Predefined
    validation / test splits are used as they are (a validation split is cut to `validation_size`)."""
    rng = random.Random(seed)
    pool = list(parts.get("train") or parts.get("all") or [])
    test = parts.get("test")
    validation = parts.get("validation") or parts.get("valid") or parts.get("dev")
    need = (0 if test is not None else test_size) + (0 if validation is not None else validation_size) + \
        (train_size or 1)
    if len(pool) < need:
        raise PTPlusError(f"{where} has {len(pool)} rows but the splits need {need} (validation_size "
                          f"{validation_size}, test_size {test_size} and {train_size or 1} for training); add rows or "
                          f"lower validation_size / test_size" + (" / train_size" if train_size else ""))
    rng.shuffle(pool)
    if test is None:
        test, pool = pool[:test_size], pool[test_size:]
    if validation is None:
        validation, pool = pool[:validation_size], pool[validation_size:]
    elif len(validation) > validation_size:
        validation = rng.sample(list(validation), validation_size)
    if train_size is not None:
        pool = pool[:train_size]
    return Splits(pool, list(validation), list(test), [], task=GENERATION)
