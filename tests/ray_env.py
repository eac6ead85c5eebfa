"""Environment for tests that start Ray: no token auth, loopback only, a private temp root (so a test can find and
end every Ray process it started)."""

import os
import subprocess
import tempfile


def ray_env(**extra) -> dict:
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_TMPDIR": root, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra}


def kill_ray_under(root: str) -> None:
    """SIGKILL every process whose command line mentions this test's Ray temp root."""
    subprocess.run(["pkill", "-9", "-f", root], check=False)
