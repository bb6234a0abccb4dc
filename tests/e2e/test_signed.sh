#!/usr/bin/env bash
# Signed callbacks: every process runs with CALLBACK_SIGNING_SECRET; the mock
# signs its callbacks (zero delay) and the test sends forged ones.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

export CALLBACK_SIGNING_SECRET=e2e-signing-secret MOCK_DELAY_MIN_MS=0 MOCK_DELAY_MAX_MS=0
for p in server gateway consumers mock-provider; do start_ccm "$p"; done
wait_grpc_ready
wait_port "$HTTP_PORT"
status=0
/usr/bin/python3 tests/e2e/test_signed.py || status=1
for p in consumers gateway mock-provider server; do stop_ccm "$p" || status=1; done
if grep -rq "e2e-signing-secret" "$E2E_LOG_DIR"/*.log; then
  echo "[e2e] the signing secret appears in a log file" >&2
  status=1
fi
exit $status
