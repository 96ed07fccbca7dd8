#!/usr/bin/env bash
# Show what the harness is running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rc=0
for kcfg in "$RUN_DIR"/*.kubeconfig; do
  [ -e "$kcfg" ] || { echo "no cluster is up (run dir $RUN_DIR)"; exit 1; }
  c=$(basename "$kcfg" .kubeconfig)
  if v=$(kc "$c" version -o json --request-timeout=5s 2>/dev/null | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -1) && [ -n "$v" ]; then
    echo "cluster $c: up, server $v, $(kc "$c" config view -o jsonpath='{.clusters[0].cluster.server}'), kubeconfig $kcfg"
    kc "$c" get nodes --no-headers 2>/dev/null | sed 's/^/  node /'
  else
    echo "cluster $c: DOWN (kubeconfig $kcfg)"; rc=1
  fi
  for e in "$RUN_DIR/$c"/gateways/*.env; do
    [ -e "$e" ] || continue
    (source "$e"; echo "  gateway $GATEWAY: netns $GATEWAY_NETNS node $GATEWAY_NODE lan $LAN_IP ext $EXTERNAL_IP")
  done
done
[ -e "$RUN_DIR/vm/qemu.pid" ] && { bash "$E2E_DIR/scripts/vm.sh" status || rc=1; }
echo "netns: $(ip netns list | awk '{print $1}' | grep "^$NETNS_PREFIX" | tr '\n' ' ')"
ps -eo rss=,args= | awk -v a="$KWOK_WORKDIR/clusters/" -v b="$MULTIVPC_CACHE/" -v f="$FORWARD_BIN" \
  'index($2, a) == 1 || index($2, b) == 1 || $2 == f {rss += $1; n++} END {printf "harness processes: %d, RSS %.0f MiB\n", n, rss / 1024}'
exit $rc
