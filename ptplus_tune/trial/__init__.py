"""One training run of one configuration: train, evaluate, checkpoint, report. No Ray, no MLflow."""

from ptplus_tune.trial.config import HYPERPARAMETERS, TrialConfig
from ptplus_tune.trial.evaluate import evaluate, score_labels
from ptplus_tune.trial.predict import Predictor
from ptplus_tune.trial.host import ModelHost, shared_host
from ptplus_tune.trial.train import TrialResult, TrialSession, run_trial, save_adapter

__all__ = ["HYPERPARAMETERS", "ModelHost", "Predictor", "TrialConfig", "TrialResult", "TrialSession", "evaluate",
           "run_trial", "save_adapter", "score_labels", "shared_host"]
