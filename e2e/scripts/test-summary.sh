#!/usr/bin/env bash
# Print why the e2e tests failed, from the cargo output `make e2e-run` kept.
# `make e2e-test` runs this last, after the harness logs, so that the end of a
# CI log names the failing tests and their panic messages.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out="$RUN_DIR/cargo-test.out"
[ -s "$out" ] || { echo "no e2e test output in $out"; exit 0; }
LINES=${LINES_PER_FAILURE:-30}
echo "===== e2e test failures (from ${out#"$REPO_DIR"/}: each one's panic message, after the last $LINES lines it printed before it)"
# A failure's captured output runs from its "---- <name> stdout ----" line to
# the next such line or to the "failures:" list. Its panic message starts at
# "thread '…' panicked at" and ends where a backtrace starts (RUST_BACKTRACE=1
# is set on these machines), so the backtrace is left out: it would push the
# message off the tail of a CI log.
awk -v max="$LINES" '
  function flush() {
    if (name == "") return
    print name
    s = before > max ? before - max : 0
    for (i = s; i < before; i++) print buf[i]
    for (i = before; i < n; i++) print buf[i]
    name = ""; n = 0; before = 0; state = 0
  }
  /^---- .* stdout ----$/ { flush(); name = $0; next }
  /^failures:$/ || /^test result: / { flush(); next }
  name == "" { next }
  state == 0 && /^thread .* panicked at / { before = n; state = 1; buf[n++] = $0; next }
  state == 1 && (/^stack backtrace:$/ || /^note: run with `RUST_BACKTRACE/) { state = 2; next }
  state == 2 { next }
  { buf[n++] = $0; if (state == 0) before = n }
  END { flush() }
' "$out"
grep -E '^test .* FAILED$|^test result: FAILED|^error: .*test' "$out" || true
