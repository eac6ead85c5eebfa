"""A study whose disk fills up mid-run (something else writes a large file), then resumed once there is room again.
Run inside a private mount namespace (see test_failures.py), where a small tmpfs stands in for the disk. Writes
what it saw as JSON.

    unshare --mount --propagation private python -m tests.disk_full_scenario SPACE WORKDIR TRACKING_URI
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, trial_results

SIZE_KB, RESERVE_KB = 4096, 400


def main(space: str, workdir: str, tracking: str) -> None:
    from mlflow import MlflowClient

    work, disk = Path(workdir), Path(workdir) / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_KB}k", "tmpfs", str(disk)], check=True)
    results, out = disk / "results", {"results": str(disk / "results")}
    env = ray_env(PTPLUS_MIN_FREE_MB=str(RESERVE_KB / 1024))
    try:
        driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--name", "fd",
                                   "--tracking-uri", tracking, "--registered-model", "reg-fd", "--storage-path",
                                   str(results)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=work)
        deadline = time.time() + 300
        while time.time() < deadline:
            found = trial_results(results / "fd")
            if len(found) == 2 and all(rows[-1]["step"] >= 100 for rows in found.values()):
                break
            time.sleep(0.2)
        # Another program fills the disk to just under the reserve.
        free_kb = subprocess.run(["df", "-k", "--output=avail", str(disk)], capture_output=True, text=True,
                                 check=True).stdout.split()[-1]
        (disk / "filler").write_bytes(b"\0" * ((int(free_kb) - RESERVE_KB // 2) * 1024))
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    out["full"] = {"returncode": driver.returncode, "stdout": stdout, "stderr": stderr}
    out["versions_when_full"] = len(MlflowClient(tracking).search_model_versions("name = 'reg-fd'"))
    (disk / "filler").unlink()  # room again
    env = ray_env(PTPLUS_MIN_FREE_MB=str(RESERVE_KB / 1024))
    try:
        proc = run_cli(["--resume", "fd", "--storage-path", str(results)], env, cwd=work)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    out["resumed"] = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                      "steps": {tid: [r["step"] for r in rows] for tid, rows in trial_results(results / "fd").items()}}
    (work / "scenario.json").write_text(json.dumps(out))
    subprocess.run(["umount", str(disk)], check=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
