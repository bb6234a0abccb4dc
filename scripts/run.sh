#!/usr/bin/env bash
# `make run`: private PostgreSQL, Redis and Kafka under var/run (unless
# external ones are configured), migrations, then `ccm start-all` in the
# foreground. Ctrl+C stops every ccm process and the servers this run
# started; servers that were already running are left alone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CCM_VAR_DIR=${CCM_VAR_DIR:-var/run}
BIN=${CCM_BIN:-$ROOT/build/ccm}

stop_stack() { scripts/stack.sh stop || true; }
trap stop_stack EXIT
trap 'exit 130' INT TERM

scripts/stack.sh start
"$BIN" migrate
"$BIN" check || echo "[run] warning: 'ccm check' reported a problem (see above)"
# start-all handles Ctrl+C itself: stops its children, then returns here.
"$BIN" start-all "$@" || true
