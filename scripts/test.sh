#!/usr/bin/env bash
# `make test`: starts the private test stack, then runs the unit, integration
# and end-to-end suites once on the normal build and once under
# AddressSanitizer + UndefinedBehaviorSanitizer. Stops what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/test-env.sh
. scripts/test-env.sh

BUILDS=(${CCM_TEST_BUILDS:-build build-asan})
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan.supp:print_suppressions=0}

passed=0
failed=0
failures=()

say() { printf '[test] %s\n' "$*"; }

stop_stack() { scripts/stack.sh stop || true; }
trap stop_stack EXIT

# record NAME CMD...: runs one suite step, counting it.
record() {
  local name=$1 start=$SECONDS
  shift
  say "== $name"
  if "$@"; then
    passed=$((passed + 1))
    say "ok: $name ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    say "FAILED: $name ($((SECONDS - start)) s)"
  fi
}

psql_admin() {
  psql -X -q -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U postgres -d postgres "$@"
}

fresh_database() {
  psql_admin -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" \
    -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
  local redis_port=${REDIS_URL##*:}
  redis-cli -p "${redis_port%%/*}" flushall >/dev/null
}

run_suite() {
  local build=$1
  export CCM_BIN=$ROOT/$build/ccm
  export CCM_BUILD_DIR=$ROOT/$build
  fresh_database
  record "$build: unit tests" ctest --test-dir "$build" -L unit --output-on-failure
  record "$build: ccm migrate" "$CCM_BIN" migrate
  record "$build: ccm migrate (again, idempotent)" "$CCM_BIN" migrate
  record "$build: integration tests" ctest --test-dir "$build" -L integration --output-on-failure
  record "$build: ccm check" "$CCM_BIN" check
  for t in tests/e2e/test_*.sh; do
    [[ -e $t ]] || continue
    # CCM_E2E_ONLY="grpc pipeline" runs just those scripts (debugging aid).
    if [[ -n ${CCM_E2E_ONLY:-} && " $CCM_E2E_ONLY " != *" $(basename "$t" .sh | sed 's/^test_//') "* ]]; then
      continue
    fi
    # A script marked "ccm-test: once" (long fault-injection runs) runs on
    # the first build only: it tests behaviour under faults, and the
    # sanitizer build already runs every other suite.
    if [[ $build != "${BUILDS[0]}" ]] && grep -q '^# ccm-test: once' "$t"; then
      continue
    fi
    fresh_database
    "$CCM_BIN" migrate >/dev/null
    record "$build: $(basename "$t")" bash "$t"
  done
}

say "starting the private test stack (var/test)"
scripts/stack.sh start
mkdir -p "$LOG_DIR"
for b in "${BUILDS[@]}"; do
  run_suite "$b"
done

# Hostile input: every libFuzzer target over its committed corpus (crash
# inputs included), then a bounded time of fresh inputs each.
record "fuzz (libFuzzer, ${CCM_FUZZ_SECONDS:-20} s per target)" scripts/fuzz.sh "${CCM_FUZZ_SECONDS:-20}"

say "--------------------------------------------------------------"
for f in "${failures[@]}"; do say "failed: $f"; done
say "total time: $((SECONDS / 60)) min $((SECONDS % 60)) s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
