#!/usr/bin/env bash
# The seed README's retry scenarios with a seconds-scale scheduler: the mock
# provider never calls back on its own (1 h delay), the test sends the
# DISCONNECTED callbacks by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export RETRY_SCHEDULE_CONFIG_PATH=tests/e2e/retry_fast.yaml
export SCHEDULER_INTERVAL_SECONDS=1 MOCK_DELAY_MIN_MS=3600000 MOCK_DELAY_MAX_MS=3600000
for p in server gateway consumers scheduler mock-provider; do start_ccm "$p"; done
wait_grpc_ready
wait_port "$HTTP_PORT"
status=0
/usr/bin/python3 tests/e2e/test_retry.py || status=1
for p in scheduler consumers gateway mock-provider server; do stop_ccm "$p" || status=1; done
exit $status
