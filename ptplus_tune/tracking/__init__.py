"""Everything MLflow: a parent run per study, a child run per trial (written by the trial), batched metrics, every
adapter as a pyfunc model, the study report and the Model Registry."""

from ptplus_tune.tracking.registry import CHALLENGER, CHAMPION, Registration
from ptplus_tune.tracking.study_run import TrackingReport, finish_study, interrupt_study, open_study
from ptplus_tune.tracking.target import Target, check_reachable, default_tracking_uri

__all__ = ["CHALLENGER", "CHAMPION", "Registration", "Target", "TrackingReport", "check_reachable",
           "default_tracking_uri", "finish_study", "interrupt_study", "open_study"]
