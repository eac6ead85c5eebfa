"""A study whose disk fills up mid-run (something else writes a large file), then resumed once there is room again.
Run inside a private mount namespace (see test_failures.py), where a small tmpfs stands in for the disk. Writes
what it saw as JSON. MODE `guard`: the file leaves the disk just under the study's reserve (the guard stops the
study); `hard`: the guard is off and the file takes the last byte (the trials' own writes fail).

    unshare --mount --propagation private python -m tests.disk_full_scenario SPACE WORKDIR TRACKING_URI MODE
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.polling import wait_until
from tests.ray_env import kill_ray_under, ray_env
from tests.studies import run_cli, trial_results

SIZE_KB, RESERVE_KB = 4096, 400


def fill(path: Path, leave_kb: int) -> None:
    """Write zeros to `path` until the disk has `leave_kb` KB free (0: until it is full)."""
    free_kb = int(subprocess.run(["df", "-k", "--output=avail", str(path.parent)], capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
    with open(path, "wb", buffering=0) as f:
        try:
            f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
            while not leave_kb:
                f.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full
            pass


def main(space: str, workdir: str, tracking: str, mode: str) -> None:
    from mlflow import MlflowClient

    work, disk = Path(workdir), Path(workdir) / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_KB}k", "tmpfs", str(disk)], check=True)
    results, out = disk / "results", {"results": str(disk / "results")}
    name, reserve_mb = ("fd", str(RESERVE_KB / 1024)) if mode == "guard" else ("fdhard", "0")
    env = ray_env(PTPLUS_MIN_FREE_MB=reserve_mb)
    try:
        driver = subprocess.Popen([sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--name", name,
                                   "--tracking-uri", tracking, "--registered-model", f"reg-{name}", "--storage-path",
                                   str(results)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=work)
        def both_at_step_100():
            found = trial_results(results / name)
            return len(found) == 2 and all(rows[-1]["step"] >= 100 for rows in found.values())

        wait_until(both_at_step_100, 300)
        fill(disk / "filler", RESERVE_KB // 2 if mode == "guard" else 0)  # another program writes a large file
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    out["full"] = {"returncode": driver.returncode, "stdout": stdout, "stderr": stderr}
    out["versions_when_full"] = len(MlflowClient(tracking).search_model_versions(f"name = 'reg-{name}'"))
    (disk / "filler").unlink()  # room again
    env = ray_env(PTPLUS_MIN_FREE_MB=reserve_mb)
    try:
        proc = run_cli(["--resume", name, "--storage-path", str(results)], env, cwd=work)
    finally:
        kill_ray_under(env["RAY_TMPDIR"])
    out["resumed"] = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                      "steps": {tid: [r["step"] for r in rows] for tid, rows in trial_results(results / name).items()}}
    (work / "scenario.json").write_text(json.dumps(out))
    subprocess.run(["umount", str(disk)], check=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])
