#!/usr/bin/env bash
# Print why the e2e tests failed, from the cargo output `make e2e-run` kept.
# `make e2e-test` runs this last, after the harness logs, so that the end of a
# CI log names the failing tests and their panic messages.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out="$RUN_DIR/cargo-test.out"
[ -s "$out" ] || { echo "no e2e test output in $out"; exit 0; }
LINES=${LINES_PER_FAILURE:-30}
echo "===== e2e test failures (from ${out#"$REPO_DIR"/}, last $LINES lines of each)"
# A failure's captured output runs from its "---- <name> stdout ----" line to
# the next such line or to the "failures:" list; its panic message is at its end.
awk -v max="$LINES" '
  function flush() { if (name != "") { print name; s = n > max ? n - max : 0; for (i = s; i < n; i++) print buf[i] } name = ""; n = 0 }
  /^---- .* stdout ----$/ { flush(); name = $0; next }
  /^failures:$/ || /^test result: / { flush(); next }
  name != "" { buf[n++] = $0 }
  END { flush() }
' "$out"
grep -E '^test .* FAILED$|^test result: FAILED|^error: .*test' "$out" || true
