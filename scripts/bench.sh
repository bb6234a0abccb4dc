#!/usr/bin/env bash
# `make bench`: starts a private stack of its own (PostgreSQL with normal
# durability, Redis, Kafka, under var/bench on ports 57xxx), runs every
# benchmark against ccm processes started from $CCM_BIN, prints one table
# and writes bench/results/<name>.json. Stops what it started.
#
#   grpc_initiate   InitiateCall over gRPC (bench_grpc, N calls in flight);
#                   ceilings: pgbench with the same insert, empty RPC
#                   (grpc.health.v1.Health/Check)
#   http_initiate   POST /api/v1/initiate-call/ through the gateway (wrk);
#                   ceilings: a static answer of the gateway's HTTP layer
#                   (OPTIONS preflight, 204), GET /health/ (REST -> gRPC, no DB)
#   e2e             calls from initiate to a final state with the mock at
#                   zero delay (relay, Kafka, consumers, callbacks)
#   add_phones      AddPhoneNumbers: 1,000,000 numbers in batches of 10,000;
#                   ceiling: pgbench with the same bulk insert
#   scheduler       due retries claimed per second (100,000 due calls)
#
# Environment:
#   BENCH_QUICK=1      a short smoke run (smaller counts, fewer levels)
#   BENCH_ONLY="a b"   run only these benchmarks (names above)
#   CCM_BIN            the ccm executable (default build/ccm)
#   CCM_BUILD_DIR      where bench_grpc was built (default: CCM_BIN's folder)
#   BENCH_RESULTS_DIR  where the JSON files go (default bench/results)
#   BENCH_KEEP_STACK=1 development aid: reuse the servers of var/bench/stack
#                      and leave them running (stop them with
#                      CCM_VAR_DIR=var/bench/stack scripts/stack.sh stop --all)
#   BENCH_KEEP_LOGS=1  keep var/bench/logs after a successful run too
# Leaves var/bench/raw (raw measurements) and, after a failure or with
# BENCH_KEEP_LOGS=1, var/bench/logs (the processes' logs); the servers and
# their data are removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# --------------------------------------------------------- environment ---
export CCM_ENV_FILE=/dev/null
export CCM_VAR_DIR=var/bench/stack
unset CCM_PG_FAST
export CCM_REDIS_EPHEMERAL=1
export DB_HOST=127.0.0.1
export DB_PORT=27432
export DB_NAME=ccm_bench
export DB_USER=campaign_user
export DB_PASSWORD=
export REDIS_URL=redis://127.0.0.1:27379/0
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:27092
export KAFKA_CONTROLLER_PORT=27093
export GRPC_PORT=27051
export HTTP_PORT=27000
export MOCK_PORT=27001
export LOG_DIR=var/bench/logs
export LOG_LEVEL=info
export AUTH_ENABLED=true
export VALID_TOKENS=dev-token-12345
export RETRY_SCHEDULE_CONFIG_PATH=config/retry_config.yaml
export SCHEDULER_ENABLED=false
unset DATABASE_URL GRPC_TARGET EXTERNAL_SERVICE_URL CALLBACK_URL CALLBACK_SIGNING_SECRET
unset MAX_CONCURRENT_CALLS DUPLICATE_CALL_WINDOW_MINUTES MAX_RETRY_ATTEMPTS

CCM_BIN=${CCM_BIN:-$ROOT/build/ccm}
CCM_BUILD_DIR=${CCM_BUILD_DIR:-$(dirname "$CCM_BIN")}
BENCH_GRPC=$CCM_BUILD_DIR/bench_grpc
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
BENCH_DIR=$ROOT/var/bench
RAW=$BENCH_DIR/raw
TOKEN=dev-token-12345
PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || PYTHON=python3
QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 1 ]] || QUICK=0
ALL_BENCHES="grpc_initiate http_initiate e2e add_phones scheduler"
ONLY=${BENCH_ONLY:-$ALL_BENCHES}

if ((QUICK)); then
  LEVELS=(1 16)
  RUN_S=3 WARM_S=1 CEIL_S=2
  E2E_CALLS=1000
  PHONE_BATCHES=10 PHONE_LEVELS=(1)
  SCHED_CALLS=10000 SCHED_RUNS=("1 1000")
else
  LEVELS=(1 4 16 64)
  RUN_S=6 WARM_S=2 CEIL_S=3
  E2E_CALLS=10000
  PHONE_BATCHES=100 PHONE_LEVELS=(1 4)
  SCHED_CALLS=100000 SCHED_RUNS=("1 100" "1 1000" "2 1000")
fi
PHONE_BATCH=10000
E2E_CONCURRENCY=16
E2E_LIMIT=500
E2E_TIMEOUT_S=600

say() { printf '[bench] %s\n' "$*"; }
die() {
  printf '[bench] error: %s\n' "$*" >&2
  exit 1
}

# ------------------------------------------------------------- checks ---
for tool in psql pgbench redis-cli wrk "$PYTHON"; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian packages: postgresql-15, redis-tools, wrk, python3)"
done
[[ -x $CCM_BIN ]] || die "$CCM_BIN not built (make build)"
[[ -x $BENCH_GRPC ]] || die "$BENCH_GRPC not built (make build)"
# Run copies: a build of the same tree during the run (another `make test`)
# must not replace the binaries under the benchmark.
BIN_DIR=$BENCH_DIR/bin
rm -rf "$BIN_DIR"
mkdir -p "$BIN_DIR"
cp "$CCM_BIN" "$BIN_DIR/ccm"
cp "$BENCH_GRPC" "$BIN_DIR/bench_grpc"
CCM_BIN_SOURCE=$CCM_BIN
CCM_BIN=$BIN_DIR/ccm
BENCH_GRPC=$BIN_DIR/bench_grpc
"$CCM_BIN" help >/dev/null 2>&1 || die "$CCM_BIN_SOURCE does not run (being rebuilt? try again)"
for b in $ONLY; do
  [[ " $ALL_BENCHES " == *" $b "* ]] || die "unknown benchmark '$b' in BENCH_ONLY ($ALL_BENCHES)"
done

# ----------------------------------------------------------- processes ---
declare -A PIDS=()
STACK_UP=0

# start_ccm NAME CMD [ARGS...]: `ccm CMD ARGS` in the background; the
# caller's extra environment goes first as VAR=value words of env.
start_ccm() {
  local name=$1
  shift
  mkdir -p "$LOG_DIR"
  env "$@" >>"$LOG_DIR/$name.out" 2>&1 &
  PIDS[$name]=$!
}

stop_ccm() {
  local name=$1 pid=${PIDS[$1]:-} i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "ccm $name (pid $pid) did not stop in 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}

stop_all_ccm() {
  local name
  for name in "${!PIDS[@]}"; do stop_ccm "$name"; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all_ccm
  if ((STACK_UP)) && [[ ${BENCH_KEEP_STACK:-0} != 1 ]]; then
    scripts/stack.sh stop >/dev/null || true
    if ((rc == 0)); then scripts/stack.sh clean >/dev/null || true; fi
  fi
  if ((rc == 0)) && [[ ${BENCH_KEEP_LOGS:-0} != 1 ]]; then rm -rf "$BENCH_DIR/logs"; fi
  rm -rf "$BENCH_DIR/bin"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() {
  local i
  for ((i = 0; i < 300; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on port $1 (logs: $LOG_DIR)"
}

# Peak resident memory (VmHWM) of the ccm processes running now, in MB, as
# a JSON object written to FILE (merged with what FILE already has).
record_rss() {
  local file=$1 name pid kb
  local -a pairs=()
  for name in "${!PIDS[@]}"; do
    pid=${PIDS[$name]}
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n $kb ]] && pairs+=("$name=$kb")
  done
  "$PYTHON" - "$file" "${pairs[@]}" <<'EOF'
import json, os, sys
path = sys.argv[1]
data = json.load(open(path)) if os.path.exists(path) else {}
for pair in sys.argv[2:]:
    name, kb = pair.split("=")
    mb = round(int(kb) / 1024.0, 1)
    data[name] = max(mb, data.get(name, 0))
json.dump(data, open(path, "w"))
EOF
}

# Polls VmHWM of one pid until it exits (scheduler --once runs).
watch_rss() {
  local pid=$1 out=$2 kb max=0
  while kill -0 "$pid" 2>/dev/null; do
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n $kb ]] && ((kb > max)) && max=$kb
    sleep 0.1
  done
  echo "$max" >"$out"
}

# -------------------------------------------------------------- database ---
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U postgres -d postgres "$@"; }
psql_app() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" "$@"; }

# fresh_db [CAMPAIGNS]: an empty migrated database with campaigns 1..N.
fresh_db() {
  local campaigns=${1:-1}
  psql_admin -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" \
    -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
  redis-cli -p 27379 flushall >/dev/null
  "$CCM_BIN" migrate >"$LOG_DIR/migrate.out" 2>&1 || die "ccm migrate failed (see $LOG_DIR/migrate.out)"
  psql_app -c "INSERT INTO calls_campaign (name, description)
               SELECT 'Bench campaign ' || g, 'make bench' FROM generate_series(1, $campaigns) g" >/dev/null
}

now_s() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# mark BENCH KEY: appends "KEY <time> <load 1 5 15>" to the bench's notes.
mark() { printf '%s %s %s\n' "$2" "$(now_s)" "$(loadavg)" >>"$RAW/$1/marks.txt"; }

# inputs BENCH KEY=VALUE...: the benchmark's inputs (values are JSON).
inputs() {
  local b=$1
  shift
  printf '%s\n' "$@" >>"$RAW/$b/inputs.txt"
}

# number_base KIND LEVEL_INDEX: a 13-digit first number, distinct per run.
number_base() { echo $(((10 * $1 + $2) * 100000000000)); }

# pgbench_run OUT_PREFIX SCRIPT CLIENTS SECONDS|-tN [-D ...]: runs pgbench
# (prepared statements: the database's best) with a per-transaction log
# (latency percentiles) and its summary in OUT_PREFIX.out.
pgbench_run() {
  local out=$1 script=$2 clients=$3 length=$4
  shift 4
  local jobs=$((clients < 2 ? clients : 2)) dur_opt
  if [[ $length == -t* ]]; then dur_opt=$length; else dur_opt="-T$length"; fi
  rm -f "$out".log*
  (cd "$(dirname "$out")" && pgbench -n -M prepared -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" \
    -c "$clients" -j "$jobs" "$dur_opt" -f "$ROOT/$script" -l --log-prefix="$(basename "$out").log" \
    "$@" "$DB_NAME") >"$out.out" 2>&1 || {
    tail -n 20 "$out.out" >&2
    die "pgbench failed ($script)"
  }
}

# ------------------------------------------------------------ benchmarks ---

bench_grpc_initiate() {
  local b=grpc_initiate dir=$RAW/grpc_initiate i c
  mkdir -p "$dir"
  say "== $b: InitiateCall over gRPC at concurrency ${LEVELS[*]} (${RUN_S}s each)"
  fresh_db 1
  inputs $b '"levels": ['"$(IFS=,; echo "${LEVELS[*]}")"']' "\"seconds\": $RUN_S" \
    "\"warmup_seconds\": $WARM_S" "\"ceiling_seconds\": $CEIL_S" '"max_concurrent_calls": 1000000' \
    '"server_workers": 16' '"numbers": "distinct per request"' '"pgbench_mode": "prepared"'
  mark $b start
  start_ccm server MAX_CONCURRENT_CALLS=1000000 "$CCM_BIN" server
  wait_port "$GRPC_PORT"
  for i in "${!LEVELS[@]}"; do
    c=${LEVELS[$i]}
    "$BENCH_GRPC" initiate -c "$c" -d "$RUN_S" -w "$WARM_S" --campaign 1 \
      --base "$(number_base 1 "$i")" >"$dir/c$c.run.json"
    pgbench_run "$dir/c$c.pgbench" bench/initiate_insert.sql "$c" "$RUN_S" \
      -D base="$(number_base 2 "$i")" -D seq=0
    pgbench_run "$dir/c$c.pgbench_all" bench/initiate_statements.sql "$c" "$CEIL_S" \
      -D base="$(number_base 3 "$i")" -D seq=0
    "$BENCH_GRPC" health -c "$c" -d "$CEIL_S" -w 1 >"$dir/c$c.health.json"
    say "   c=$c: $(summary_line "$dir/c$c.run.json") | pgbench $(pgbench_tps "$dir/c$c.pgbench.out")/s | empty RPC $(summary_line "$dir/c$c.health.json")"
  done
  record_rss "$dir/rss.json"
  mark $b end
  stop_ccm server
}

bench_http_initiate() {
  local b=http_initiate dir=$RAW/http_initiate i c t url=http://127.0.0.1:$HTTP_PORT
  mkdir -p "$dir"
  say "== $b: POST /api/v1/initiate-call/ through the gateway at concurrency ${LEVELS[*]} (${RUN_S}s each)"
  fresh_db 1
  inputs $b '"levels": ['"$(IFS=,; echo "${LEVELS[*]}")"']' "\"seconds\": $RUN_S" \
    "\"ceiling_seconds\": $CEIL_S" '"max_concurrent_calls": 1000000' '"client": "wrk, bench/initiate_call.lua"' \
    '"static_ceiling": "OPTIONS /api/v1/initiate-call/ (CORS preflight, 204, no RPC)"' \
    '"health_ceiling": "GET /health/ (REST -> gRPC Health/Check, no database)"'
  mark $b start
  start_ccm server MAX_CONCURRENT_CALLS=1000000 "$CCM_BIN" server
  start_ccm gateway "$CCM_BIN" gateway
  wait_port "$GRPC_PORT"
  wait_port "$HTTP_PORT"
  # One request first: the gateway's channel connects on first use. Then a
  # warm-up as bench_grpc does (-w): the first statements of each of the
  # server's 16 fresh database sessions load catalogs and prepare, tens of
  # milliseconds each, which would otherwise land in the first level's p90.
  curl -s -o /dev/null "$url/health/" || true
  BENCH_BASE=$(number_base 4 9) BENCH_CAMPAIGN=1 BENCH_TOKEN=$TOKEN \
    wrk -t2 -c16 -d"${WARM_S}s" --timeout 30s -s bench/initiate_call.lua "$url" \
    >"$dir/warmup.wrk.out" 2>&1 || die "wrk failed: $(tail -n 5 "$dir/warmup.wrk.out")"
  for i in "${!LEVELS[@]}"; do
    c=${LEVELS[$i]}
    t=$((c < 2 ? c : 2))
    BENCH_BASE=$(number_base 4 "$i") BENCH_CAMPAIGN=1 BENCH_TOKEN=$TOKEN \
      wrk -t"$t" -c"$c" -d"${RUN_S}s" --timeout 30s -s bench/initiate_call.lua "$url" \
      >"$dir/c$c.wrk.out" 2>&1 || die "wrk failed: $(tail -n 5 "$dir/c$c.wrk.out")"
    grep '^{' "$dir/c$c.wrk.out" | tail -n 1 >"$dir/c$c.run.json"
    BENCH_METHOD=OPTIONS BENCH_PATH=/api/v1/initiate-call/ \
      wrk -t"$t" -c"$c" -d"${CEIL_S}s" -s bench/initiate_call.lua "$url" >"$dir/c$c.static.out" 2>&1 ||
      die "wrk failed: $(tail -n 5 "$dir/c$c.static.out")"
    grep '^{' "$dir/c$c.static.out" | tail -n 1 >"$dir/c$c.static.json"
    BENCH_METHOD=GET BENCH_PATH=/health/ \
      wrk -t"$t" -c"$c" -d"${CEIL_S}s" -s bench/initiate_call.lua "$url" >"$dir/c$c.health.out" 2>&1 ||
      die "wrk failed: $(tail -n 5 "$dir/c$c.health.out")"
    grep '^{' "$dir/c$c.health.out" | tail -n 1 >"$dir/c$c.health.json"
    say "   c=$c: $(summary_line "$dir/c$c.run.json") | static $(summary_line "$dir/c$c.static.json") | /health/ $(summary_line "$dir/c$c.health.json")"
  done
  record_rss "$dir/rss.json"
  mark $b end
  stop_ccm gateway
  stop_ccm server
}

# e2e_watch FILE: "epoch|count" lines, every 0.2 s, from one psql session.
e2e_watch() {
  exec psql -X -q -A -t -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" >"$1" \
    <<<"SELECT extract(epoch FROM clock_timestamp())::numeric(16, 3), count(*)
    FROM calls_calllog WHERE campaign_id = 2
    AND status IN ('PICKED', 'FAILED', 'DISCONNECTED', 'RNR') \\watch 0.2"
}

bench_e2e() {
  local b=e2e dir=$RAW/e2e n=$E2E_CALLS t0 t i count line last=-1 deadline
  mkdir -p "$dir"
  say "== $b: $n calls from initiate to a final state (mock at zero delay, MAX_CONCURRENT_CALLS=$E2E_LIMIT)"
  fresh_db 2
  inputs $b "\"calls\": $n" "\"initiate_concurrency\": $E2E_CONCURRENCY" \
    "\"max_concurrent_calls\": $E2E_LIMIT" '"busy_retry_ms": 20' \
    '"mock": {"delay_ms": 0, "outcomes": "PICKED:0.60,DISCONNECTED:0.25,RNR:0.15", "seed": 1}' \
    '"final_states": ["PICKED", "FAILED", "DISCONNECTED", "RNR"]' \
    '"processes": "server, gateway, consumers (all roles, one process), mock-provider"'
  local -a env=(MAX_CONCURRENT_CALLS=$E2E_LIMIT)
  start_ccm server "${env[@]}" "$CCM_BIN" server
  start_ccm gateway "${env[@]}" "$CCM_BIN" gateway
  start_ccm mock MOCK_DELAY_MIN_MS=0 MOCK_DELAY_MAX_MS=0 MOCK_SEED=1 "$CCM_BIN" mock-provider
  start_ccm consumers "${env[@]}" "$CCM_BIN" consumers
  wait_port "$GRPC_PORT"
  wait_port "$HTTP_PORT"
  wait_port "$MOCK_PORT"
  # Warm-up: one call of campaign 1 through the whole pipeline (consumer
  # groups joined, connections open) before the clock starts.
  "$BENCH_GRPC" initiate -n 1 --campaign 1 --base "$(number_base 8 0)" >"$dir/warmup.json"
  deadline=$((SECONDS + 120))
  until [[ $(psql_app -c "SELECT count(*) FROM calls_calllog WHERE campaign_id = 1
               AND status IN ('PICKED', 'FAILED', 'DISCONNECTED', 'RNR')") -ge 1 ]]; do
    ((SECONDS < deadline)) || die "e2e warm-up call did not finish in 120 s (logs: $LOG_DIR)"
    sleep 0.2
  done
  mark $b start
  t0=$(now_s)
  "$BENCH_GRPC" initiate -n "$n" -c "$E2E_CONCURRENCY" --retry-busy 20 --campaign 2 \
    --base "$(number_base 9 0)" >"$dir/initiate.json" &
  local client=$!
  : >"$dir/samples.txt"
  # One psql session samples the count every 0.2 s (\watch): a new psql
  # (and PostgreSQL backend) per sample cost about a tenth of the CPU the
  # benchmark is measuring.
  e2e_watch "$dir/watch.txt" &
  local watcher=$!
  deadline=$((SECONDS + E2E_TIMEOUT_S))
  while :; do
    line=$(tail -n 1 "$dir/watch.txt" 2>/dev/null || true)
    if [[ $line == *'|'* ]]; then
      t=${line%%|*} count=${line#*|}
    else
      t=$(now_s) count=0
    fi
    if [[ $count != "$last" ]]; then
      printf '%s %s\n' "$t" "$count" >>"$dir/samples.txt"
      last=$count
    fi
    ((count >= n)) && break
    if ((SECONDS >= deadline)); then
      say "   e2e: timeout after ${E2E_TIMEOUT_S}s with $count of $n calls final"
      break
    fi
    sleep 0.2
  done
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  wait "$client" || true
  printf '%s\n' "$t0" >"$dir/t0.txt"
  psql_app -c "SELECT json_build_object(
      'p50_ms', percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
      'p90_ms', percentile_cont(0.9) WITHIN GROUP (ORDER BY ms),
      'p99_ms', percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
      'max_ms', max(ms), 'final', count(*),
      'by_status', (SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n
                    FROM calls_calllog WHERE campaign_id = 2 GROUP BY status) s))
    FROM (SELECT extract(epoch FROM updated_at - created_at) * 1000 AS ms FROM calls_calllog
          WHERE campaign_id = 2 AND status IN ('PICKED', 'FAILED', 'DISCONNECTED', 'RNR')) x" \
    >"$dir/latency.json"
  # Where the time goes: median ms between the steps each call's rows record.
  psql_app -c "WITH o AS (SELECT DISTINCT ON (message_key, topic) message_key, topic, sent_at
                           FROM calls_outbox ORDER BY message_key, topic, id),
         b AS (SELECT DISTINCT ON (call_id) call_id, received_at, applied_at
                 FROM calls_callback ORDER BY call_id, id),
         s AS (SELECT l.created_at, oi.sent_at AS init_sent, a.dispatched_at AS dispatched,
                      b.received_at AS cb_received, oc.sent_at AS cb_sent, b.applied_at AS applied
                 FROM calls_calllog l
                 LEFT JOIN o oi ON oi.message_key = l.call_id AND oi.topic = 'initiated_call_topic'
                 LEFT JOIN calls_callattempt a ON a.call_id = l.call_id AND a.attempt = 1
                 LEFT JOIN b ON b.call_id = l.call_id
                 LEFT JOIN o oc ON oc.message_key = l.call_id AND oc.topic = 'callback_topic'
                WHERE l.campaign_id = 2)
    SELECT json_build_object(
      '1_initiated_to_event_published', percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM init_sent - created_at) * 1000),
      '2_event_published_to_provider_accepted', percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM dispatched - init_sent) * 1000),
      '3_provider_accepted_to_callback_recorded', percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM cb_received - dispatched) * 1000),
      '4_callback_recorded_to_published', percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM cb_sent - cb_received) * 1000),
      '5_callback_published_to_applied', percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied - cb_sent) * 1000))
    FROM s" >"$dir/stages.json"
  record_rss "$dir/rss.json"
  mark $b end
  stop_ccm consumers
  stop_ccm mock
  stop_ccm gateway
  stop_ccm server
  say "   $(summary_e2e "$dir")"
}

bench_add_phones() {
  local b=add_phones dir=$RAW/add_phones i c campaign
  mkdir -p "$dir"
  local total=$((PHONE_BATCHES * PHONE_BATCH))
  say "== $b: AddPhoneNumbers, $total numbers in batches of $PHONE_BATCH at concurrency ${PHONE_LEVELS[*]}"
  fresh_db $((2 * ${#PHONE_LEVELS[@]}))
  inputs $b "\"numbers\": $total" "\"batch\": $PHONE_BATCH" \
    '"levels": ['"$(IFS=,; echo "${PHONE_LEVELS[*]}")"']' \
    '"ceiling": "pgbench: the same INSERT ... ON CONFLICT DO NOTHING RETURNING of 10,000 numbers per statement (bench/phone_insert.sql)"'
  mark $b start
  start_ccm server "$CCM_BIN" server
  wait_port "$GRPC_PORT"
  for i in "${!PHONE_LEVELS[@]}"; do
    c=${PHONE_LEVELS[$i]}
    campaign=$((2 * i + 1))
    "$BENCH_GRPC" add-phones -c "$c" -n "$PHONE_BATCHES" --batch "$PHONE_BATCH" \
      --campaign "$campaign" --base "$(number_base 5 "$i")" >"$dir/c$c.run.json"
    pgbench_run "$dir/c$c.pgbench" bench/phone_insert.sql "$c" "-t$((PHONE_BATCHES / c))" \
      -D campaign=$((campaign + 1)) -D base="$(number_base 6 "$i")" -D seq=0 -D batch=$PHONE_BATCH
    say "   c=$c: $(summary_line "$dir/c$c.run.json") | pgbench $(pgbench_tps "$dir/c$c.pgbench.out") statements/s"
  done
  record_rss "$dir/rss.json"
  mark $b end
  stop_ccm server
}

# Inserts N due DISCONNECTED calls (with their first attempt) of campaign 1.
insert_due_calls() {
  local n=$1 base
  base=$(number_base 7 0)
  psql_app >/dev/null <<EOF
INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status, attempt_count,
                           max_attempts, created_at, updated_at, last_attempt_at, next_retry_at)
SELECT 'call_1_+' || ($base + g) || '_20261126000000_' || lpad(to_hex(g), 8, '0'), 1,
       '+' || ($base + g), 'DISCONNECTED', 1, 3, now() - interval '2 hours',
       now() - interval '1 hour', now() - interval '2 hours',
       now() - interval '1 second' * (1 + g % 3600)
  FROM generate_series(1, $n) g;
INSERT INTO calls_callattempt (call_id, attempt, status, dispatched_at, outcome_at, call_duration)
SELECT call_id, 1, 'DISCONNECTED', last_attempt_at, updated_at, 5 FROM calls_calllog;
VACUUM ANALYZE calls_calllog;
VACUUM ANALYZE calls_callattempt;
EOF
}

bench_scheduler() {
  local b=scheduler dir=$RAW/scheduler run instances batch due yaml t0 t1 k claimed label
  mkdir -p "$dir"
  say "== $b: claiming due retries ($(printf '%s; ' "${SCHED_RUNS[@]}")as instances, batch_size[, due calls; default $SCHED_CALLS])"
  inputs $b "\"due_calls\": $SCHED_CALLS" '"max_concurrent_calls": 1000000' \
    '"max_concurrent_retries": 1000000' '"command": "ccm scheduler --once (N instances at once)"' \
    '"rules": "bench/scheduler.yaml"' '"runs": "instances x batch_size (100 is the default)"'
  mark $b start
  for run in "${SCHED_RUNS[@]}"; do
    read -r instances batch due <<<"$run"
    due=${due:-$SCHED_CALLS}
    label=i${instances}_b$batch
    yaml=$dir/scheduler_b$batch.yaml
    sed "s/^  batch_size: .*/  batch_size: $batch/" bench/scheduler.yaml >"$yaml"
    fresh_db 1
    insert_due_calls "$due"
    local -a pids=()
    t0=$(now_s)
    for ((k = 0; k < instances; k++)); do
      env MAX_CONCURRENT_CALLS=1000000 RETRY_SCHEDULE_CONFIG_PATH="$yaml" \
        "$CCM_BIN" scheduler --once >>"$LOG_DIR/scheduler.out" 2>&1 &
      pids+=($!)
      watch_rss "$!" "$dir/$label.rss$k" &
    done
    for k in "${pids[@]}"; do wait "$k" || say "   a scheduler pass exited non-zero (see $LOG_DIR)"; done
    t1=$(now_s)
    wait
    claimed=$(psql_app -c "SELECT count(*) FROM calls_calllog WHERE status = 'RETRYING'")
    printf '{"instances": %s, "batch_size": %s, "due": %s, "claimed": %s, "seconds": %s}\n' \
      "$instances" "$batch" "$due" "$claimed" \
      "$("$PYTHON" -c "print(round($t1 - $t0, 3))")" >"$dir/$label.json"
    say "   $instances instance(s), batch $batch: $claimed claimed in $("$PYTHON" -c "print(round($t1 - $t0, 2))") s"
  done
  mark $b end
}

# ------------------------------------------------------------ summaries ---
summary_line() {
  "$PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
extra = ""
if d.get("errors") or d.get("non_2xx") or d.get("socket_errors"):
    extra = " (errors %s)" % (d.get("errors") or d.get("non_2xx") or d.get("socket_errors"))
if "numbers_per_s" in d:
    extra += " = %.0f numbers/s" % d["numbers_per_s"]
print("%.0f/s p50 %.2f ms p99 %.2f ms%s" % (d["throughput_per_s"], d["p50_ms"], d["p99_ms"], extra))
' "$1" 2>/dev/null || echo "(no result)"
}

pgbench_tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$1" | head -n 1 | cut -d. -f1; }

summary_e2e() {
  "$PYTHON" - "$1" "$E2E_CALLS" <<'EOF'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
t0 = float(open(d + "/t0.txt").read())
samples = [tuple(map(float, l.split())) for l in open(d + "/samples.txt") if l.strip()]
last_t, last_n = samples[-1] if samples else (t0, 0)
print("%d of %d calls final in %.1f s = %.0f calls/s" % (last_n, n, last_t - t0, last_n / max(last_t - t0, 1e-9)))
EOF
}

# ------------------------------------------------------------- assemble ---
# Writes bench/results/<name>.json for each benchmark run and prints the table.
assemble() {
  "$PYTHON" - "$RAW" "$RESULTS_DIR" "$QUICK" "$E2E_CALLS" "$ONLY" <<'EOF'
import glob, json, os, platform, re, statistics, sys, time

raw, out_dir, quick, e2e_calls, only = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5].split()
os.makedirs(out_dir, exist_ok=True)

def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default

def machine():
    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"cpus": os.cpu_count(), "model": model, "memory_gb": round(mem_kb / 1048576, 1),
            "kernel": platform.release()}

MACHINE = machine()

def marks(d):
    m = {}
    try:
        for line in open(d + "/marks.txt"):
            p = line.split()
            m[p[0]] = {"time": float(p[1]), "loadavg": [float(x) for x in p[2:5]]}
    except OSError:
        pass
    return m

def inputs(d):
    text = ""
    try:
        text = ",".join(l.strip() for l in open(d + "/inputs.txt") if l.strip())
    except OSError:
        pass
    return json.loads("{" + text + "}")

def pgbench(prefix):
    """tps and latency percentiles (ms) from pgbench's summary and log."""
    out = open(prefix + ".out").read()
    tps = float(re.search(r"^tps = ([0-9.]+)", out, re.M).group(1))
    lat = []
    for path in glob.glob(prefix + ".log*"):
        for line in open(path):
            p = line.split()
            if len(p) >= 3:
                lat.append(int(p[2]) / 1000.0)
    lat.sort()
    def pct(q):
        return round(lat[min(len(lat) - 1, int(q / 100 * (len(lat) - 1) + 0.5))], 3) if lat else None
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return {"throughput_per_s": round(tps, 1), "p50_ms": pct(50), "p99_ms": pct(99),
            "transactions": len(lat), "failed": int(failed.group(1)) if failed else 0}

def ratio(a, b):
    return round(a / b, 3) if a and b else None

PEAK_KEYS = ["server", "gateway", "consumers", "mock", "scheduler"]

def peak_rss(d, extra=None):
    r = load(d + "/rss.json", {}) or {}
    if extra:
        r.update(extra)
    return {k: r.get(k) for k in PEAK_KEYS}

def result(name, d, results, ceiling, ratio_to_ceiling, rss=None, notes=None):
    m = marks(d)
    doc = {
        "name": name,
        "quick": quick,
        "inputs": inputs(d),
        "machine": MACHINE,
        "results": results,
        "ceiling": ceiling,
        "ratio_to_ceiling": ratio_to_ceiling,
        "peak_rss_mb": peak_rss(d, rss),
        "loadavg": {"start": m.get("start", {}).get("loadavg"), "end": m.get("end", {}).get("loadavg")},
        "duration_s": round(m["end"]["time"] - m["start"]["time"], 1) if "start" in m and "end" in m else None,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes or [],
    }
    doc["notes"].append("2 vCPUs shared by the load client, every ccm process and the servers; other "
                        "work on the machine at the same time (see loadavg) makes the numbers noisy.")
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return doc

rows = []  # (bench, level, throughput, unit, p50, p99, ceiling, ceiling name, ratio)

def pick(d, keys=("concurrency", "throughput_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "ok", "errors")):
    return {k: d.get(k) for k in keys if k in d}

# 1. gRPC InitiateCall
d = raw + "/grpc_initiate"
if "grpc_initiate" in only and os.path.isdir(d):
    results, ceil_levels, ratios = [], [], []
    for c in sorted(int(re.search(r"c(\d+)\.run", p).group(1)) for p in glob.glob(d + "/c*.run.json")):
        run = load("%s/c%d.run.json" % (d, c), {})
        pg = pgbench("%s/c%d.pgbench" % (d, c))
        pg_all = pgbench("%s/c%d.pgbench_all" % (d, c))
        h = load("%s/c%d.health.json" % (d, c), {})
        r = pick(run)
        r["concurrency"] = c
        r["busy_or_error_sample"] = run.get("error_sample") or None
        results.append(r)
        ceil = {"concurrency": c, "pgbench_insert": pg, "pgbench_all_statements": pg_all,
                "empty_rpc": pick(h)}
        ceil_levels.append(ceil)
        rr = {"concurrency": c, "database": ratio(r.get("throughput_per_s"), pg["throughput_per_s"]),
              "database_all_statements": ratio(r.get("throughput_per_s"), pg_all["throughput_per_s"]),
              "framework": ratio(r.get("throughput_per_s"), h.get("throughput_per_s"))}
        ratios.append(rr)
        rows.append(("grpc InitiateCall", c, r.get("throughput_per_s"), "calls", r.get("p50_ms"), r.get("p99_ms"),
                     pg["throughput_per_s"], "pgbench insert", rr["database"]))
        rows.append(("  ceiling: pgbench insert", c, pg["throughput_per_s"], "tx", pg["p50_ms"], pg["p99_ms"], None, "", None))
        rows.append(("  ceiling: pgbench all stmts", c, pg_all["throughput_per_s"], "tx", pg_all["p50_ms"], pg_all["p99_ms"], None, "", None))
        rows.append(("  ceiling: empty gRPC", c, h.get("throughput_per_s"), "calls", h.get("p50_ms"), h.get("p99_ms"), None, "", None))
    result("grpc_initiate", d, results, {"levels": ceil_levels,
           "what": "pgbench_insert: bench/initiate_insert.sql, InitiateCall's insert statement at the same "
                   "concurrency, prepared (the database's limit); pgbench_all_statements: bench/initiate_statements.sql, "
                   "all of InitiateCall's SQL; empty_rpc: grpc.health.v1.Health/Check with an empty request, "
                   "served by the same server transport with no database (the framework's ceiling)"},
           ratios)

# 2. REST InitiateCall
d = raw + "/http_initiate"
if "http_initiate" in only and os.path.isdir(d):
    results, ceil_levels, ratios = [], [], []
    grpc_d = raw + "/grpc_initiate"
    for c in sorted(int(re.search(r"c(\d+)\.run", p).group(1)) for p in glob.glob(d + "/c*.run.json")):
        run = load("%s/c%d.run.json" % (d, c), {})
        st = load("%s/c%d.static.json" % (d, c), {})
        he = load("%s/c%d.health.json" % (d, c), {})
        g = load("%s/c%d.run.json" % (grpc_d, c), {})
        r = pick(run, ("throughput_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "ok", "non_2xx", "socket_errors"))
        r["concurrency"] = c
        results.append(r)
        ceil_levels.append({"concurrency": c, "static_204": pick(st, ("throughput_per_s", "p50_ms", "p99_ms")),
                            "health_rest_to_grpc": pick(he, ("throughput_per_s", "p50_ms", "p99_ms"))})
        rr = {"concurrency": c, "gateway_static": ratio(r.get("throughput_per_s"), st.get("throughput_per_s")),
              "health_rest_to_grpc": ratio(r.get("throughput_per_s"), he.get("throughput_per_s")),
              "grpc_initiate_same_concurrency": ratio(r.get("throughput_per_s"), g.get("throughput_per_s"))}
        ratios.append(rr)
        rows.append(("REST initiate-call", c, r.get("throughput_per_s"), "req", r.get("p50_ms"), r.get("p99_ms"),
                     st.get("throughput_per_s"), "static 204", rr["gateway_static"]))
        rows.append(("  ceiling: gateway static", c, st.get("throughput_per_s"), "req", st.get("p50_ms"), st.get("p99_ms"), None, "", None))
        rows.append(("  ceiling: GET /health/", c, he.get("throughput_per_s"), "req", he.get("p50_ms"), he.get("p99_ms"), None, "", None))
    result("http_initiate", d, results, {"levels": ceil_levels,
           "what": "static_204: OPTIONS preflight answered by the gateway's HTTP layer alone; "
                   "health_rest_to_grpc: GET /health/, the gateway plus an empty RPC"}, ratios)

# 3. end to end
d = raw + "/e2e"
if "e2e" in only and os.path.isdir(d) and os.path.exists(d + "/t0.txt"):
    t0 = float(open(d + "/t0.txt").read())
    samples = [tuple(map(float, l.split())) for l in open(d + "/samples.txt") if l.strip()]
    ini = load(d + "/initiate.json", {})
    lat = load(d + "/latency.json", {}) or {}
    last_t, last_n = samples[-1] if samples else (t0, 0)
    def cross(frac):
        for t, n in samples:
            if n >= frac * e2e_calls:
                return t
        return None
    t10, t90 = cross(0.1), cross(0.9)
    steady = round(0.8 * e2e_calls / (t90 - t10), 1) if t10 and t90 and t90 > t10 else None
    total = round(last_t - t0, 2)
    r = {"concurrency": ini.get("concurrency"), "calls": e2e_calls, "final": int(last_n),
         "time_to_finish_s": total, "throughput_per_s": round(last_n / total, 1) if total > 0 else None,
         "steady_throughput_per_s": steady,
         "initiate_time_s": ini.get("elapsed_s"), "initiate_busy_retries": ini.get("busy_retries"),
         "initiate_errors": ini.get("errors"),
         "p50_ms": round(lat["p50_ms"], 1) if lat.get("p50_ms") is not None else None,
         "p90_ms": round(lat["p90_ms"], 1) if lat.get("p90_ms") is not None else None,
         "p99_ms": round(lat["p99_ms"], 1) if lat.get("p99_ms") is not None else None,
         "by_status": lat.get("by_status")}
    grpc_c16 = load(raw + "/grpc_initiate/c16.run.json", {})
    ceil = {"grpc_initiate_c16_per_s": grpc_c16.get("throughput_per_s"),
            "what": "no separate ceiling: compared with InitiateCall alone over gRPC at concurrency 16 "
                    "(the first stage of the same pipeline)"}
    rt = ratio(r["throughput_per_s"], grpc_c16.get("throughput_per_s"))
    stages = load(d + "/stages.json", {}) or {}
    r["median_stage_ms"] = {k: round(v, 1) if v is not None else None for k, v in stages.items()}
    result("e2e", d, [r], ceil, rt, notes=["latency = updated_at - created_at of each call (initiate "
                                             "accepted to outcome applied), from the database",
                                             "median_stage_ms: medians between the timestamps each call's rows "
                                             "record (created_at, outbox sent_at, attempt dispatched_at, callback "
                                             "received_at, outbox sent_at, callback applied_at): a stage that "
                                             "dwarfs the others is a queue in front of a consumer"])
    rows.append(("e2e calls to final state", ini.get("concurrency"), r["throughput_per_s"], "calls",
                 r["p50_ms"], r["p99_ms"], grpc_c16.get("throughput_per_s"), "grpc initiate c16", rt))
    rows.append(("  time for %d calls (s)" % e2e_calls, None, total, "s", None, None, None, "", None))

# 4. AddPhoneNumbers
d = raw + "/add_phones"
if "add_phones" in only and os.path.isdir(d):
    results, ceil_levels, ratios = [], [], []
    for c in sorted(int(re.search(r"c(\d+)\.run", p).group(1)) for p in glob.glob(d + "/c*.run.json")):
        run = load("%s/c%d.run.json" % (d, c), {})
        pg = pgbench("%s/c%d.pgbench" % (d, c))
        batch = run.get("batch") or 10000
        r = {"concurrency": c, "batches_per_s": run.get("throughput_per_s"),
             "throughput_per_s": run.get("numbers_per_s"), "numbers_added": run.get("numbers_added"),
             "numbers_duplicate": run.get("numbers_duplicate"), "elapsed_s": run.get("elapsed_s"),
             "p50_ms": run.get("p50_ms"), "p99_ms": run.get("p99_ms"), "errors": run.get("errors")}
        results.append(r)
        pg_numbers = round(pg["throughput_per_s"] * batch, 1)
        ceil_levels.append({"concurrency": c, "pgbench_numbers_per_s": pg_numbers, "pgbench": pg})
        rr = ratio(r["throughput_per_s"], pg_numbers)
        ratios.append({"concurrency": c, "database": rr})
        rows.append(("AddPhoneNumbers (numbers/s)", c, r["throughput_per_s"], "nums", r["p50_ms"], r["p99_ms"],
                     pg_numbers, "pgbench bulk insert", rr))
    result("add_phones", d, results, {"levels": ceil_levels,
           "what": "bench/phone_insert.sql: the same INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING "
                   "phone_number of one batch per statement, at the same concurrency"}, ratios,
           notes=["p50/p99 are per AddPhoneNumbers call (one batch)"])

# 5. scheduler
d = raw + "/scheduler"
if "scheduler" in only and os.path.isdir(d):
    results, rss = [], {}
    for path in sorted(glob.glob(d + "/i*_b*.json")):
        s = load(path, {})
        label = os.path.basename(path)[:-5]
        r = {"concurrency": s["instances"], "batch_size": s["batch_size"], "due": s["due"],
             "claimed": s["claimed"], "seconds": s["seconds"],
             "throughput_per_s": round(s["claimed"] / s["seconds"], 1) if s["seconds"] else None}
        results.append(r)
        for rp in glob.glob(d + "/%s.rss*" % label):
            kb = int(open(rp).read().strip() or 0)
            rss["scheduler"] = max(rss.get("scheduler") or 0, round(kb / 1024.0, 1))
        rows.append(("scheduler claims (b=%d, %dk)" % (s["batch_size"], s["due"] // 1000), s["instances"], r["throughput_per_s"], "calls",
                     None, None, None, "", None))
    result("scheduler", d, results, None, None, rss=rss,
           notes=["concurrency = scheduler instances running --once at the same time (SKIP LOCKED)",
                  "seconds include process start and the stale-call sweep of each pass"])

# ----- the table
def fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float) and nd:
        return ("%." + str(nd) + "f") % v
    return "{:,.0f}".format(v) if isinstance(v, (int, float)) else str(v)

print()
print("%-32s %5s %12s %9s %9s %12s %-20s %6s" % ("benchmark", "conc", "per second", "p50 ms", "p99 ms",
                                                "ceiling/s", "ceiling", "ratio"))
print("-" * 112)
for b, c, tp, unit, p50, p99, ceil, cname, rt in rows:
    print("%-32s %5s %12s %9s %9s %12s %-20s %6s" % (b, "-" if c is None else c, fmt(tp),
          fmt(p50, 2), fmt(p99, 2), fmt(ceil), cname, "-" if rt is None else "%.2f" % rt))
print()
print("results: %s/*.json" % out_dir)
EOF
}

# --------------------------------------------------------------- main ---
main() {
  local t_start=$SECONDS
  say "ccm bench ($([[ $QUICK == 1 ]] && echo quick || echo full)): $ONLY"
  say "binary $CCM_BIN_SOURCE (run from a copy in $BIN_DIR); load average now $(loadavg)"
  rm -rf "$RAW" "$BENCH_DIR/logs"
  mkdir -p "$RAW" "$LOG_DIR"
  # A fresh stack every time: no Kafka messages or data left by an earlier run.
  if [[ -d $CCM_VAR_DIR && ${BENCH_KEEP_STACK:-0} != 1 ]]; then scripts/stack.sh clean >/dev/null; fi
  STACK_UP=1
  # Ports 57xxx lie in Linux's ephemeral range: a client socket of another
  # program may hold one for a moment. One retry covers that.
  if ! scripts/stack.sh start 2>&1 | sed 's/^/[bench] /'; then
    say "starting the servers failed; retrying once in 5 s"
    sleep 5
    scripts/stack.sh start 2>&1 | sed 's/^/[bench] /'
  fi
  local b
  for b in $ALL_BENCHES; do
    [[ " $ONLY " == *" $b "* ]] || continue
    "bench_$b"
  done
  assemble
  say "done in $((SECONDS - t_start)) s (raw numbers: $RAW)"
}

main "$@"
