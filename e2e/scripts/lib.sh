# Common helpers for the e2e harness scripts. Source it; do not execute it.
set -euo pipefail
E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
# shellcheck disable=SC1091
source <(sed -e 's/[[:space:]]*#.*$//' "$E2E_DIR/versions.env")
MULTIVPC_CACHE="${MULTIVPC_CACHE:-${HOME:-/root}/.cache/kubeovn-multivpc}"
RUN_DIR="${MULTIVPC_E2E_RUN_DIR:-$E2E_DIR/.run}"
K8S_BIN="$MULTIVPC_CACHE/kubernetes-$K8S_VERSION/bin"
ETCD_BIN="$MULTIVPC_CACHE/etcd-$ETCD_VERSION/bin"
KWOK_BIN="$MULTIVPC_CACHE/kwok-$KWOK_VERSION/bin"
HELM_BIN="$MULTIVPC_CACHE/helm-$HELM_VERSION/bin"
COREDNS_BIN="$MULTIVPC_CACHE/coredns-$COREDNS_VERSION/bin"

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_locked ARGS...: apt-get ARGS, waiting (up to MULTIVPC_APT_LOCK_TIMEOUT s, default 600) while
# another apt or unattended-upgrades holds the dpkg or lists lock, instead of failing at once.
# DPkg::Lock::Timeout covers the dpkg lock; `update`'s lists lock needs the retry.
apt_locked() {
  local deadline=$(( $(date +%s) + ${MULTIVPC_APT_LOCK_TIMEOUT:-600} )) err
  err=$(mktemp)
  until apt-get -o DPkg::Lock::Timeout="${MULTIVPC_APT_LOCK_TIMEOUT:-600}" "$@" </dev/null >/dev/null 2>"$err"; do
    if grep -qi 'could not get lock\|unable to acquire\|is another process using it' "$err" \
        && [ "$(date +%s)" -lt "$deadline" ]; then
      log "apt-get $1: another apt holds the lock; waiting"
      sleep 5
    else
      cat "$err" >&2; rm -f "$err"; die "apt-get $* failed"
    fi
  done
  rm -f "$err"
}

# apt_ensure CMD PKG [CMD PKG ...]: install Debian packages for missing commands.
apt_ensure() {
  local missing=()
  while [ $# -ge 2 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_locked update -qq
  apt_locked install -y -qq --no-install-recommends "${missing[@]}"
}

KWOK_WORKDIR="$RUN_DIR/kwok"
export KWOK_WORKDIR
export PATH="$K8S_BIN:$ETCD_BIN:$KWOK_BIN:$HELM_BIN:$PATH"
FORWARD_BIN="${MULTIVPC_FORWARD_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/multivpc-netns-forward}"
# One harness per run dir. Its instance number (20..219, from the run dir's
# path) keeps two harnesses on one machine (e.g. a developer's and CI's fresh
# clone) apart: netns names and the 127.<instance>.x.y kubelet addresses.
HARNESS_INSTANCE=$(( $(printf '%s' "$RUN_DIR" | cksum | cut -d' ' -f1) % 200 + 20 ))
# Prefix of every network namespace this harness creates (e2e-down removes them all).
NETNS_PREFIX="mvpc${HARNESS_INSTANCE}-"
EXT_NETNS=${NETNS_PREFIX}ext
EXT_CIDR_PREFIX=172.50      # shared external network 172.50.0.0/16 (inside mvpc-ext only)
KUBELET_PORT=10250          # kwok kubelet API port inside each gateway netns

kubeconfig_of() { echo "$RUN_DIR/$1.kubeconfig"; }
kc() { local c=$1; shift; kubectl --kubeconfig "$(kubeconfig_of "$c")" "$@"; }

# cluster_index NAME: stable small integer per cluster, allocated on first use.
cluster_index() {
  local c=$1 f="$RUN_DIR/$1/index"
  mkdir -p "$RUN_DIR/$c"
  if [ ! -s "$f" ]; then
    (
      flock 9
      local n=1
      while grep -qx "$n" "$RUN_DIR"/*/index 2>/dev/null; do n=$((n + 1)); done
      echo "$n" >"$f"
    ) 9>"$RUN_DIR/.index.lock"
  fi
  cat "$f"
}

# start_daemon PIDFILE LOGFILE CMD...: start CMD detached, record its pid.
start_daemon() {
  local pidfile=$1 logfile=$2; shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_daemon PIDFILE: TERM then KILL the recorded pid (only if it is still ours).
stop_daemon() {
  local pidfile=$1 pid
  [ -s "$pidfile" ] || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

host_deps() {
  apt_ensure ip iproute2 iptables iptables ping iputils-ping flock util-linux setsid util-linux sysctl procps busybox busybox
}
