#!/usr/bin/env bash
# A real `ray up` of cluster-onprem.yaml on this machine, as far as a machine without a cloud allows:
# sshd with a generated key, cluster-onprem.yaml pointed at 127.0.0.1, `ray up -y`, a study run on the head through
# `ray exec`, `ray down -y`, and a check that nothing is left running.
#
#   scripts/cluster_e2e.sh [SPACE]        (make cluster-e2e; SPACE defaults to quick, on the embedded model)
#
# Everything runs inside a private network + pid + mount namespace that only has loopback: sshd (port 22, which
# Ray's ssh has no option to change), the Ray head and the MLflow server are unreachable from outside and every
# process dies with the namespace. The head's home is an overlay on $HOME whose changes land in the work folder:
# Ray's ray_bootstrap_config.yaml and key, the MLflow log, ~/ptplus linked to this checkout's .venv and the lines
# cluster-onprem.yaml's setup would add to ~/.bashrc. Temp files (Ray's sessions, the launcher's state, locks and
# config caches) go to the work folder too, which is removed at the end (KEEP_E2E=1 keeps it). Needs root.
# Derived from cluster-onprem.yaml: head_ip/auth point here, no worker ips, no file mounts or setup commands (this
# checkout and its .venv are the installation), sqlite instead of PostgreSQL for MLflow, the work folder as
# /mnt/shared.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
SPACE=${1:-quick}

if [ "${PTPLUS_E2E_INSIDE:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "error: cluster_e2e needs root (network namespace, sshd on port 22)" >&2; exit 2; }
  [ -x "$VENV/bin/ray" ] || { echo "error: no $VENV: run make install first" >&2; exit 2; }
  if ! command -v rsync > /dev/null || [ ! -x /usr/sbin/sshd ]; then
    echo "installing openssh-server and rsync (Ray's cluster launcher needs them)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq openssh-server rsync > /dev/null 2>&1 || { apt-get update -qq > /dev/null 2>&1 &&
      apt-get install -y -qq openssh-server rsync > /dev/null 2>&1; } || {
      echo "error: could not install openssh-server and rsync with apt-get" >&2; exit 3; }
  fi
  WORK=$(mktemp -d /var/tmp/ptplus-e2e.XXXXXX)
  status=0
  PTPLUS_E2E_INSIDE=1 PTPLUS_E2E_WORK=$WORK unshare --pid --fork --mount-proc --net --mount \
    bash "${BASH_SOURCE[0]}" "$SPACE" || status=$?
  [ -n "${KEEP_E2E:-}" ] || rm -rf "$WORK"
  exit $status
fi

# ---- inside the namespace -------------------------------------------------------------------------------------
WORK=$PTPLUS_E2E_WORK
step() { echo "[cluster-e2e $(date +%H:%M:%S)] $*" >&2; }
ip link set lo up
mkdir -p "$WORK/tmp" "$WORK/home" "$WORK/overlay"
mount -t overlay overlay -o "lowerdir=$HOME,upperdir=$WORK/home,workdir=$WORK/overlay" "$HOME"
ln -sfn "$VENV" "$HOME/ptplus"
{
  echo "export PATH=\$HOME/ptplus/bin:\$PATH"
  echo "export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TMPDIR=$WORK/tmp RAY_TMPDIR=$WORK/tmp"
} >> "$HOME/.bashrc"
# shellcheck source=/dev/null
source "$HOME/.bashrc"
export PYTHONUNBUFFERED=1

step "sshd on 127.0.0.1:22 with a generated key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
mkdir -p /run/sshd
/usr/sbin/sshd -f /dev/null -h "$WORK/host_key" -o ListenAddress=127.0.0.1 -o Port=22 -o UsePAM=no \
  -o PermitRootLogin=prohibit-password -o AuthorizedKeysFile="$WORK/authorized_keys" -o StrictModes=no \
  -o PidFile="$WORK/sshd.pid"

step "cluster config from cluster-onprem.yaml"
python - "$ROOT/cluster-onprem.yaml" "$WORK" <<'PY'
import sys, yaml
source, work = sys.argv[1:3]
config = yaml.safe_load(open(source))
config["cluster_name"] = "ptplus-e2e"
config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
config["auth"] = {"ssh_user": "root", "ssh_private_key": f"{work}/client_key"}
config["file_mounts"], config["setup_commands"], config["head_setup_commands"] = {}, [], []
def adapt(command):
    command = command.replace("/mnt/shared", work).replace('$(hostname -I | cut -d" " -f1)', "127.0.0.1")
    return command.replace("postgresql+psycopg2://mlflow:mlflow@127.0.0.1:5432/mlflow", f"sqlite:///{work}/mlflow.db")
for key in ("head_start_ray_commands", "worker_start_ray_commands"):
    config[key] = [adapt(c) for c in config[key]]
yaml.safe_dump(config, open(f"{work}/cluster.yaml", "w"), sort_keys=False)
PY

cleanup() { ray down -y "$WORK/cluster.yaml" > /dev/null 2>&1 || true; }
trap cleanup EXIT

step "ray up"
ray up -y --no-config-cache "$WORK/cluster.yaml" > "$WORK/ray_up.log" 2>&1 || { tail -30 "$WORK/ray_up.log" >&2; exit 1; }
for _ in $(seq 60); do  # the head's MLflow server starts in the background
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)" 2> /dev/null \
    && break
  sleep 1
done

step "ptplus-tune --space $SPACE on the head (ray exec)"
ray exec "$WORK/cluster.yaml" "cd $WORK && ptplus-tune --space $SPACE --address 127.0.0.1:6380 \
  --tracking-uri http://127.0.0.1:5000 --storage-path $WORK/results --name e2e" 2>&1 | tee "$WORK/study.log"
grep -q "study e2e done" "$WORK/study.log" || { echo "error: the study did not finish" >&2; exit 1; }
grep -q "registered: models:/" "$WORK/study.log" || { echo "error: no adapter was registered" >&2; exit 1; }

step "ray down"
ray down -y "$WORK/cluster.yaml" > "$WORK/ray_down.log" 2>&1
trap - EXIT
sleep 2
# `ray down` exits 0 even when it stopped nothing: look at the processes themselves.
if pgrep -f "raylet|gcs_server" > /dev/null; then
  echo "error: Ray processes are still running after ray down:" >&2
  pgrep -af "raylet|gcs_server" | cut -c1-200 >&2
  exit 1
fi
step "ok: ray up, a study through ray exec, ray down; nothing of Ray left running"
