"""Base models and labelled data: embedded defaults, hub ids, local files; prompts and tokenisation."""

from ptplus_tune.data.datasets import EMBEDDED_DATASET, Example, Splits, load_labelled, make_splits
from ptplus_tune.data.models import EMBEDDED_MODEL, load_base_model
from ptplus_tune.data.prompts import DEFAULT_PROMPT, DEFAULT_TARGET, PromptEncoder, collate

__all__ = [
    "DEFAULT_PROMPT", "DEFAULT_TARGET", "EMBEDDED_DATASET", "EMBEDDED_MODEL", "Example", "PromptEncoder", "Splits",
    "collate", "load_base_model", "load_labelled", "make_splits",
]
