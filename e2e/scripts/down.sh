#!/usr/bin/env bash
# Stop every harness cluster and gateway, delete every harness netns (and so
# every veth). Idempotent. Logs stay in $RUN_DIR/logs for post-mortems.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -d "$RUN_DIR" ] || { log "nothing to stop"; exit 0; }
"$E2E_DIR/scripts/netns.sh" down-all
"$E2E_DIR/scripts/vm.sh" down
if [ -d "$KWOK_WORKDIR/clusters" ]; then
  for d in "$KWOK_WORKDIR"/clusters/*/; do
    [ -d "$d" ] || continue
    c=$(basename "$d")
    log "deleting cluster $c"
    if [ -x "$KWOK_BIN/kwokctl" ]; then
      kwokctl delete cluster --name "$c" >>"$RUN_DIR/logs/$c-delete.log" 2>&1 || log "kwokctl delete $c failed (see logs)"
    fi
    # Belt and braces: kill any component whose pid file kwokctl left behind.
    for p in "$d"/pids/*.pid; do [ -e "$p" ] && stop_daemon "$p"; done
    rm -rf "$d"
  done
fi
for c in $(cat "$RUN_DIR/clusters" 2>/dev/null) ; do rm -rf "${RUN_DIR:?}/$c" "$RUN_DIR/$c.kubeconfig"; done
rm -f "$RUN_DIR"/*.kubeconfig "$RUN_DIR/clusters"
find "$RUN_DIR" -mindepth 1 -maxdepth 1 -type d ! -name logs -exec rm -rf {} +
# Strays: daemons of this harness whose pid files were lost (e.g. two people
# sharing one run dir ran e2e-down and e2e-up at once). Every daemon of the
# harness carries this run dir's path in its command line.
for pid in $(pgrep -f -- "$RUN_DIR/" || true); do
  [ "$pid" = $$ ] || [ "$pid" = "$PPID" ] && continue
  log "stopping stray harness process $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-120)"
  echo "$pid" >"$RUN_DIR/.stray.pid"
  stop_daemon "$RUN_DIR/.stray.pid"
done
# Verify: nothing of this harness may survive.
left_ns=$(ip netns list | awk '{print $1}' | grep "^$NETNS_PREFIX" || true)
left_ps=$(pgrep -f -- "$RUN_DIR/" || true)
if [ -n "$left_ns" ] || [ -n "$left_ps" ]; then
  log "WARNING: left behind: netns [$(echo $left_ns)] processes [$(echo $left_ps)]"
  exit 1
fi
log "harness is down"
