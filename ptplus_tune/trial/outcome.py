"""How a trial ended, from its last report: the rule the service, the progress view and the tracking code share
(torch-free: the driver and the Tune callbacks use it)."""

from __future__ import annotations

COMPLETED, EARLY_STOPPED, FAILED = "completed", "early_stopped", "failed"
ASHA = "asha"  # the stop reason of a trial the scheduler stopped (the dead-trial rule's reasons: trial.rules)


def status_of(step: int, max_steps: int) -> str:
    """How a trial that ended without error ended: it ran its budget out, or ASHA stopped it."""
    return COMPLETED if step >= max_steps else EARLY_STOPPED


def stop_reason_of(result: dict, max_steps: int) -> str | None:
    """Why a trial that ended short of its budget stopped: the dead-trial rule it reported, else ASHA."""
    if status_of(result.get("step", 0), max_steps) != EARLY_STOPPED:
        return None
    return result.get("stop_reason") or ASHA
