"""ptplus-tune: a distributed hyperparameter service for Prefix-Tuning+ adapters."""

from ptplus_tune.errors import PTPlusError

__all__ = ["PTPlusError"]
__version__ = "0.1.0"
