#!/usr/bin/env bash
# Stop every harness cluster and gateway, delete every harness netns (and so
# every veth). Idempotent. Logs stay in $RUN_DIR/logs for post-mortems.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -d "$RUN_DIR" ] || { log "nothing to stop"; exit 0; }
"$E2E_DIR/scripts/netns.sh" down-all
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
log "harness is down"
