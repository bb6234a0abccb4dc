#!/usr/bin/env bash
# Private PostgreSQL 15, Redis 7 and Kafka 3.9 (KRaft) servers for ccm
# development and tests (SPEC §12).
#
#   scripts/stack.sh start        start what is not running (reuse what is)
#   scripts/stack.sh start NAME.. only these servers: postgres, redis, kafka
#   scripts/stack.sh stop         stop the servers that `start` started
#   scripts/stack.sh stop --all   stop every private server of the state dir
#   scripts/stack.sh status       one line per server (exit 1 if any is down)
#   scripts/stack.sh env          print the effective configuration
#   scripts/stack.sh clean        stop --all, then delete the state dir
#
# Configuration: the application's variables (SPEC §3) from the environment,
# then from ./.env (or $CCM_ENV_FILE) for those the environment does not set:
# DB_HOST DB_PORT DB_NAME DB_USER DB_PASSWORD (POSTGRES_* aliases),
# DATABASE_URL, REDIS_URL, KAFKA_BOOTSTRAP_SERVERS, KAFKA_*_TOPIC.
# Script-only knobs:
#   CCM_VAR_DIR            state dir, relative to the current dir (var/run)
#   CCM_PG_FAST=1          fsync=off etc. (tests only)
#   CCM_REDIS_EPHEMERAL=1  no Redis persistence
#   KAFKA_CONTROLLER_PORT  KRaft controller port (broker port + 1)
#   CCM_STARTED_FILE       record of the servers `start` started ($VAR/started)
# A server whose host is not local (or DATABASE_URL) is external: it is only
# checked for reachability, never started or stopped.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$SCRIPT_DIR")
PG_BIN=/usr/lib/postgresql/15/bin
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_LOG4J_TEMPLATE=$SCRIPT_DIR/kafka/log4j.properties
KAFKA_HOME=$ROOT/var/kafka
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_TOOLS=$KAFKA_HOME/bin
KAFKA_JAVA_OPTS=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -Djava.awt.headless=true)
SERVERS=(postgres redis kafka)

# ---------------------------------------------------------------- helpers ---

log() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] warning: %s\n' "$*" >&2; }
die() {
  printf '[stack] error: %s\n' "$*" >&2
  exit 1
}

# show_tail FILE [LINES]: the end of a log, on stderr.
show_tail() {
  local file=$1 lines=${2:-30}
  if [[ -s $file ]]; then
    printf '[stack] --- last %s lines of %s ---\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2
    printf '[stack] ---\n' >&2
  fi
}

is_true() {
  case "${1,,}" in
    1 | true | yes | on) return 0 ;;
    *) return 1 ;;
  esac
}

is_local_host() {
  case "$1" in
    localhost | 127.0.0.1 | ::1 | '[::1]') return 0 ;;
    *) return 1 ;;
  esac
}

check_port() { # check_port NAME VALUE
  if [[ ! $2 =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then
    die "$1: '$2' is not a port number"
  fi
}

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# pid_alive PIDFILE COMM [CMDLINE_PART]: the process of PIDFILE exists, is
# named COMM and (optionally) has CMDLINE_PART in its command line.
pid_alive() {
  local pidfile=$1 comm=$2 part=${3:-} pid
  [[ -s $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # An exited process that its parent has not reaped yet counts as gone.
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm"* ]] || return 1
  [[ -z $part ]] || tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$part"
}

# port_free NAME PORT: dies when something else already listens there.
port_free() {
  if tcp_open 127.0.0.1 "$2"; then
    ss -ltnp "sport = :$2" 2>/dev/null | tail -n +2 >&2 || true
    die "$1: port 127.0.0.1:$2 is already in use by another program"
  fi
}

pid_of() { head -n 1 "$1" 2>/dev/null || true; }

# wait_for SECONDS FUNCTION [ARGS...]: polls FUNCTION every 0.2 s.
wait_for() {
  local limit=$1 i
  shift
  for ((i = 0; i < limit * 5; i++)); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  "$@"
}

# kill_and_wait PIDFILE COMM PART SECONDS NAME: SIGTERM, SIGKILL after SECONDS.
kill_and_wait() {
  local pidfile=$1 comm=$2 part=$3 limit=$4 name=$5 pid
  pid=$(pid_of "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "$limit" not_alive "$pidfile" "$comm" "$part"; then
    warn "$name: still running after ${limit}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 not_alive "$pidfile" "$comm" "$part" || die "$name: pid $pid does not die"
  fi
  rm -f "$pidfile"
}

not_alive() { ! pid_alive "$@"; }

# record_started NAME: this invocation started NAME (read by `stop`).
record_started() {
  mkdir -p "$(dirname "$STARTED_FILE")"
  printf '%s\n' "$1" >>"$STARTED_FILE"
}

# ----------------------------------------------------------- configuration ---

# Reads KEY=VALUE lines of the .env file for the keys this script knows,
# without executing anything; variables already set in the environment win.
load_env_file() {
  local file=${CCM_ENV_FILE:-.env} line key val
  if [[ ! -e $file ]]; then
    [[ -z ${CCM_ENV_FILE:-} ]] || die "CCM_ENV_FILE: $file not found"
    return 0
  fi
  [[ -r $file && ! -d $file ]] || die "cannot read the environment file $file"
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    line=${line#"${line%%[![:space:]]*}"}
    [[ -n $line && $line != \#* && $line == *=* ]] || continue
    line=${line#export }
    key=${line%%=*}
    key=${key%"${key##*[![:space:]]}"}
    [[ $key =~ ^(DB_[A-Z_]+|POSTGRES_[A-Z_]+|DATABASE_URL|REDIS_URL|KAFKA_[A-Z0-9_]+|CCM_[A-Z_]+)$ ]] || continue
    [[ $key != CCM_ENV_FILE && -z ${!key+set} ]] || continue
    val=${line#*=}
    val=${val#"${val%%[![:space:]]*}"}
    if [[ $val =~ ^\"(.*)\"[[:space:]]*$ || $val =~ ^\'(.*)\'[[:space:]]*$ ]]; then
      val=${BASH_REMATCH[1]}
    else
      val=${val%%[[:space:]]#*}
      val=${val%"${val##*[![:space:]]}"}
    fi
    printf -v "$key" '%s' "$val"
  done <"$file"
}

# parse_hostport TEXT DEFAULT_PORT: sets HP_HOST, HP_PORT from host[:port],
# [v6]:port, or a URL scheme://[user[:pass]@]host[:port][/...]; HP_PASS gets
# the URL's password if any.
parse_hostport() {
  local rest=$1 userinfo=""
  HP_PASS=""
  [[ $rest != *://* ]] || rest=${rest#*://}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  if [[ $rest == *@* ]]; then
    userinfo=${rest%@*}
    rest=${rest##*@}
    [[ $userinfo != *:* ]] || HP_PASS=${userinfo#*:}
  fi
  if [[ $rest == \[* ]]; then
    HP_HOST=${rest%%]*}
    HP_HOST=${HP_HOST#[}
    HP_PORT=${rest#*]}
  else
    HP_HOST=${rest%%:*}
    HP_PORT=${rest#"$HP_HOST"}
  fi
  HP_PORT=${HP_PORT#:}
  HP_HOST=${HP_HOST:-localhost}
  HP_PORT=${HP_PORT:-$2}
}

load_config() {
  load_env_file

  DB_HOST=${DB_HOST:-${POSTGRES_HOST:-localhost}}
  DB_PORT=${DB_PORT:-${POSTGRES_PORT:-5432}}
  DB_NAME=${DB_NAME:-${POSTGRES_DB:-campaign_db}}
  DB_USER=${DB_USER:-${POSTGRES_USER:-campaign_user}}
  DB_PASSWORD=${DB_PASSWORD:-${POSTGRES_PASSWORD:-}}
  DATABASE_URL=${DATABASE_URL:-}
  REDIS_URL=${REDIS_URL:-redis://localhost:6379/0}
  KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-localhost:9092}
  KAFKA_INITIATE_CALL_TOPIC=${KAFKA_INITIATE_CALL_TOPIC:-initiated_call_topic}
  KAFKA_CALLBACK_TOPIC=${KAFKA_CALLBACK_TOPIC:-callback_topic}
  KAFKA_DLQ_TOPIC=${KAFKA_DLQ_TOPIC:-dlq_topic}

  if [[ -n $DATABASE_URL ]] || ! is_local_host "$DB_HOST"; then PG_MODE=external; else PG_MODE=local; fi
  check_port DB_PORT "$DB_PORT"

  parse_hostport "$REDIS_URL" 6379
  REDIS_HOST=$HP_HOST REDIS_PORT=$HP_PORT REDIS_PASS=$HP_PASS
  check_port "REDIS_URL port" "$REDIS_PORT"
  if is_local_host "$REDIS_HOST"; then REDIS_MODE=local; else REDIS_MODE=external; fi

  local bootstrap=${KAFKA_BOOTSTRAP_SERVERS// /}
  bootstrap=${bootstrap#PLAINTEXT://}
  KAFKA_MODE=external
  if [[ $bootstrap != *,* ]]; then
    parse_hostport "$bootstrap" 9092
    KAFKA_HOST=$HP_HOST KAFKA_PORT=$HP_PORT
    check_port "KAFKA_BOOTSTRAP_SERVERS port" "$KAFKA_PORT"
    if is_local_host "$KAFKA_HOST"; then KAFKA_MODE=local; fi
  fi
  if [[ $KAFKA_MODE == local ]]; then
    KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
    check_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  fi

  local var=${CCM_VAR_DIR:-var/run}
  [[ $var == /* ]] || var=$PWD/$var
  VAR=$(realpath -m "$var")
  STARTED_FILE=${CCM_STARTED_FILE:-$VAR/started}
  [[ $STARTED_FILE == /* ]] || STARTED_FILE=$PWD/$STARTED_FILE

  REDIS_DIR=$VAR/redis
  KAFKA_DIR=$VAR/kafka
  pg_locate
}

# Serializes start/stop/clean on one state dir. The lock fd is closed for
# every server we launch, so that they never hold it.
lock_state_dir() {
  mkdir -p "$VAR"
  exec 9>"$VAR/.lock"
  flock -w 300 9 || die "another stack.sh holds $VAR/.lock"
}

# --------------------------------------------------------------- postgres ---

as_pg() { (cd / && runuser -u postgres -- "$@"); }

state_hash() { printf '%s' "$VAR" | sha1sum | cut -c1-12; }

# Where this state dir keeps its PostgreSQL files: $VAR/pg, or the /tmp
# folder recorded in $VAR/pg-location when postgres cannot reach $VAR.
pg_locate() {
  if [[ -s $VAR/pg-location ]]; then
    PG_BASE=$(head -n 1 "$VAR/pg-location")
  else
    PG_BASE=$VAR/pg
  fi
  pg_set_paths
}

pg_set_paths() {
  PG_DATA=$PG_BASE/data
  PG_LOG=$PG_BASE/postgres.log
  PG_SOCK=$PG_BASE/sock
  # A Unix socket path must stay under 108 bytes.
  if ((${#PG_SOCK} > 80)); then PG_SOCK=/tmp/ccm-pgsock-$(state_hash); fi
}

# Chooses the PostgreSQL folder at start: under $VAR when the postgres user
# can walk to it (a checkout under /root, mode 700, is not reachable).
pg_choose_base() {
  if [[ -s $VAR/pg/data/PG_VERSION ]] || as_pg test -x "$VAR" 2>/dev/null; then
    PG_BASE=$VAR/pg
    rm -f "$VAR/pg-location"
  else
    PG_BASE=/tmp/ccm-pg-$(state_hash)
    printf '%s\n' "$PG_BASE" >"$VAR/pg-location"
    log "postgres: user postgres cannot reach $VAR; keeping its data in $PG_BASE"
  fi
  pg_set_paths
}

pg_running_ours() { pid_alive "$PG_DATA/postmaster.pid" postgres; }

pg_port_answers() { pg_isready -q -h 127.0.0.1 -p "$DB_PORT" -t 2 >/dev/null 2>&1; }

pg_prepare_dirs() {
  mkdir -p "$PG_BASE" "$PG_SOCK"
  chown postgres:postgres "$PG_BASE" "$PG_SOCK"
  chmod 700 "$PG_BASE"
  chmod 755 "$PG_SOCK"
}

pg_init_if_needed() {
  [[ ! -s $PG_DATA/PG_VERSION ]] || return 0
  log "postgres: initdb $PG_DATA"
  rm -rf "$PG_DATA"
  local -a opts=(-D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8)
  if is_true "${CCM_PG_FAST:-0}"; then opts+=(--no-sync); fi
  if ! as_pg "$PG_BIN/initdb" "${opts[@]}" >"$PG_BASE/initdb.log" 2>&1; then
    show_tail "$PG_BASE/initdb.log"
    rm -rf "$PG_DATA"
    die "postgres: initdb failed"
  fi
}

# pg_hba.conf: superuser postgres trusted on loopback; the application role
# trusted while DB_PASSWORD is empty, scram-sha-256 when it is set.
pg_hba_text() {
  local method=trust
  [[ -z $DB_PASSWORD ]] || method=scram-sha-256
  cat <<EOF
# written by scripts/stack.sh (regenerated at every start)
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
host    all       postgres  127.0.0.1/32   trust
host    all       postgres  ::1/128        trust
local   all       all                      $method
host    all       all       127.0.0.1/32   $method
host    all       all       ::1/128        $method
EOF
}

# Writes pg_hba.conf; returns 0 when it changed.
pg_write_hba() {
  local hba=$PG_DATA/pg_hba.conf text
  text=$(pg_hba_text)
  if [[ -f $hba && $(cat "$hba") == "$text" ]]; then return 1; fi
  printf '%s\n' "$text" >"$hba"
  chown postgres:postgres "$hba"
  chmod 600 "$hba"
}

pg_psql_super() { # SQL on stdin, as superuser postgres over TCP
  PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -w -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$DB_PORT" -U postgres -d postgres
}

# Creates role DB_USER (LOGIN) owning database DB_NAME, idempotently; sets or
# clears the role's password. Secrets go through the environment, not argv.
pg_ensure_role() {
  local pw_sql
  if [[ -n $DB_PASSWORD ]]; then
    pw_sql="SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'ccm_user', :'ccm_pw') \\gexec"
  else
    pw_sql="SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD NULL', :'ccm_user') \\gexec"
  fi
  CCM_SQL_USER=$DB_USER CCM_SQL_DB=$DB_NAME CCM_SQL_PW=$DB_PASSWORD pg_psql_super <<EOF
\\getenv ccm_user CCM_SQL_USER
\\getenv ccm_db CCM_SQL_DB
\\getenv ccm_pw CCM_SQL_PW
SELECT format('CREATE ROLE %I LOGIN', :'ccm_user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'ccm_user') \\gexec
$pw_sql
SELECT format('CREATE DATABASE %I OWNER %I', :'ccm_db', :'ccm_user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'ccm_db') \\gexec
EOF
}

pg_server_options() {
  local server_opts="-p $DB_PORT -k $PG_SOCK -c listen_addresses=127.0.0.1 -c max_connections=200"
  if is_true "${CCM_PG_FAST:-0}"; then
    server_opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  printf '%s' "$server_opts"
}

start_postgres() {
  local addr=127.0.0.1:$DB_PORT
  if [[ $PG_MODE == external ]]; then
    check_external_postgres
    return
  fi
  pg_choose_base
  if pg_running_ours; then
    if pg_write_hba; then as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -s reload </dev/null 9>&- 8>&-; fi
    pg_ensure_role || die "postgres: could not create role $DB_USER / database $DB_NAME"
    log "postgres: already running on $addr (pid $(pid_of "$PG_DATA/postmaster.pid")), reusing it"
    return
  fi
  if pg_port_answers; then
    warn "postgres: $addr answers but is not this stack's server ($PG_DATA); reusing it as it is"
    pg_ensure_role || warn "postgres: could not create role $DB_USER / database $DB_NAME there"
    return
  fi
  port_free postgres "$DB_PORT"
  pg_prepare_dirs
  pg_init_if_needed
  pg_write_hba || true
  log "postgres: starting on $addr (data $PG_DATA)"
  record_started postgres
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -s \
    -o "$(pg_server_options)" start </dev/null >"$PG_BASE/pg_ctl.log" 2>&1 9>&- 8>&-; then
    cat "$PG_BASE/pg_ctl.log" >&2
    show_tail "$PG_LOG"
    die "postgres: failed to start on $addr"
  fi
  pg_ensure_role || {
    show_tail "$PG_LOG"
    die "postgres: could not create role $DB_USER / database $DB_NAME"
  }
  log "postgres: ready on $addr (database $DB_NAME, role $DB_USER)"
}

stop_postgres() {
  [[ $PG_MODE == local ]] || return 0
  if ! pg_running_ours; then
    log "postgres: not running"
    return 0
  fi
  log "postgres: stopping (127.0.0.1:$DB_PORT)"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop </dev/null 9>&-; then
    show_tail "$PG_LOG"
    die "postgres: pg_ctl stop failed"
  fi
}

pg_external_address() {
  if [[ -n $DATABASE_URL ]]; then
    # DATABASE_URL without its password.
    sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#; s#password=[^ ]*#password=***#' <<<"$DATABASE_URL"
  else
    printf '%s:%s' "$DB_HOST" "$DB_PORT"
  fi
}

pg_external_answers() {
  if [[ -n $DATABASE_URL ]]; then
    pg_isready -q -d "$DATABASE_URL" -t 5 >/dev/null 2>&1
  else
    pg_isready -q -h "$DB_HOST" -p "$DB_PORT" -t 5 >/dev/null 2>&1
  fi
}

check_external_postgres() {
  pg_external_answers || die "postgres: external server $(pg_external_address) does not answer"
  log "postgres: external server $(pg_external_address) answers"
}

status_postgres() {
  if [[ $PG_MODE == external ]]; then
    if pg_external_answers; then
      printf 'postgres  external  %s (reachable)\n' "$(pg_external_address)"
      return 0
    fi
    printf 'postgres  external  %s (unreachable)\n' "$(pg_external_address)"
    return 1
  fi
  if pg_running_ours; then
    printf 'postgres  running   127.0.0.1:%s (pid %s, data %s)\n' "$DB_PORT" \
      "$(pid_of "$PG_DATA/postmaster.pid")" "$PG_DATA"
  elif pg_port_answers; then
    printf 'postgres  running   127.0.0.1:%s (not this stack'"'"'s server)\n' "$DB_PORT"
  else
    printf 'postgres  stopped   127.0.0.1:%s\n' "$DB_PORT"
    return 1
  fi
}

# ------------------------------------------------------------------ redis ---

redis_cli() { # the URL's password, if any, goes through the environment
  if [[ -n $REDIS_PASS ]]; then
    REDISCLI_AUTH=$REDIS_PASS redis-cli --no-auth-warning -h "$1" -p "$2" "${@:3}"
  else
    redis-cli -h "$1" -p "$2" "${@:3}"
  fi
}

redis_answers() { # redis_answers HOST PORT
  local out
  out=$(redis_cli "$1" "$2" ping 2>&1) || true
  [[ $out == PONG || $out == *NOAUTH* || $out == *WRONGPASS* ]]
}

redis_running_ours() { pid_alive "$REDIS_DIR/redis.pid" redis-server; }

redis_write_conf() {
  local conf=$REDIS_DIR/redis.conf
  (
    umask 077
    {
      echo "# written by scripts/stack.sh"
      echo "port $REDIS_PORT"
      echo "bind 127.0.0.1"
      echo "protected-mode yes"
      echo "daemonize yes"
      echo "dir $REDIS_DIR"
      echo "pidfile $REDIS_DIR/redis.pid"
      echo "logfile $REDIS_DIR/redis.log"
      if is_true "${CCM_REDIS_EPHEMERAL:-0}"; then
        echo 'save ""'
        echo "appendonly no"
      else
        echo "appendonly yes"
      fi
      if [[ -n $REDIS_PASS ]]; then echo "requirepass $REDIS_PASS"; fi
    } >"$conf"
  )
}

start_redis() {
  local addr=127.0.0.1:$REDIS_PORT
  if [[ $REDIS_MODE == external ]]; then
    redis_answers "$REDIS_HOST" "$REDIS_PORT" || tcp_open "$REDIS_HOST" "$REDIS_PORT" ||
      die "redis: external server $REDIS_HOST:$REDIS_PORT does not answer"
    log "redis: external server $REDIS_HOST:$REDIS_PORT answers"
    return
  fi
  if redis_running_ours; then
    log "redis: already running on $addr (pid $(pid_of "$REDIS_DIR/redis.pid")), reusing it"
    return
  fi
  if redis_answers 127.0.0.1 "$REDIS_PORT"; then
    warn "redis: $addr answers but is not this stack's server; reusing it as it is"
    return
  fi
  port_free redis "$REDIS_PORT"
  mkdir -p "$REDIS_DIR"
  redis_write_conf
  log "redis: starting on $addr (dir $REDIS_DIR)"
  record_started redis
  if ! redis-server "$REDIS_DIR/redis.conf" </dev/null >"$REDIS_DIR/start.log" 2>&1 9>&- 8>&-; then
    cat "$REDIS_DIR/start.log" >&2
    show_tail "$REDIS_DIR/redis.log"
    die "redis: redis-server failed to start"
  fi
  if ! wait_for 15 redis_answers 127.0.0.1 "$REDIS_PORT"; then
    show_tail "$REDIS_DIR/redis.log"
    die "redis: no answer on $addr after 15 s"
  fi
  wait_for 5 redis_running_ours || true
  log "redis: ready on $addr"
}

stop_redis() {
  [[ $REDIS_MODE == local ]] || return 0
  if ! redis_running_ours; then
    log "redis: not running"
    return 0
  fi
  log "redis: stopping (127.0.0.1:$REDIS_PORT)"
  kill_and_wait "$REDIS_DIR/redis.pid" redis-server "" 30 redis
}

status_redis() {
  if [[ $REDIS_MODE == external ]]; then
    if redis_answers "$REDIS_HOST" "$REDIS_PORT" || tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
      printf 'redis     external  %s:%s (reachable)\n' "$REDIS_HOST" "$REDIS_PORT"
      return 0
    fi
    printf 'redis     external  %s:%s (unreachable)\n' "$REDIS_HOST" "$REDIS_PORT"
    return 1
  fi
  if redis_running_ours; then
    printf 'redis     running   127.0.0.1:%s (pid %s, dir %s)\n' "$REDIS_PORT" \
      "$(pid_of "$REDIS_DIR/redis.pid")" "$REDIS_DIR"
  elif redis_answers 127.0.0.1 "$REDIS_PORT"; then
    printf 'redis     running   127.0.0.1:%s (not this stack'"'"'s server)\n' "$REDIS_PORT"
  else
    printf 'redis     stopped   127.0.0.1:%s\n' "$REDIS_PORT"
    return 1
  fi
}

# ------------------------------------------------------------------ kafka ---

kafka_answers() { # kafka_answers BOOTSTRAP
  kcat -b "$1" -L -m 2 >/dev/null 2>&1
}

kafka_local_answers() {
  tcp_open 127.0.0.1 "$KAFKA_PORT" && kafka_answers "127.0.0.1:$KAFKA_PORT"
}

kafka_running_ours() { pid_alive "$KAFKA_DIR/pid" java "$KAFKA_DIR/server.properties"; }

kafka_pom_sum() { sha256sum "$KAFKA_POM" | cut -c1-16; }

# Copies the broker's jars from Maven Central once into var/kafka/libs (shared
# by every state dir); the marker records the pom.xml they came from.
kafka_ensure_jars() {
  local marker=$KAFKA_LIBS/.complete sum
  sum=$(kafka_pom_sum)
  if [[ -f $marker && $(cat "$marker") == "$sum" ]]; then return 0; fi
  mkdir -p "$KAFKA_HOME"
  exec 8>"$KAFKA_HOME/.lock"
  flock -w 600 8 || die "kafka: timed out waiting for $KAFKA_HOME/.lock"
  if [[ -f $marker && $(cat "$marker") == "$sum" ]]; then
    exec 8>&-
    return 0
  fi
  command -v mvn >/dev/null || die "kafka: mvn not found (run scripts/deps.sh)"
  log "kafka: fetching Kafka jars with Maven into $KAFKA_LIBS (first time, ~30 s)"
  local tmp=$KAFKA_HOME/libs.tmp.$$ mvn_log=$KAFKA_HOME/maven.log
  rm -rf "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" </dev/null >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    show_tail "$mvn_log" 40
    die "kafka: Maven could not fetch the Kafka jars (log: $mvn_log)"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  printf '%s\n' "$sum" >"$marker"
  log "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars cached in $KAFKA_LIBS"
  exec 8>&-
}

# var/kafka/bin/{kafka-topics,...}: the broker's own tools on the cached jars.
kafka_write_tools() {
  mkdir -p "$KAFKA_TOOLS"
  local log4j=$KAFKA_TOOLS/tools-log4j.properties
  if [[ ! -f $log4j ]]; then
    cat >"$log4j" <<'EOF'
# log4j configuration of the Kafka command-line tools: warnings on stderr only.
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  fi
  local name class
  while read -r name class; do
    [[ -x $KAFKA_TOOLS/$name ]] && grep -qF "$class" "$KAFKA_TOOLS/$name" && continue
    cat >"$KAFKA_TOOLS/$name.tmp" <<EOF
#!/usr/bin/env bash
# $name: Kafka's $class on the jars cached by scripts/stack.sh.
set -euo pipefail
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \\
  -Dlog4j.configuration="file:\$here/tools-log4j.properties" \\
  -cp "\$here/../libs/*" $class "\$@"
EOF
    chmod 755 "$KAFKA_TOOLS/$name.tmp"
    mv "$KAFKA_TOOLS/$name.tmp" "$KAFKA_TOOLS/$name"
  done <<'EOF'
kafka-topics org.apache.kafka.tools.TopicCommand
kafka-console-consumer org.apache.kafka.tools.consumer.ConsoleConsumer
kafka-console-producer kafka.tools.ConsoleProducer
kafka-consumer-groups org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
kafka-get-offsets org.apache.kafka.tools.GetOffsetShell
kafka-storage kafka.tools.StorageTool
EOF
}

kafka_write_config() {
  mkdir -p "$KAFKA_DIR/data"
  cp "$KAFKA_LOG4J_TEMPLATE" "$KAFKA_DIR/log4j.properties"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# written by scripts/stack.sh (regenerated at every start)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=168
EOF
}

kafka_java() { # kafka_java CLASS ARGS...: a Kafka class on the cached jars
  java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" -cp "$KAFKA_LIBS/*" "$@"
}

kafka_format_once() {
  [[ ! -f $KAFKA_DIR/formatted ]] || return 0
  local id
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding.
  id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  log "kafka: formatting KRaft storage (cluster id $id)"
  if ! kafka_java kafka.tools.StorageTool format --ignore-formatted -t "$id" \
    -c "$KAFKA_DIR/server.properties" </dev/null >>"$KAFKA_DIR/kafka.log" 2>&1; then
    show_tail "$KAFKA_DIR/kafka.log"
    die "kafka: storage format failed"
  fi
  printf '%s\n' "$id" >"$KAFKA_DIR/formatted"
}

kafka_launch() {
  rm -f "$KAFKA_DIR/pid"
  # setsid: own session, so a Ctrl+C meant for `make run` is handled by
  # `stop` (clean shutdown), not delivered to the broker directly.
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$KAFKA_DIR/pid" \
    java "${KAFKA_JAVA_OPTS[@]}" -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    </dev/null >>"$KAFKA_DIR/kafka.log" 2>&1 9>&- 8>&- &
}

kafka_wait_ready() {
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    if ! kafka_running_ours; then
      show_tail "$KAFKA_DIR/kafka.log" 40
      die "kafka: the broker exited during start-up"
    fi
    if kafka_local_answers; then return 0; fi
    sleep 0.2
  done
  show_tail "$KAFKA_DIR/kafka.log" 40
  die "kafka: no answer on 127.0.0.1:$KAFKA_PORT after 60 s"
}

# Creates the three topics that are missing (in parallel).
kafka_create_topics() {
  local bootstrap=$1 existing topic parts pid i rc=0
  local -a jobs=() names=()
  existing=$(kcat -b "$bootstrap" -L -m 5 2>/dev/null | sed -n 's/^ *topic "\([^"]*\)".*/\1/p')
  while read -r topic parts; do
    if grep -qxF -- "$topic" <<<"$existing"; then continue; fi
    log "kafka: creating topic $topic ($parts partitions)"
    "$KAFKA_TOOLS/kafka-topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
      --topic "$topic" --partitions "$parts" --replication-factor 1 \
      </dev/null >"$KAFKA_DIR/topic-$topic.log" 2>&1 9>&- &
    jobs+=("$!")
    names+=("$topic")
  done <<EOF
$KAFKA_INITIATE_CALL_TOPIC 3
$KAFKA_CALLBACK_TOPIC 3
$KAFKA_DLQ_TOPIC 1
EOF
  for i in "${!jobs[@]}"; do
    pid=${jobs[$i]}
    if ! wait "$pid"; then
      show_tail "$KAFKA_DIR/topic-${names[$i]}.log"
      warn "kafka: could not create topic ${names[$i]}"
      rc=1
    fi
  done
  ((rc == 0)) || die "kafka: topic creation failed"
}

start_kafka() {
  if [[ $KAFKA_MODE == external ]]; then
    kafka_answers "$KAFKA_BOOTSTRAP_SERVERS" ||
      die "kafka: external brokers $KAFKA_BOOTSTRAP_SERVERS do not answer"
    log "kafka: external brokers $KAFKA_BOOTSTRAP_SERVERS answer"
    return
  fi
  local addr=127.0.0.1:$KAFKA_PORT
  kafka_ensure_jars
  kafka_write_tools
  if kafka_running_ours; then
    log "kafka: already running on $addr (pid $(pid_of "$KAFKA_DIR/pid")), reusing it"
  elif kafka_local_answers; then
    warn "kafka: $addr answers but is not this stack's broker; reusing it as it is"
  else
    port_free kafka "$KAFKA_PORT"
    port_free "kafka controller" "$KAFKA_CONTROLLER_PORT"
    kafka_write_config
    kafka_format_once
    log "kafka: starting broker on $addr (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
    kafka_launch
    wait_for 10 test -s "$KAFKA_DIR/pid" || die "kafka: the broker did not start (no pid)"
    record_started kafka
    kafka_wait_ready
    log "kafka: broker ready on $addr"
  fi
  kafka_create_topics "$addr"
}

stop_kafka() {
  [[ $KAFKA_MODE == local ]] || return 0
  if ! kafka_running_ours; then
    log "kafka: not running"
    return 0
  fi
  log "kafka: stopping (127.0.0.1:$KAFKA_PORT)"
  kill_and_wait "$KAFKA_DIR/pid" java "$KAFKA_DIR/server.properties" 30 kafka
}

status_kafka() {
  if [[ $KAFKA_MODE == external ]]; then
    if kafka_answers "$KAFKA_BOOTSTRAP_SERVERS"; then
      printf 'kafka     external  %s (reachable)\n' "$KAFKA_BOOTSTRAP_SERVERS"
      return 0
    fi
    printf 'kafka     external  %s (unreachable)\n' "$KAFKA_BOOTSTRAP_SERVERS"
    return 1
  fi
  if kafka_running_ours; then
    printf 'kafka     running   127.0.0.1:%s (pid %s, dir %s)\n' "$KAFKA_PORT" \
      "$(pid_of "$KAFKA_DIR/pid")" "$KAFKA_DIR"
  elif kafka_local_answers; then
    printf 'kafka     running   127.0.0.1:%s (not this stack'"'"'s broker)\n' "$KAFKA_PORT"
  else
    printf 'kafka     stopped   127.0.0.1:%s\n' "$KAFKA_PORT"
    return 1
  fi
}

# --------------------------------------------------------------- commands ---

# run_parallel ACTION NAME...: ACTION_NAME for each NAME in a subshell of its
# own; prints the names that failed, returns 1 if any did.
run_parallel() {
  local action=$1 name rc=0
  shift
  local -A pids=()
  for name in "$@"; do
    ("${action}_$name") &
    pids[$name]=$!
  done
  for name in "$@"; do
    if ! wait "${pids[$name]}"; then
      printf '%s\n' "$name" >>"$VAR/.failed.$$"
      rc=1
    fi
  done
  return "$rc"
}

cmd_start() {
  local -a names=("$@") name
  if ((${#names[@]} == 0)); then names=("${SERVERS[@]}"); fi
  for name in "${names[@]}"; do
    [[ " ${SERVERS[*]} " == *" $name "* ]] || die "usage: $0 start [postgres|redis|kafka]..."
  done
  lock_state_dir
  local t0=$SECONDS
  log "start: state dir $VAR"
  rm -f "$VAR/.failed.$$"
  if ! run_parallel start "${names[@]}"; then
    local failed
    failed=$(tr '\n' ' ' <"$VAR/.failed.$$")
    rm -f "$VAR/.failed.$$"
    if [[ -s $STARTED_FILE ]]; then
      warn "servers started so far stay up: scripts/stack.sh stop stops them"
    fi
    die "start failed: ${failed% }"
  fi
  log "start: all servers ready ($((SECONDS - t0)) s)"
}

cmd_stop() {
  local all=0 name
  case "${1:-}" in
    "") ;;
    --all) all=1 ;;
    *) die "usage: $0 stop [--all]" ;;
  esac
  [[ -d $VAR ]] || {
    log "stop: nothing to stop ($VAR does not exist)"
    return 0
  }
  lock_state_dir
  local -a names=()
  if ((all)); then
    names=("${SERVERS[@]}")
  elif [[ -s $STARTED_FILE ]]; then
    for name in "${SERVERS[@]}"; do
      if grep -qxF "$name" "$STARTED_FILE"; then names+=("$name"); fi
    done
  fi
  if ((${#names[@]} == 0)); then
    log "stop: nothing to stop (no server was started here by stack.sh start; stop --all stops them all)"
    rm -f "$STARTED_FILE"
    return 0
  fi
  rm -f "$VAR/.failed.$$"
  if ! run_parallel stop "${names[@]}"; then
    mv "$VAR/.failed.$$" "$STARTED_FILE"
    die "stop failed: $(tr '\n' ' ' <"$STARTED_FILE")"
  fi
  rm -f "$STARTED_FILE"
  log "stop: done"
}

cmd_status() {
  local rc=0
  status_postgres || rc=1
  status_redis || rc=1
  status_kafka || rc=1
  return "$rc"
}

cmd_env() {
  printf 'CCM_VAR_DIR=%s\n' "$VAR"
  if [[ $PG_MODE == external ]]; then
    printf 'POSTGRES=external %s\n' "$(pg_external_address)"
  else
    printf 'POSTGRES=local 127.0.0.1:%s data=%s\n' "$DB_PORT" "$PG_DATA"
  fi
  printf 'DB_HOST=%s\nDB_PORT=%s\nDB_NAME=%s\nDB_USER=%s\n' "$DB_HOST" "$DB_PORT" "$DB_NAME" "$DB_USER"
  printf 'DB_PASSWORD=%s\n' "$([[ -n $DB_PASSWORD ]] && echo '(set)' || echo '(empty)')"
  printf 'REDIS=%s %s:%s\n' "$REDIS_MODE" "$REDIS_HOST" "$REDIS_PORT"
  printf 'KAFKA=%s %s' "$KAFKA_MODE" "$KAFKA_BOOTSTRAP_SERVERS"
  if [[ $KAFKA_MODE == local ]]; then printf ' controller=127.0.0.1:%s' "$KAFKA_CONTROLLER_PORT"; fi
  printf '\nKAFKA_TOPICS=%s %s %s\n' "$KAFKA_INITIATE_CALL_TOPIC" "$KAFKA_CALLBACK_TOPIC" "$KAFKA_DLQ_TOPIC"
  printf 'KAFKA_TOOLS=%s\n' "$KAFKA_TOOLS"
}

cmd_clean() {
  cmd_stop --all
  exec 9>&-
  local base=$PG_BASE
  if [[ $base == /tmp/ccm-pg-* ]]; then rm -rf "$base"; fi
  if [[ $PG_SOCK == /tmp/ccm-pgsock-* ]]; then rm -rf "$PG_SOCK"; fi
  rm -rf "$VAR"
  log "clean: removed $VAR"
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

main() {
  local cmd=${1:-}
  [[ -n $cmd ]] || {
    usage >&2
    exit 2
  }
  shift
  case "$cmd" in
    -h | --help | help)
      usage
      return 0
      ;;
    start | stop | status | env | clean) ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
  load_config
  case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    clean) cmd_clean ;;
  esac
}

main "$@"
