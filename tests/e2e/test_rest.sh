#!/usr/bin/env bash
# End-to-end over REST, as a user of the gateway sees it: starts `ccm server`,
# `ccm gateway`, `ccm mock-provider` (with a one-hour callback delay, so that
# only the callbacks the test sends by hand arrive) and `ccm consumers` (so
# calls are dispatched and get their external_call_id), runs test_rest.py,
# then stops everything with SIGTERM (exit 0 required; under the sanitizers,
# no leak or memory error report either).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export MAX_CONCURRENT_CALLS=40
export MOCK_DELAY_MIN_MS=3600000 MOCK_DELAY_MAX_MS=3600000 MOCK_FAIL_RATE=0
export MOCK_RESPONSE_DELAY_MS=0
export SCHEDULER_ENABLED=false
status=0
start_ccm server
start_ccm gateway
start_ccm mock-provider
wait_grpc_ready || status=1
wait_port "$HTTP_PORT" || status=1
wait_port "$MOCK_PORT" || status=1
start_ccm consumers
/usr/bin/python3 tests/e2e/test_rest.py || status=1
for p in consumers gateway mock-provider server; do stop_ccm "$p" || status=1; done
exit $status
