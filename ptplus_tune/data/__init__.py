"""Base models and labelled data: embedded defaults, hub ids, local files; prompts and tokenisation."""

from ptplus_tune.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "EMBEDDED_DATASET": ".datasets", "Example": ".datasets", "Splits": ".datasets", "load_labelled": ".datasets",
    "make_splits": ".datasets", "EMBEDDED_MODEL": ".models", "load_base_model": ".models",
    "DEFAULT_PROMPT": ".prompts", "DEFAULT_TARGET": ".prompts", "PromptEncoder": ".prompts", "collate": ".prompts",
})
__all__ = [
    "DEFAULT_PROMPT", "DEFAULT_TARGET", "EMBEDDED_DATASET", "EMBEDDED_MODEL", "Example", "PromptEncoder", "Splits",
    "collate", "load_base_model", "load_labelled", "make_splits",
]
