#!/usr/bin/env bash
# ccm-test: once
# Fault tests (tests/e2e/faults.py): `ccm start-all` with the mock provider
# under a steady stream of REST calls while Redis, PostgreSQL and the Kafka
# broker are stopped and restarted, processes are killed with SIGKILL and the
# provider is slow or failing; an audit after each scenario. The private
# servers are restored (scripts/stack.sh start) however the test ends.
# About 3.5 min on the normal build, 5.5 min under ASan: run once (test.sh).
# ccm-test: once
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export MAX_CONCURRENT_CALLS=500 MOCK_DELAY_MIN_MS=200 MOCK_DELAY_MAX_MS=1500
export SCHEDULER_INTERVAL_SECONDS=1 RETRY_SCHEDULE_CONFIG_PATH=tests/e2e/retry_fast.yaml
export CCM_BIN E2E_LOG_DIR
mkdir -p "$E2E_LOG_DIR"

restore_stack() {
  local started
  started=$(mktemp)
  if ! scripts/stack.sh status >/dev/null 2>&1; then
    echo "[faults] restoring the private servers" >&2
    CCM_STARTED_FILE=$started scripts/stack.sh start >&2 || true
  fi
  rm -f "$started"
}
trap restore_stack EXIT

status=0
/usr/bin/python3 tests/e2e/faults.py "$@" || status=1
exit $status
