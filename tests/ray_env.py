"""Environment for tests that start Ray: no token auth, loopback only, a private temp root (so a test can find and
end every Ray process it started)."""

import os
import subprocess
import tempfile
from pathlib import Path


def ray_env(**extra) -> dict:
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_TMPDIR": root, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra}


def kill_ray_under(root: str) -> None:
    """SIGKILL every process whose command line mentions this test's Ray temp root."""
    subprocess.run(["pkill", "-9", "-f", root], check=False)


def processes_under(root: str) -> list[int]:
    """PIDs of the live processes started with this test's Ray temp root in their environment (drivers, Ray's own
    processes and its workers, whatever their command line became)."""
    pids = []
    for proc in os.listdir("/proc"):
        try:
            with open(f"/proc/{proc}/environ", "rb") as env, open(f"/proc/{proc}/stat") as stat:
                alive = stat.read().rsplit(")", 1)[1].split()[0] != "Z"
                if alive and f"RAY_TMPDIR={root}".encode() in env.read():
                    pids.append(int(proc))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def ray_workers(root: str, titles: tuple[bytes, ...]) -> list[int]:
    """PIDs of the Ray worker processes under this Ray temp root whose process title contains one of `titles`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if any(t in cmdline for t in titles) and f"RAY_TMPDIR={root}".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids
