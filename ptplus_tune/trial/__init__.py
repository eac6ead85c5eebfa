"""One training run of one configuration: train, evaluate, checkpoint, report. No Ray, no MLflow."""

from ptplus_tune.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "HYPERPARAMETERS": ".config", "TrialConfig": ".config", "evaluate": ".evaluate", "score_labels": ".evaluate",
    "Predictor": ".predict", "ModelHost": ".host", "shared_host": ".host", "TrialResult": ".train",
    "TrialSession": ".train", "run_trial": ".train", "save_adapter": ".train", "Session": ".session",
})
__all__ = ["HYPERPARAMETERS", "ModelHost", "Predictor", "Session", "TrialConfig", "TrialResult", "TrialSession",
           "evaluate", "run_trial", "save_adapter", "score_labels", "shared_host"]
