#!/usr/bin/env bash
# End-to-end pipeline over REST: server, gateway and mock provider (zero
# delay, fixed seed) run here; the Python test runs the consumers itself so
# it can kill one with SIGKILL in the middle of the run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export MAX_CONCURRENT_CALLS=200 MOCK_DELAY_MIN_MS=0 MOCK_DELAY_MAX_MS=0 MOCK_SEED=7
export SCHEDULER_ENABLED=false
start_ccm server
start_ccm gateway
start_ccm mock-provider
wait_grpc_ready
wait_port "$HTTP_PORT"
wait_port "$MOCK_PORT"
status=0
/usr/bin/python3 tests/e2e/test_pipeline.py || status=1
for p in gateway mock-provider server; do stop_ccm "$p" || status=1; done
exit $status
