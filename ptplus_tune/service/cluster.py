"""Connecting to Ray: a given address, the cluster `ray up` / `ray start` left running, or a new local instance."""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from pathlib import Path

from ptplus_tune.errors import PTPlusError

log = logging.getLogger(__name__)
NAMESPACE = "ptplus-tune"  # where the named actors of every study live (progress boards, pack hosts)
# "1" on a cluster whose autoscaler adds GPU workers on demand (cluster.yaml)
GPU_AUTOSCALING = "PTPLUS_GPU_AUTOSCALING"


def _running_local_cluster() -> bool:
    """`ray start` (also the head `ray up` starts) records its address here."""
    root = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    return (Path(root) / "ray" / "ray_current_cluster").is_file()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise PTPlusError(f"the Ray cluster at {address} does not answer ({exc}); start it with `ray start --head` "
                          f"or `ray up cluster.yaml`, or omit --address to run locally") from exc


def connect(address: str | None) -> str:
    """Initialise Ray once per process; returns a description of where trials run."""
    import ray

    if ray.is_initialized():
        return "the Ray instance this process already uses"
    address = address or os.environ.get("RAY_ADDRESS") or ("auto" if _running_local_cluster() else None)
    if address and address not in ("auto", "local"):
        _check_reachable(address)
    if address and address != "local":
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise PTPlusError(f"could not connect to the Ray cluster at {address}: {exc}") from exc
        return f"Ray cluster at {address}"
    # A new single-node instance only needs loopback: keep it off the machine's network interfaces.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    _quiet_token_notice()
    ray.init(include_dashboard=False, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    return "a new local Ray instance"


class _TokenNotice(logging.Filter):
    """Ray turns token authentication on for a new local instance (a token in ~/.ray/auth_token, made on first use)
    and warns about it at every start. The protection stays; the warning becomes one INFO line (shown with -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Token authentication is enabled for this Ray cluster"):
            log.info("Ray token authentication is on for this local instance (token in ~/.ray/auth_token)")
            return False
        return True


def _quiet_token_notice() -> None:
    token_setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNotice) for f in token_setup.filters):
        token_setup.addFilter(_TokenNotice())


def check_gpus(gpus_per_trial: float) -> None:
    import ray

    if gpus_per_trial <= 0:
        return
    total = ray.cluster_resources().get("GPU", 0)
    if total < gpus_per_trial and os.environ.get(GPU_AUTOSCALING) == "1":
        log.warning("no GPU node yet (%g GPUs); trials wait until the autoscaler starts GPU workers", total)
    elif total < gpus_per_trial:
        raise PTPlusError(f"the space asks for {gpus_per_trial:g} GPU(s) per trial but the Ray cluster has {total:g}; "
                          f"use --gpus-per-trial 0 for CPU trials or connect to a cluster with GPUs (--address)")


def concurrency(spec) -> tuple[int, int]:
    """Trials the cluster can run at once now, as (fewest, most): the space's max_concurrent, capped by the CPUs and
    GPUs it has (0 when no node fits a trial yet, e.g. before the autoscaler's first GPU worker). They differ only
    when the study mixes packed Prefix-Tuning+ trials with PEFT baselines, which reserve a whole pack each."""
    import ray

    have = ray.cluster_resources()

    def fits(method: str) -> int:
        cpus, gpus = spec.resources.share(method)
        limits = [spec.max_concurrent, math.floor(have.get("CPU", 0) / cpus + 1e-9)]
        if gpus > 0:
            limits.append(math.floor(have.get("GPU", 0) / gpus + 1e-9))
        return max(0, min(limits))

    counts = [fits(method) for method in spec.methods]
    return min(counts), max(counts)
