#!/usr/bin/env bash
# Network namespaces of the harness.
#   netns.sh vpc CLUSTER            ensure the shared external netns and CLUSTER's VPC netns
#   netns.sh gateway-up CLUSTER GW [vm]  ensure a gateway netns + its kwok node (prints its env file);
#                                   with vm, inside the kernel VM (vm.sh up first; e2e/README.md)
#   netns.sh gateway-down CLUSTER GW
#   netns.sh gateway-reset CLUSTER GW  fresh netns state (as after a pod restart)
#   netns.sh gateway-stop CLUSTER GW   node failure: stop its kwok-controller (gateway-up restarts it)
#   netns.sh down-all               stop every gateway daemon and delete every harness netns
# Addressing (c = cluster index, g = gateway slot in that cluster):
#   VPC subnet 10.c.0.0/24, OVN router (VPC netns, br-vpc) 10.c.0.1, gateway lanIp 10.c.0.(255-g)
#   Globalnet CIDR 242.(c-1).0.0/16 (VPC netns holds 242.(c-1).0.10 on lo)
#   external network 172.50.0.0/16 (mvpc-ext, br-ext 172.50.0.1), gateway net1 172.50.c.(10+g)
#   kubelet API of the gateway node: host 127.<instance>.c.g:10250 -> netns 127.0.0.1:10250
#     (in the VM: host 127.<instance>.c.g:10250 -> qemu -> VM 10.0.2.15:(10000+256c+g) -> netns)
#   netns names: mvpc<instance>-ext, mvpc<instance>-<cluster>-vpc, mvpc<instance>-<cluster>-gw-<gw>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns_exists() { [ -e "/run/netns/$1" ]; }

# The kernel VM: inside it (MULTIVPC_IN_VM=1) this script does what it does on the host, with
# its daemons' pid files apart (pids-vm: a VM pid means nothing on the host) and the API
# server and kubelet reached through qemu's user network.
IN_VM="${MULTIVPC_IN_VM:-0}"
VM_AGENT_BIN="${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/multivpc-vm"
VM_GUEST_IP=10.0.2.15
VM_HOST_IP=10.0.2.2
piddir_of() { if [ "$IN_VM" = 1 ]; then echo "$RUN_DIR/$1/pids-vm"; else echo "$RUN_DIR/$1/pids"; fi; }
# in_vm ARGS...: this script with ARGS, inside the VM.
in_vm() {
  "$VM_AGENT_BIN" exec --run-dir "$RUN_DIR" -- env MULTIVPC_IN_VM=1 MULTIVPC_E2E_RUN_DIR="$RUN_DIR" \
    MULTIVPC_CACHE="$MULTIVPC_CACHE" MULTIVPC_FORWARD_BIN="$FORWARD_BIN" PATH="$PATH" \
    bash "$E2E_DIR/scripts/netns.sh" "$@"
}
vm_hmp() { "$VM_AGENT_BIN" hmp --run-dir "$RUN_DIR" -- "$@"; }
placement_of() { sed -n 's/^GATEWAY_PLACEMENT=//p' "$(gateway_env "$1" "$2")" 2>/dev/null || true; }
# in_vm_from_host CLUSTER GW: whether GW lives in the VM and this is the host's side, so the
# command is carried into the VM.
in_vm_from_host() { [ "$IN_VM" != 1 ] && [ "$(placement_of "$1" "$2")" = vm ]; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

ensure_ext() {
  ns_exists "$EXT_NETNS" && return 0
  ip netns add "$EXT_NETNS"
  ip -n "$EXT_NETNS" link set lo up
  ip -n "$EXT_NETNS" link add br-ext type bridge
  ip -n "$EXT_NETNS" addr add "$EXT_CIDR_PREFIX.0.1/16" dev br-ext
  ip -n "$EXT_NETNS" link set br-ext up
}

vpc_netns() { echo "${NETNS_PREFIX}$1-vpc"; }
# kwokctl's service CIDR. Kube-OVN routes it from a NAT gateway pod into its VPC (the pod's
# `ovn.kubernetes.io/routes`: the subnet's gateway), which is how the pod reaches vpc-dns's VIP.
SERVICE_CIDR=10.0.0.0/24
gw_netns() { echo "${NETNS_PREFIX}$1-gw-$2"; }

# Creating the shared netns is serialized: gateways of two clusters may come up at once. A lock
# of the side they live on (flock over 9p is not one).
netns_lock() { if [ "$IN_VM" = 1 ]; then echo /run/multivpc-e2e-netns.lock; else echo "$RUN_DIR/.netns.lock"; fi; }

ensure_vpc() {
  local c=$1 ci ns
  ci=$(cluster_index "$c"); ns=$(vpc_netns "$c")
  exec 7>"$(netns_lock)"; flock 7
  ensure_ext
  if ! ns_exists "$ns"; then create_vpc "$c" "$ci" "$ns"; fi
  flock -u 7
}

create_vpc() {
  local c=$1 ci=$2 ns=$3
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "242.$((ci - 1)).0.10/32" dev lo
  ip -n "$ns" link add br-vpc type bridge
  ip -n "$ns" addr add "10.$ci.0.1/24" dev br-vpc
  ip -n "$ns" link set br-vpc up
  nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
  cat >"$RUN_DIR/$c/vpc.env" <<ENV
VPC_NETNS=$ns
VPC_CIDR=10.$ci.0.0/24
VPC_GATEWAY=10.$ci.0.1
GLOBALNET_CIDR=242.$((ci - 1)).0.0/16
VPC_WORKLOAD_IP=242.$((ci - 1)).0.10
EXT_NETNS=$EXT_NETNS
EXT_CIDR=$EXT_CIDR_PREFIX.0.0/16
EXT_GATEWAY=$EXT_CIDR_PREFIX.0.1
ENV
}

gateway_env() { echo "$RUN_DIR/$1/gateways/$2.env"; }

gateway_up() {
  local c=$1 gw=$2 placement=${3:-host} ci g envf ns
  [[ "$gw" =~ ^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$ ]] || die "gateway name '$gw' must be a DNS label (<= 32 chars)"
  [ -s "$(kubeconfig_of "$c")" ] || die "cluster $c is not up"
  case "$placement" in host | vm) ;; *) die "placement '$placement' must be host or vm" ;; esac
  mkdir -p "$RUN_DIR/$c/gateways"
  # Slots are allocated under this lock, on the host (also for a gateway in the VM, whose
  # script runs while the host holds it).
  if [ "$IN_VM" != 1 ]; then exec 8>"$RUN_DIR/$c/gateways/.lock"; flock 8; fi
  local was; was=$(placement_of "$c" "$gw")
  [ -z "$was" ] || [ "$was" = "$placement" ] || die "gateway $gw of $c is already up on the $was"
  if [ "$placement" = vm ] && [ "$IN_VM" != 1 ]; then
    [ -s "$RUN_DIR/vm/agent.addr" ] || die "no kernel VM is up (make e2e-vm-up, or VM=1 make e2e-up)"
    local out nodeip vmport answer
    out=$(in_vm gateway-up "$c" "$gw" vm) || die "gateway-up of $gw in the VM failed"
    nodeip=$(printf '%s\n' "$out" | sed -n 's/^NODE_IP=//p')
    vmport=$(printf '%s\n' "$out" | sed -n 's/^VM_KUBELET_PORT=//p')
    vm_hmp hostfwd_remove n0 "tcp:$nodeip:$KUBELET_PORT" >/dev/null
    answer=$(vm_hmp hostfwd_add n0 "tcp:$nodeip:$KUBELET_PORT-$VM_GUEST_IP:$vmport")
    [ -z "$answer" ] || die "qemu would not forward $nodeip:$KUBELET_PORT to the VM: $answer"
    flock -u 8
    printf '%s\n' "$out"
    return 0
  fi
  ci=$(cluster_index "$c"); envf=$(gateway_env "$c" "$gw"); ns=$(gw_netns "$c" "$gw")
  ensure_vpc "$c"
  if [ -s "$envf" ]; then
    g=$(sed -n 's/^GATEWAY_SLOT=//p' "$envf")
  else
    # Slots are never reused while the harness is up, so no neighbour cache
    # anywhere holds a stale MAC for a new gateway's addresses.
    g=$(cat "$RUN_DIR/$c/gateways/.last-slot" 2>/dev/null || echo 0)
    for f in "$RUN_DIR/$c"/gateways/*.env; do
      [ -e "$f" ] || continue
      local s; s=$(sed -n 's/^GATEWAY_SLOT=//p' "$f")
      [ "$s" -gt "$g" ] && g=$s
    done
    g=$((g + 1))
    echo "$g" >"$RUN_DIR/$c/gateways/.last-slot"
  fi
  [ "$g" -le 240 ] || die "more than 240 gateways created in $c since e2e-up: run e2e-down/e2e-up"
  local lan="10.$ci.0.$((255 - g))" ext="$EXT_CIDR_PREFIX.$ci.$((10 + g))" nodeip="127.$HARNESS_INSTANCE.$ci.$g"
  local node="gwnode-$gw" vpcns; vpcns=$(vpc_netns "$c")
  local piddir logdir="$RUN_DIR/logs" vmport=$((10000 + 256 * ci + g)) where=""
  piddir=$(piddir_of "$c")
  [ "$IN_VM" = 1 ] && where="-vm"
  cat >"$envf" <<ENV
CLUSTER=$c
GATEWAY=$gw
GATEWAY_SLOT=$g
GATEWAY_NETNS=$ns
GATEWAY_NODE=$node
NODE_IP=$nodeip
LAN_IP=$lan
LAN_CIDR=10.$ci.0.0/24
OVN_GATEWAY=10.$ci.0.1
EXTERNAL_IP=$ext
EXTERNAL_CIDR=$EXT_CIDR_PREFIX.0.0/16
EXTERNAL_GATEWAY=$EXT_CIDR_PREFIX.0.1
VPC_NETNS=$vpcns
EXT_NETNS=$EXT_NETNS
GATEWAY_PLACEMENT=$placement
ENV
  [ "$placement" = vm ] && echo "VM_KUBELET_PORT=$vmport" >>"$envf"
  if ! ns_exists "$ns"; then
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "g$g" netns "$vpcns"
    ip -n "$ns" link add net1 type veth peer name "c${ci}g$g" netns "$EXT_NETNS"
    ip -n "$vpcns" link set "g$g" master br-vpc up
    ip -n "$EXT_NETNS" link set "c${ci}g$g" master br-ext up
    ip -n "$ns" addr add "$lan/24" dev eth0
    ip -n "$ns" addr add "$ext/16" dev net1
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set net1 up
    ip -n "$ns" route add default via "$EXT_CIDR_PREFIX.0.1" dev net1
    ip -n "$ns" route add "$SERVICE_CIDR" via "10.$ci.0.1" dev eth0
    nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
  fi
  local port; port=$(kc "$c" config view -o jsonpath='{.clusters[0].cluster.server}' | sed 's#.*:##')
  local pki="$KWOK_WORKDIR/clusters/$c/pki" kcfg="$RUN_DIR/$c/gateways/$gw.kwok.yaml"
  local kubelet_listen="$nodeip:$KUBELET_PORT"
  if [ "$IN_VM" = 1 ]; then
    kubelet_listen="$VM_GUEST_IP:$vmport"
    # The API server where every kubeconfig says it is (127.0.0.1:<port>), in the VM too.
    if ! pid_alive "$piddir/api-bridge.pid"; then
      start_daemon "$piddir/api-bridge.pid" "$logdir/$c-vm-api-bridge.log" "$FORWARD_BIN" "--tag=$RUN_DIR/" \
        "127.0.0.1:$port=$VM_HOST_IP:$port"
    fi
  fi
  if ! pid_alive "$piddir/forward-$gw.pid"; then
    start_daemon "$piddir/forward-$gw.pid" "$logdir/$c-forward-$gw$where.log" "$FORWARD_BIN" "--tag=$RUN_DIR/" \
      "$kubelet_listen=$ns@127.0.0.1:$KUBELET_PORT" \
      "$ns@127.0.0.1:$port=127.0.0.1:$port"
  fi
  cat >"$kcfg" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  # the gateway pod gets podIP = lanIp, as with Kube-OVN
  cidr: $lan/32
---
# Every container of every pod on this node execs locally, i.e. inside this
# kwok-controller's network namespace.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: netns-local
spec:
  execs:
  - local:
      workDir: /
YAML
  kc "$c" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: netns
    multivpc.e2e/netns: $ns
  labels:
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    multivpc.e2e/role: gateway
    multivpc.e2e/gateway: $gw
spec:
  taints:
  - key: multivpc.e2e/gateway
    value: "$gw"
    effect: NoSchedule
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "10"}
  capacity: {cpu: "4", memory: 8Gi, pods: "10"}
YAML
  if ! pid_alive "$piddir/kwok-$gw.pid"; then
    start_daemon "$piddir/kwok-$gw.pid" "$logdir/$c-kwok-$gw$where.log" ip netns exec "$ns" \
      "$KWOK_BIN/kwok" --kubeconfig="$(kubeconfig_of "$c")" --config="$kcfg" \
      --manage-all-nodes=false --manage-single-node="$node" \
      --node-ip="$nodeip" --node-name="$node" --node-port="$KUBELET_PORT" \
      --server-address="127.0.0.1:$KUBELET_PORT" \
      --tls-cert-file="$pki/admin.crt" --tls-private-key-file="$pki/admin.key" \
      --node-lease-duration-seconds=40
  fi
  [ "$IN_VM" = 1 ] || flock -u 8
  cat "$envf"
}

# What a pod restart does to a real gateway: its netns starts over. Remove
# every device but lo/eth0/net1, flush iptables and restore the base routes.
gateway_reset() {
  local c=$1 gw=$2 envf ns
  envf=$(gateway_env "$c" "$gw"); [ -s "$envf" ] || die "no gateway $gw in $c"
  if in_vm_from_host "$c" "$gw"; then in_vm gateway-reset "$c" "$gw"; return; fi
  # shellcheck disable=SC1090
  ns=$(sed -n 's/^GATEWAY_NETNS=//p' "$envf")
  local gwip; gwip=$(sed -n 's/^EXTERNAL_GATEWAY=//p' "$envf")
  for l in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
    case "$l" in lo | eth0 | net1) ;; *) ip -n "$ns" link del "$l" 2>/dev/null || true ;; esac
  done
  for t in filter nat mangle raw; do
    nsx "$ns" iptables -t "$t" -F 2>/dev/null || true
    nsx "$ns" iptables -t "$t" -X 2>/dev/null || true
  done
  ip -n "$ns" route flush table main proto static 2>/dev/null || true
  ip -n "$ns" route flush table main proto boot 2>/dev/null || true
  ip -n "$ns" route replace default via "$gwip" dev net1
  ip -n "$ns" route replace "$SERVICE_CIDR" via "$(sed -n 's/^OVN_GATEWAY=//p' "$envf")" dev eth0
}

# Node failure: stop the gateway node's kwok-controller (its kubelet). The
# lease stops renewing; kube-controller-manager marks the node NotReady after
# its grace period and the pods on it not Ready. gateway-up starts it again.
gateway_stop() {
  if in_vm_from_host "$1" "$2"; then in_vm gateway-stop "$1" "$2"; return; fi
  stop_daemon "$(piddir_of "$1")/kwok-$2.pid"
}

gateway_down() {
  local c=$1 gw=$2 ns envf piddir
  ns=$(gw_netns "$c" "$gw"); envf=$(gateway_env "$c" "$gw"); piddir=$(piddir_of "$c")
  if in_vm_from_host "$c" "$gw"; then
    local nodeip; nodeip=$(sed -n 's/^NODE_IP=//p' "$envf")
    in_vm gateway-down "$c" "$gw"
    vm_hmp hostfwd_remove n0 "tcp:$nodeip:$KUBELET_PORT" >/dev/null || true
    return 0
  fi
  stop_daemon "$piddir/kwok-$gw.pid"
  stop_daemon "$piddir/forward-$gw.pid"
  [ -s "$(kubeconfig_of "$c")" ] && kc "$c" delete node "gwnode-$gw" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  ns_exists "$ns" && ip netns del "$ns"
  rm -f "$envf" "$RUN_DIR/$c/gateways/$gw.kwok.yaml"
}

# The DNS leg of a cluster (on the host): what a VPC client's clusterset.local lookup crosses.
#   vpcdns netns = the vpc-dns pod: eth0 on the VPC (10.<ci>.0.3, the VIP on lo, which the VPC
#     router routes to it as OVN's load balancer would), net1 on the default network
#     (10.244.0.3/16) whose /etc/resolv.conf names the node's resolver.
#   cdns netns = the default network behind net1 (10.244.0.1, OVN's gateway there) with one
#     CoreDNS: the cluster DNS at the kube-dns ClusterIP (Submariner's lighthouse section, as the
#     operator writes it: clusterset.local forwarded to Lighthouse), Lighthouse (10.244.255.53,
#     the zone file the caller wrote) and the node's resolver (10.244.255.1: NXDOMAIN for all).
# The vpc-dns CoreDNS itself runs with vpc-dns-run, from the Corefile the caller extracted.
DNS_LIGHTHOUSE_IP=10.244.255.53
DNS_UPSTREAM_IP=10.244.255.1
vpcdns_netns() { echo "${NETNS_PREFIX}$1-vpcdns"; }
cdns_netns() { echo "${NETNS_PREFIX}$1-cdns"; }

dns_up() {
  local c=$1 kube_dns=$2 vip=$3 ci vns cns vpcns dir
  ci=$(cluster_index "$c"); vns=$(vpcdns_netns "$c"); cns=$(cdns_netns "$c"); vpcns=$(vpc_netns "$c")
  dir="$RUN_DIR/$c/dns"
  [ -s "$dir/clusterset.local.zone" ] || die "write $dir/clusterset.local.zone (Lighthouse's records) first"
  ensure_vpc "$c"
  if ! ns_exists "$cns"; then
    ip netns add "$cns"
    ip -n "$cns" link set lo up
    ip -n "$cns" addr add "$kube_dns/32" dev lo
    ip -n "$cns" addr add "$DNS_LIGHTHOUSE_IP/32" dev lo
    ip -n "$cns" addr add "$DNS_UPSTREAM_IP/32" dev lo
  fi
  if ! ns_exists "$vns"; then
    ip netns add "$vns"
    ip -n "$vns" link set lo up
    ip -n "$vns" addr add "$vip/32" dev lo
    ip -n "$vns" link add eth0 type veth peer name vdns netns "$vpcns"
    ip -n "$vns" link add net1 type veth peer name vdns netns "$cns"
    ip -n "$vpcns" link set vdns master br-vpc up
    ip -n "$cns" addr add 10.244.0.1/16 dev vdns
    ip -n "$cns" link set vdns up
    ip -n "$vns" addr add "10.$ci.0.3/24" dev eth0
    ip -n "$vns" addr add 10.244.0.3/16 dev net1
    ip -n "$vns" link set eth0 up
    ip -n "$vns" link set net1 up
    ip -n "$vns" route add default via "10.$ci.0.1" dev eth0
    ip -n "$vpcns" route replace "$vip/32" via "10.$ci.0.3"
  fi
  # `ip netns exec` mounts /etc/netns/<ns>/* over /etc: the pod's resolv.conf.
  mkdir -p "/etc/netns/$vns"
  echo "nameserver $DNS_UPSTREAM_IP" >"/etc/netns/$vns/resolv.conf"
  cat >"$dir/cluster.Corefile" <<COREFILE
clusterset.local:53 {
    bind $kube_dns
    forward . $DNS_LIGHTHOUSE_IP
}
.:53 {
    bind $kube_dns
    template ANY ANY {
        rcode NXDOMAIN
    }
}
clusterset.local:53 {
    bind $DNS_LIGHTHOUSE_IP
    file $dir/clusterset.local.zone {
        reload 1s
    }
}
.:53 {
    bind $DNS_UPSTREAM_IP
    template ANY ANY {
        rcode NXDOMAIN
    }
}
COREFILE
  local piddir; piddir=$(piddir_of "$c")
  stop_daemon "$piddir/cluster-dns.pid"
  start_daemon "$piddir/cluster-dns.pid" "$RUN_DIR/logs/$c-cluster-dns.log" \
    ip netns exec "$cns" "$COREDNS_BIN/coredns" -conf "$dir/cluster.Corefile"
  dns_wait "$c" "$cns" "$kube_dns" cluster-dns
}

# dns_wait CLUSTER NETNS ADDRESS NAME: until something answers DNS on ADDRESS:53 in NETNS.
dns_wait() {
  local c=$1 ns=$2 addr=$3 name=$4
  local out
  for _ in $(seq 100); do
    # Any answer, NXDOMAIN included, means it serves.
    out=$(nsx "$ns" busybox nslookup -type=soa . "$addr" 2>&1 || true)
    if printf '%s\n' "$out" | grep -qE "NXDOMAIN|SERVFAIL|REFUSED|Name:|origin"; then
      return 0
    fi
    pid_alive "$(piddir_of "$c")/$name.pid" || { tail -5 "$RUN_DIR/logs/$c-$name.log" >&2; die "$name of $c exited"; }
    sleep 0.1
  done
  die "$name of $c does not answer on $addr:53"
}

# vpc-dns-run CLUSTER COREFILE [DST GW]...: (re)start vpc-dns's CoreDNS with COREFILE, its
# routes those given (Kube-OVN's CNI programs a pod's routes from its annotation at start).
vpc_dns_run() {
  local c=$1 corefile=$2 vns piddir vip; shift 2
  vns=$(vpcdns_netns "$c"); piddir=$(piddir_of "$c")
  ns_exists "$vns" || die "no DNS leg in $c: dns-up first"
  # A pod replaced: no lame-duck wait.
  if pid_alive "$piddir/vpc-dns.pid"; then kill -KILL "$(cat "$piddir/vpc-dns.pid")"; fi
  rm -f "$piddir/vpc-dns.pid"
  ip -n "$vns" route flush proto static
  while [ $# -ge 2 ]; do
    ip -n "$vns" route replace "$1" via "$2" proto static
    shift 2
  done
  start_daemon "$piddir/vpc-dns.pid" "$RUN_DIR/logs/$c-vpc-dns.log" \
    ip netns exec "$vns" "$COREDNS_BIN/coredns" -conf "$corefile"
  vip=$(ip -n "$vns" -4 -o addr show dev lo | awk '$4 != "127.0.0.1/8" {sub("/32", "", $4); print $4; exit}')
  dns_wait "$c" "$vns" "$vip" vpc-dns
}

down_all() {
  local f
  if [ "$IN_VM" != 1 ] && [ -s "$RUN_DIR/vm/agent.addr" ]; then
    in_vm down-all || log "could not clean up inside the kernel VM (it goes down with the VM)"
  fi
  for f in "$RUN_DIR"/*/"$(basename "$(piddir_of x)")"/*.pid; do [ -e "$f" ] && stop_daemon "$f"; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NETNS_PREFIX" || true); do
    ip netns del "$ns"
    rm -rf "/etc/netns/$ns"
  done
  [ "$IN_VM" = 1 ] && return 0 # the host removes the shared files
  rm -rf "$RUN_DIR"/*/gateways "$RUN_DIR"/*/vpc.env
}

cmd=${1:-}; shift || true
case "$cmd" in
  vpc) ensure_vpc "$1" ;;
  gateway-up) gateway_up "$1" "$2" "${3:-host}" ;;
  gateway-down) gateway_down "$1" "$2" ;;
  gateway-reset) gateway_reset "$1" "$2" ;;
  gateway-stop) gateway_stop "$1" "$2" ;;
  dns-up) dns_up "$1" "$2" "$3" ;;
  vpc-dns-run) vpc_dns_run "$@" ;;
  down-all) down_all ;;
  *) die "usage: netns.sh vpc CLUSTER | gateway-up CLUSTER GW [vm] | gateway-down CLUSTER GW | gateway-reset CLUSTER GW | gateway-stop CLUSTER GW | dns-up CLUSTER KUBE_DNS_IP VIP | vpc-dns-run CLUSTER COREFILE [DST GW]... | down-all" ;;
esac
