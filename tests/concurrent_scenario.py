"""Two studies at once on one two-node Ray cluster, one MLflow server and one Optuna database (PostgreSQL), run
inside a loopback-only network + pid namespace (see test_cluster.py): two users, or one user's two terminals, each
starting `ptplus-tune` against the same `ray start --head`. Writes what it saw as JSON.

    unshare --pid --fork --mount-proc --net python -m tests.concurrent_scenario SPACE WORKDIR MLFLOW_DB OPTUNA_DB
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cluster_scenario import HEAD_PORT, NODE_MARKER, _ray, write_outcome
from tests.mlflow_server import mlflow_server
from tests.studies import trial_results

STUDIES = ("alice", "bob")


def _socket_url(database: str) -> str:
    return f"postgresql+psycopg2://postgres@/{database}?host=/var/run/postgresql"  # the host's loopback is not ours


def main(space: str, workdir: str, mlflow_db: str, optuna_db: str) -> None:
    import optuna
    from mlflow import MlflowClient

    work = Path(workdir)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ray_root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_root,
           "PYTHONUNBUFFERED": "1", "PTPLUS_OPTUNA_STORAGE": _socket_url(optuna_db)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    log = work / "ray.log"
    (work / "artifacts").mkdir()
    out: dict = {}
    with mlflow_server(_socket_url(mlflow_db), str(work / "artifacts")) as tracking:
        # 2 + 2 CPUs for two studies of up to 3 one-CPU trials at once each: they must share.
        _ray("start", "--head", f"--port={HEAD_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             "--include-dashboard=false", env=env, log=log)
        _ray("start", f"--address=127.0.0.1:{HEAD_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             env={**env, NODE_MARKER: "worker"}, log=log)
        drivers = {name: subprocess.Popen(
            [sys.executable, "-m", "ptplus_tune.cli", "--space", space, "--address", f"127.0.0.1:{HEAD_PORT}",
             "--tracking-uri", tracking, "--storage-path", str(work / "results"), "--name", name,
             "--registered-model", "shared-model"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work) for name in STUDIES}
        client = MlflowClient(tracking)
        for name, driver in drivers.items():
            stdout, stderr = driver.communicate(timeout=900)
            experiment = client.get_experiment_by_name(name)
            runs = client.search_runs([experiment.experiment_id], max_results=100) if experiment else []
            out[name] = {
                "returncode": driver.returncode, "stdout": stdout, "stderr": stderr,
                "results": {tid: [r["step"] for r in rows]
                            for tid, rows in trial_results(work / "results" / name).items()},
                "runs": [{"trial_id": r.data.tags.get("ptplus.trial_id"), "study": r.data.tags.get("ptplus.study"),
                          "run_id": r.info.run_id, "parent": r.data.tags.get("mlflow.parentRunId"),
                          "status": r.info.status, "start": r.info.start_time, "end": r.info.end_time}
                         for r in runs],
            }
        out["optuna"] = {s.study_name: [t.state.name for t in optuna.load_study(
            study_name=s.study_name, storage=_socket_url(optuna_db)).get_trials()]
            for s in optuna.get_all_study_summaries(_socket_url(optuna_db), include_best_trial=False)}
        out["versions"] = [v.version for v in client.search_model_versions("name = 'shared-model'")]
        _ray("stop", "--force", env=env, log=log)
    write_outcome(work, out, ray_root)


if __name__ == "__main__":
    main(*sys.argv[1:5])
