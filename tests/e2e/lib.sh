# Helpers for the end-to-end scripts: start and stop ccm processes of the
# build under test ($CCM_BIN) and wait for them. Sourced, not run.
CCM_BIN=${CCM_BIN:-$ROOT/build/ccm}
E2E_LOG_DIR=${LOG_DIR:-var/test/logs}
declare -A CCM_PIDS=()

# start_ccm CMD [ARGS...]: runs `ccm CMD` in the background, output in a file.
start_ccm() {
  local cmd=$1
  mkdir -p "$E2E_LOG_DIR"
  "$CCM_BIN" "$@" >"$E2E_LOG_DIR/$cmd.out" 2>&1 &
  CCM_PIDS[$cmd]=$!
}

# stop_ccm CMD: SIGTERM, wait up to 20 s; fails if the exit status is not 0.
stop_ccm() {
  local cmd=$1 pid=${CCM_PIDS[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "[e2e] ccm $cmd did not stop within 20 s" >&2
    kill -KILL "$pid"
    return 1
  fi
  local rc=0
  wait "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "[e2e] ccm $cmd exited with $rc; its output:" >&2
    tail -n 60 "$E2E_LOG_DIR/$cmd.out" >&2
    return 1
  fi
  if grep -q -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$E2E_LOG_DIR/$cmd.out"; then
    echo "[e2e] sanitizer report from ccm $cmd:" >&2
    tail -n 60 "$E2E_LOG_DIR/$cmd.out" >&2
    return 1
  fi
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (30 s).
wait_port() {
  local i
  for i in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "[e2e] nothing listens on port $1" >&2
  return 1
}

wait_grpc_ready() { wait_port "${GRPC_PORT:-50051}"; }
