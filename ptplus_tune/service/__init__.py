"""The tuning service: a study specification run as Ray Tune + OptunaSearch (TPE) + ASHA, resumable."""

from ptplus_tune.service.cluster import check_gpus, concurrency, connect
from ptplus_tune.service.study import StudyResult, TrialSummary, run_study

__all__ = ["StudyResult", "TrialSummary", "check_gpus", "concurrency", "connect", "run_study"]
