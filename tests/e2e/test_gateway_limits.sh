#!/usr/bin/env bash
# ccm-test: once
# Hostile clients against the REST gateway (tests/e2e/test_gateway_limits.py):
# slow-loris, 10,000 idle connections, oversized headers and bodies, with a
# short idle timeout so the idle connections are closed within the test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export GATEWAY_IDLE_TIMEOUT_SECONDS=4
start_ccm server
start_ccm gateway
wait_grpc_ready
wait_port "$HTTP_PORT"
export GATEWAY_PID=${CCM_PIDS[gateway]}
status=0
/usr/bin/python3 tests/e2e/test_gateway_limits.py "$@" || status=1
for p in gateway server; do stop_ccm "$p" || status=1; done
exit $status
