"""Prefix-Tuning+ (arXiv 2506.13674) and the PEFT baselines behind one builder. Pure torch + transformers + peft."""

from ptplus_tune.adapter.architectures import SUPPORTED_MODEL_TYPES
from ptplus_tune.adapter.builder import METHODS, build_adapter, count_trainable_parameters, load_adapter
from ptplus_tune.adapter.config import FEATURE_MAPS, MEMORIES, PTPlusConfig
from ptplus_tune.adapter.model import PTPlusModel, get_ptplus_model

__all__ = [
    "FEATURE_MAPS", "MEMORIES", "METHODS", "SUPPORTED_MODEL_TYPES", "PTPlusConfig", "PTPlusModel",
    "build_adapter", "count_trainable_parameters", "get_ptplus_model", "load_adapter",
]
