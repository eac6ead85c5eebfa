"""Prefix-Tuning+ (arXiv 2506.13674) and the PEFT baselines behind one builder. Pure torch + transformers + peft."""

from ptplus_tune.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "SUPPORTED_MODEL_TYPES": ".architectures", "FEATURE_MAPS": ".config", "MEMORIES": ".config",
    "PTPlusConfig": ".config", "METHODS": ".hyperparameters", "build_adapter": ".builder",
    "count_trainable_parameters": ".builder", "load_adapter": ".builder", "PTPlusModel": ".model",
    "get_ptplus_model": ".model",
})
__all__ = [
    "FEATURE_MAPS", "MEMORIES", "METHODS", "SUPPORTED_MODEL_TYPES", "PTPlusConfig", "PTPlusModel",
    "build_adapter", "count_trainable_parameters", "get_ptplus_model", "load_adapter",
]
