"""A two-node Ray cluster on this machine, run inside a loopback-only network + pid namespace (see test_cluster.py):
an MLflow server as on the head (PostgreSQL backend), a Ray head and a second node joined with `ray start
--address`, a study spread over both; the second node is killed mid-trial. Writes what it saw as JSON.

    unshare --pid --fork --mount-proc --net python -m tests.cluster_scenario SPACE WORKDIR DATABASE
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.mlflow_server import mlflow_server
from tests.polling import wait_until
from tests.studies import trial_results

HEAD_PORT = "6390"  # 6379 is Redis's on these machines
NODE_MARKER = "PTPLUS_TEST_NODE"


def _ray(*args, env, log: Path):
    with log.open("a") as out:
        subprocess.run([str(Path(sys.executable).with_name("ray")), *args], env=env, check=True, stdout=out,
                       stderr=subprocess.STDOUT, timeout=180)


def _kill_worker_node() -> list[int]:
    """SIGKILL every process of the second node (its raylet, agents and trial workers, which all inherit the
    marker variable `ray start` had; workers rename themselves, so the command line cannot tell): it is gone."""
    killed = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"{NODE_MARKER}=worker".encode() in environ:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except (ProcessLookupError, ValueError):
                pass
    return killed


def main(space: str, workdir: str, database: str) -> None:
    work = Path(workdir)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ray_root = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_root,
           "PYTHONUNBUFFERED": "1"}
    log = work / "ray.log"
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a real multi-node cluster; the namespace keeps it private
    (work / "artifacts").mkdir()
    # PostgreSQL through its unix socket: the namespace's loopback is not the host's.
    backend = f"postgresql+psycopg2://postgres@/{database}?host=/var/run/postgresql"
    out: dict = {"events": []}
    with mlflow_server(backend, str(work / "artifacts")) as tracking:
        _ray("start", "--head", f"--port={HEAD_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
             "--include-dashboard=false", env=env, log=log)
        _ray("start", f"--address=127.0.0.1:{HEAD_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
             env={**env, NODE_MARKER: "worker"}, log=log)
        study = work / "results" / "mn"
        driver = subprocess.Popen(
            [sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--address", f"127.0.0.1:{HEAD_PORT}",
             "--tracking-uri", tracking, "--storage-path", str(work / "results"), "--name", "mn", "--no-register"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        def all_running():  # every trial running and checkpointed at least twice: then kill a node
            results = trial_results(study)
            return len(results) == 8 and all(rows[-1]["step"] >= 6 for rows in results.values())

        wait_until(all_running, 600, give_up=lambda: driver.poll() is not None)
        out["nodes_before_kill"] = {tid: rows[-1]["node_id"] for tid, rows in trial_results(study).items()}
        out["killed_pids"] = _kill_worker_node()
        stdout, stderr = driver.communicate(timeout=900)
        out.update(returncode=driver.returncode, stdout=stdout, stderr=stderr)
        out["results"] = {tid: [{"step": r["step"], "node_id": r["node_id"]} for r in rows]
                          for tid, rows in trial_results(study).items()}
        from mlflow import MlflowClient

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("mn")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        out["runs"] = [{
            "trial_id": r.data.tags.get("ptplus.trial_id"), "parent": r.data.tags.get("mlflow.parentRunId"),
            "status": r.info.status, "tag_status": r.data.tags.get("ptplus.status"),
            "model_uri": r.data.tags.get("ptplus.model_uri"),
            "steps": sorted(m.step for m in client.get_metric_history(r.info.run_id, "eval_accuracy")),
        } for r in runs]
        _ray("stop", "--force", env=env, log=log)
    write_outcome(work, out, ray_root)


def write_outcome(work: Path, out: dict, ray_root: str) -> None:
    """After `ray stop`: the scenario's findings and the MLflow server's log, as scenario.json."""
    shutil.rmtree(ray_root, ignore_errors=True)
    out["server_log"] = "".join(p.read_text() for p in work.glob("mlflow-server-*.log"))
    (work / "scenario.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
