#!/usr/bin/env bash
# End-to-end: starts `ccm server` (from $CCM_BIN) on the test stack, runs the
# Python gRPC suite against it, then checks that SIGTERM stops it cleanly
# (exit 0; under the sanitizers, also no leak or memory error report).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export MAX_CONCURRENT_CALLS=50
start_ccm server
wait_grpc_ready
status=0
/usr/bin/python3 tests/e2e/test_grpc.py || status=1
stop_ccm server || status=1
exit $status
