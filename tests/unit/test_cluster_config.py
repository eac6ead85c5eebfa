"""cluster.yaml (AWS, autoscaling GPU workers) and cluster-onprem.yaml (SSH machines) pass Ray's own config
preparation and schema validation offline, and say what the README promises."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def _prepared(name: str) -> dict:
    config = yaml.safe_load((ROOT / name).read_text())
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before it launches anything
    validate_config(prepared)  # Ray's JSON schema plus its own consistency checks
    return prepared


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_configs_validate_and_start_mlflow_on_the_head(name):
    config = _prepared(name)
    start = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in start and "postgresql+psycopg2://" in start and "--artifacts-destination" in start
    assert "0.0.0.0" not in start and "--host $(hostname -I" in start  # the private address only
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard is reached by port forwarding
    setup = " ".join(config["setup_commands"])
    assert 'pip install -q -e "$HOME/ptplus-tune[data]"' in setup and "PTPLUS_STORAGE_PATH=/mnt/shared" in setup
    head = " ".join(config["head_setup_commands"])
    assert "MLFLOW_TRACKING_URI=http://" in head
    assert "createdb -O mlflow optuna" in head and "PTPLUS_OPTUNA_STORAGE=postgresql+psycopg2://" in head
    assert config["file_mounts"] == {"~/ptplus-tune": "."}
    assert "ray start --address=$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])


def test_aws_config_autoscales_gpu_workers_from_zero():
    config = _prepared("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials go to GPU workers
    (worker_type,) = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert worker_type["min_workers"] == 0 and worker_type["max_workers"] >= 1
    assert worker_type["node_config"]["InstanceType"].startswith("g")
    assert worker_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "PTPLUS_GPU_AUTOSCALING=1" in " ".join(config["head_setup_commands"])
    assert "mount -t nfs4" in " ".join(config["setup_commands"])


def test_onprem_config_uses_the_local_provider():
    config = _prepared("cluster-onprem.yaml")
    assert config["provider"]["type"] == "local" and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]
