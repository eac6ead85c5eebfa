#!/usr/bin/env bash
# A real `ray up` of cluster-onprem.yaml on this machine, as far as a machine without a cloud allows:
# sshd with a generated key, cluster-onprem.yaml pointed at 127.0.0.1, `ray up -y`, a study run on the head through
# `ray exec`, `ray down -y`, and a check that nothing is left running.
#
#   scripts/cluster_e2e.sh [SPACE]        (make cluster-e2e; SPACE defaults to quick, on the embedded model)
#
# Everything runs inside a private network + pid namespace that only has loopback: sshd (port 22, which Ray's ssh
# has no option to change), the Ray head and the MLflow server are unreachable from outside and every process dies
# with the namespace; temp files (Ray's sessions, the launcher's state, locks and config caches) go to a work folder
# that is removed at the end (KEEP_E2E=1 keeps it). Needs root (unshare).
# Derived from cluster-onprem.yaml: head_ip/auth point here, no worker ips, no file mounts or setup commands (this
# checkout and its .venv are the installation), the venv's absolute path instead of ~/ptplus, sqlite for MLflow.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
SPACE=${1:-quick}

if [ "${PTPLUS_E2E_INSIDE:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "error: cluster_e2e needs root (network namespace, sshd on port 22)" >&2; exit 2; }
  [ -x "$VENV/bin/ray" ] || { echo "error: no $VENV: run make install first" >&2; exit 2; }
  if ! command -v rsync > /dev/null || [ ! -x /usr/sbin/sshd ]; then
    echo "installing openssh-server and rsync (Ray's cluster launcher needs them)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync > /dev/null
  fi
  for leftover in ~/ray_bootstrap_config.yaml ~/ray_bootstrap_key.pem; do
    [ ! -e "$leftover" ] || { echo "error: $leftover exists (another cluster's?); not touching it" >&2; exit 2; }
  done
  WORK=$(mktemp -d /var/tmp/ptplus-e2e.XXXXXX)
  status=0
  PTPLUS_E2E_INSIDE=1 PTPLUS_E2E_WORK=$WORK unshare --pid --fork --mount-proc --net \
    bash "${BASH_SOURCE[0]}" "$SPACE" || status=$?
  rm -f ~/ray_bootstrap_config.yaml ~/ray_bootstrap_key.pem  # the head's copies: the head was this machine
  [ -n "${KEEP_E2E:-}" ] || rm -rf "$WORK"
  exit $status
fi

# ---- inside the namespace -------------------------------------------------------------------------------------
WORK=$PTPLUS_E2E_WORK
mkdir -p "$WORK/tmp"
ip link set lo up
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 TMPDIR=$WORK/tmp RAY_TMPDIR=$WORK/tmp
step() { echo "[cluster-e2e $(date +%H:%M:%S)] $*" >&2; }

step "sshd on 127.0.0.1:22 with a generated key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
mkdir -p /run/sshd
/usr/sbin/sshd -f /dev/null -h "$WORK/host_key" -o ListenAddress=127.0.0.1 -o Port=22 -o UsePAM=no \
  -o PermitRootLogin=prohibit-password -o AuthorizedKeysFile="$WORK/authorized_keys" -o StrictModes=no \
  -o PidFile="$WORK/sshd.pid"

step "cluster config from cluster-onprem.yaml"
"$VENV/bin/python" - "$ROOT/cluster-onprem.yaml" "$WORK" "$VENV" <<'EOF'
import sys, yaml
source, work, venv = sys.argv[1:4]
config = yaml.safe_load(open(source))
config["cluster_name"] = "ptplus-e2e"
config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
config["auth"] = {"ssh_user": "root", "ssh_private_key": f"{work}/client_key"}
config["file_mounts"], config["setup_commands"], config["head_setup_commands"] = {}, [], []
env = f"export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TMPDIR={work}/tmp RAY_TMPDIR={work}/tmp; "
def adapt(command):
    command = command.replace("~/ptplus/bin/", f"{venv}/bin/").replace("/mnt/shared", work)
    command = command.replace("postgresql+psycopg2://mlflow:mlflow@127.0.0.1:5432/mlflow", f"sqlite:///{work}/mlflow.db")
    return env + command.replace("$(hostname -I | cut -d\" \" -f1)", "127.0.0.1")
config["head_start_ray_commands"] = [adapt(c) for c in config["head_start_ray_commands"]]
config["worker_start_ray_commands"] = [adapt(c) for c in config["worker_start_ray_commands"]]
yaml.safe_dump(config, open(f"{work}/cluster.yaml", "w"), sort_keys=False)
EOF

cleanup() { "$VENV/bin/ray" down -y "$WORK/cluster.yaml" > /dev/null 2>&1 || true; }
trap cleanup EXIT

step "ray up"
"$VENV/bin/ray" up -y --no-config-cache "$WORK/cluster.yaml" > "$WORK/ray_up.log" 2>&1 || {
  tail -30 "$WORK/ray_up.log" >&2; exit 1; }
for _ in $(seq 60); do  # the head's MLflow server starts in the background
  "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)" \
    2> /dev/null && break
  sleep 1
done

step "ptplus-tune --space $SPACE on the head (ray exec)"
"$VENV/bin/ray" exec "$WORK/cluster.yaml" "export RAY_AUTH_MODE=disabled TMPDIR=$WORK/tmp RAY_TMPDIR=$WORK/tmp; \
  cd $WORK && $VENV/bin/ptplus-tune --space $SPACE --address 127.0.0.1:6380 \
  --tracking-uri http://127.0.0.1:5000 --storage-path $WORK/results --name e2e" 2>&1 | tee "$WORK/study.log"
grep -q "study e2e done" "$WORK/study.log" || { echo "error: the study did not finish" >&2; exit 1; }
grep -q "registered: models:/" "$WORK/study.log" || { echo "error: no adapter was registered" >&2; exit 1; }

step "ray down"
"$VENV/bin/ray" down -y "$WORK/cluster.yaml" > "$WORK/ray_down.log" 2>&1
trap - EXIT
sleep 2
# `ray down` exits 0 even when it stopped nothing: look at the processes themselves.
if pgrep -f "raylet|gcs_server" > /dev/null; then
  echo "error: Ray processes are still running after ray down:" >&2
  pgrep -af "raylet|gcs_server" >&2
  exit 1
fi
step "ok: ray up, a study through ray exec, ray down; nothing of Ray left running"
