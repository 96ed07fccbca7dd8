#!/usr/bin/env bash
# Print the tail of every harness log (used by `make e2e-test` on failure, so
# that CI output shows why a cluster or gateway misbehaved).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LINES=${LINES_PER_LOG:-25}
for f in "$RUN_DIR"/logs/*.log "$KWOK_WORKDIR"/clusters/*/logs/*.log; do
  [ -s "$f" ] || continue
  echo "===== ${f#"$REPO_DIR"/} (last $LINES lines)"
  tail -n "$LINES" "$f"
done
