#!/usr/bin/env bash
# End-to-end gRPC tests from C (tests/e2e/e2e_grpc_client.c, built next to
# $CCM_BIN): `ccm server` only, no consumers, so every accepted call stays
# INITIATED and holds its concurrency slot.
#  1. On the fresh database, with MAX_CONCURRENT_CALLS=50: 200 parallel
#     InitiateCall give exactly 50 OK and 150 concurrency_limit.
#  2. The server is stopped (SIGTERM: exit 0, no sanitizer report) and
#     started again with free slots (MAX_CONCURRENT_CALLS=100, 50 still held):
#     every RPC's success and documented errors, and 20 parallel
#     InitiateCall to one number give exactly one OK.
# After each phase the program checks that Redis active_calls_count equals
# the database's count of INITIATED/PROCESSING/RETRYING calls.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. tests/e2e/lib.sh

CLIENT=${CCM_BUILD_DIR:-$(dirname "$CCM_BIN")}/e2e_grpc_client
if [[ ! -x $CLIENT ]]; then
  echo "[e2e] $CLIENT not built" >&2
  exit 1
fi
export SCHEDULER_ENABLED=false
status=0

export MAX_CONCURRENT_CALLS=50
start_ccm server
wait_grpc_ready || status=1
"$CLIENT" limit || status=1
stop_ccm server || status=1

export MAX_CONCURRENT_CALLS=100
start_ccm server
wait_grpc_ready || status=1
"$CLIENT" api || status=1
stop_ccm server || status=1
exit $status
