#!/usr/bin/env bash
# Start the named clusters (default: cluster1 cluster2 broker) with kwokctl's
# binary runtime from the locally built binaries only. Idempotent: a cluster
# whose API server answers is left alone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTERS=("$@")
[ ${#CLUSTERS[@]} -gt 0 ] || CLUSTERS=(cluster1 cluster2 broker)

host_deps
for b in "$ETCD_BIN/etcd" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" \
  "$K8S_BIN/kube-scheduler" "$K8S_BIN/kubectl" "$KWOK_BIN/kwok" "$KWOK_BIN/kwokctl"; do
  [ -x "$b" ] || die "missing $b: run 'make e2e-build' first"
done
[ -x "$FORWARD_BIN" ] || die "missing $FORWARD_BIN: run 'make e2e-build' first"
mkdir -p "$RUN_DIR/logs" "$KWOK_WORKDIR"
# A run dir without state but netns of this instance: left by a harness whose
# run dir was wiped. Remove them so addresses and veth names start clean.
if [ ! -s "$RUN_DIR/clusters" ]; then
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NETNS_PREFIX" || true); do
    log "removing stale netns $ns"
    ip netns del "$ns"
  done
fi

cluster_healthy() {
  [ -s "$(kubeconfig_of "$1")" ] && kc "$1" get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

create_cluster() {
  local c=$1 cfg="$RUN_DIR/$1/kwokctl.yaml"
  mkdir -p "$RUN_DIR/$c"
  cat >"$cfg" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverPort: 0
  kubeAuthorization: true
  kubeVersion: ${K8S_VERSION}
  kwokVersion: ${KWOK_VERSION}
  etcdVersion: ${ETCD_VERSION}
  etcdBinary: ${ETCD_BIN}/etcd
  kubeApiserverBinary: ${K8S_BIN}/kube-apiserver
  kubeControllerManagerBinary: ${K8S_BIN}/kube-controller-manager
  kubeSchedulerBinary: ${K8S_BIN}/kube-scheduler
  kubectlBinary: ${K8S_BIN}/kubectl
  kwokControllerBinary: ${KWOK_BIN}/kwok
  nodeLeaseDurationSeconds: 40
  # As a real cluster: a node whose lease stops renewing is NotReady after 40s
  # (kwokctl's default heartbeat factor 5 makes it 3m20s), so node-failure
  # tests take about a minute.
  heartbeatFactor: 1
  kubeControllerManagerNodeMonitorPeriodMilliseconds: 5000
  kubeControllerManagerNodeMonitorGracePeriodMilliseconds: 40000
componentsPatches:
- name: kwok-controller
  extraArgs:
  # The cluster's own kwok-controller runs plain worker nodes only; each
  # gateway node gets a kwok-controller inside its own netns (gateway.sh).
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
- name: kube-apiserver
  extraArgs:
  - key: kubelet-preferred-address-types
    value: InternalIP
YAML
  # kwokctl exits 0 even when the cluster never got ready, and an API server
  # can die in its first seconds (each kwokctl process picks its ports afresh,
  # so a port another cluster's component takes a moment later is possible):
  # check that it answers, keep the failed attempt's logs, and try again.
  local attempt
  for attempt in 1 2 3; do
    if [ "$attempt" = 1 ]; then log "creating cluster $c"; else log "creating cluster $c (attempt $attempt)"; fi
    kwokctl create cluster --name "$c" --config "$cfg" --wait 2m </dev/null >>"$RUN_DIR/logs/$c-create.log" 2>&1 &&
      kwokctl get kubeconfig --name "$c" >"$(kubeconfig_of "$c").tmp" 2>>"$RUN_DIR/logs/$c-create.log" &&
      mv "$(kubeconfig_of "$c").tmp" "$(kubeconfig_of "$c")" &&
      for _ in $(seq 20); do cluster_healthy "$c" && return 0; sleep 1; done
    local kept="$RUN_DIR/logs/$c-failed-attempt-$attempt"
    rm -rf "$kept" && cp -r "$KWOK_WORKDIR/clusters/$c/logs" "$kept" 2>/dev/null || true
    for f in "$kept"/kube-apiserver.log "$kept"/etcd.log; do
      [ -s "$f" ] && { log "cluster $c: last lines of $f"; tail -15 "$f" >&2; }
    done
    kwokctl delete cluster --name "$c" >>"$RUN_DIR/logs/$c-create.log" 2>&1 || true
  done
  tail -30 "$RUN_DIR/logs/$c-create.log" >&2
  die "cluster $c did not come up in 3 attempts (logs: $RUN_DIR/logs/$c-create.log, $RUN_DIR/logs/$c-failed-attempt-*)"
}

worker_node() {
  local c=$1
  kc "$c" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: ${c}-worker
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: ${c}-worker
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    multivpc.e2e/role: worker
spec: {}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
YAML
}

for c in "${CLUSTERS[@]}"; do
  [[ "$c" =~ ^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$ ]] || die "cluster name '$c' must be a short DNS label (<= 16 chars)"
  cluster_index "$c" >/dev/null
  if cluster_healthy "$c"; then
    log "cluster $c already up"
  else
    if [ -d "$KWOK_WORKDIR/clusters/$c" ]; then
      log "cluster $c exists but does not answer: recreating"
      kwokctl delete cluster --name "$c" >>"$RUN_DIR/logs/$c-create.log" 2>&1 || true
    fi
    create_cluster "$c"
  fi
  worker_node "$c"
  # The VPC-side netns (stands for the OVN logical router of the cluster's VPC).
  "$E2E_DIR/scripts/netns.sh" vpc "$c"
done

for c in "${CLUSTERS[@]}"; do
  kc "$c" wait --for=condition=Ready "node/${c}-worker" --timeout=120s >/dev/null
  # The default ServiceAccount is created by kube-controller-manager: wait for it
  # so that tests can create pods right away.
  for _ in $(seq 120); do kc "$c" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done
  log "cluster $c ready: $(kc "$c" version -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -1) at $(kc "$c" config view -o jsonpath='{.clusters[0].cluster.server}')"
done
{ cat "$RUN_DIR/clusters" 2>/dev/null || true; printf '%s\n' "${CLUSTERS[@]}"; } | sort -u >"$RUN_DIR/clusters.tmp"
mv "$RUN_DIR/clusters.tmp" "$RUN_DIR/clusters"
