"""The tuning service: a study specification run as Ray Tune + OptunaSearch (TPE) + ASHA, resumable."""

from ptplus_tune.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "check_gpus": ".cluster", "concurrency": ".cluster", "connect": ".cluster", "StudyResult": ".study",
    "TrialSummary": ".study", "run_study": ".study",
})
__all__ = ["StudyResult", "TrialSummary", "check_gpus", "concurrency", "connect", "run_study"]
