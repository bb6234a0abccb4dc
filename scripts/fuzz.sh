#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang into build-fuzz and
# runs each one for a bounded time over its committed corpus
# (tests/fuzz/corpus/<target>/), which also re-runs every regression input
# kept there (crash-*). The corpus is copied to a scratch directory first, so
# inputs found during the run do not grow the committed one.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Default: 20 seconds, every target. Exits non-zero when a target crashes,
# leaks, times out or breaks an invariant, printing the path of the input
# that did it (kept under build-fuzz/artifacts/); the last line counts the
# targets: "N passed, N failed". Needs clang and libclang-rt-14-dev.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECONDS_PER_TARGET=${1:-20}
shift || true
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi
BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# Per-target input size bound; the YAML loader's real limit is 1 MiB.
declare -A MAX_LEN=([fuzz_json_map]=4096 [fuzz_phone]=128 [fuzz_rules]=4096 [fuzz_events]=4096)

say() { printf '[fuzz] %s\n' "$*"; }

command -v clang >/dev/null || {
  echo "scripts/fuzz.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
}

GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
if [[ ! -f $BUILD/CMakeCache.txt ]]; then
  say "configuring $BUILD (clang, libFuzzer + ASan + UBSan)"
  cmake -S tests/fuzz -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_C_COMPILER=clang >/dev/null
fi
say "building"
cmake --build "$BUILD" -j"$JOBS" >"$BUILD/build.log" 2>&1 || {
  tail -n 40 "$BUILD/build.log" >&2
  echo "scripts/fuzz.sh: build failed (full log: $BUILD/build.log)" >&2
  exit 2
}

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan.supp:print_suppressions=0}

ARTIFACTS=$ROOT/$BUILD/artifacts
SCRATCH=$ROOT/$BUILD/scratch
mkdir -p "$ARTIFACTS"
passed=0
failed=0
failures=()
for t in "${targets[@]}"; do
  bin=$BUILD/$t
  corpus=tests/fuzz/corpus/$t
  if [[ ! -x $bin ]]; then
    say "$t: no such target"
    failed=$((failed + 1))
    failures+=("$t (not built)")
    continue
  fi
  rm -rf "${SCRATCH:?}/$t"
  mkdir -p "$SCRATCH/$t" "$ARTIFACTS/$t"
  [[ -d $corpus ]] && cp -R "$corpus/." "$SCRATCH/$t/"
  log=$ARTIFACTS/$t.log
  say "$t: ${SECONDS_PER_TARGET}s over $(find "$SCRATCH/$t" -type f | wc -l) corpus inputs"
  # -max_total_time bounds the mutation phase; the corpus (every committed
  # input, regressions included) is always run first, in full.
  if "$bin" "$SCRATCH/$t" -max_total_time="$SECONDS_PER_TARGET" \
    -max_len="${MAX_LEN[$t]:-4096}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$t/" >"$log" 2>&1; then
    stats=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
    say "$t: ok (${stats:-?} runs, ${cov:-cov: ?})"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    crash=$(grep -oE "Test unit written to .*" "$log" | tail -n 1 | sed 's/^Test unit written to //')
    say "$t: FAILED (log: $log)"
    grep -E 'ERROR: |SUMMARY: |runtime error|invariant failed|fuzz_[a-z_]+: ' "$log" | head -n 5 |
      sed 's/^/[fuzz]   /' || true
    if [[ -n $crash ]]; then
      say "$t: crashing input: $crash"
      failures+=("$t: $crash")
    else
      failures+=("$t: see $log")
    fi
  fi
done

say "--------------------------------------------------------------"
for f in "${failures[@]}"; do say "failed: $f"; done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
