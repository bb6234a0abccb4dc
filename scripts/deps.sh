#!/usr/bin/env bash
# Installs the Debian 12 packages ccm needs (build, tests and the private
# PostgreSQL/Redis/Kafka servers of scripts/stack.sh) when any is missing.
# A quick no-op when everything is present.
#
#   scripts/deps.sh            install what is missing
#   scripts/deps.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libgrpc-dev grpc-proto
  libpq-dev libhiredis-dev librdkafka-dev libyaml-dev libmicrohttpd-dev
  libjansson-dev libcurl4-openssl-dev libcmocka-dev libicu-dev libssl-dev
  clang-format clang libclang-rt-14-dev
  redis-server redis-tools kcat wrk
  python3-grpcio python3-grpc-tools python3-protobuf
  postgresql-15 postgresql-client-15
  openjdk-17-jre-headless maven
  curl procps iproute2
)

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0

log() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# Prints the packages of PACKAGES that are not fully installed, one per line.
missing_packages() {
  local -A installed=()
  local name status
  # One dpkg-query call for all packages: unknown ones go to stderr and make it
  # exit 1, which is expected here.
  while read -r name status; do
    if [[ $status == "install ok installed" ]]; then installed[$name]=1; fi
  done < <(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    if [[ -z ${installed[$pkg]:-} ]]; then printf '%s\n' "$pkg"; fi
  done
}

# Keeps Debian's maintainer scripts from starting system services (PostgreSQL
# on 5432, Redis on 6379) during the install: ccm runs its own private servers.
# An existing policy-rc.d (Docker images have one) is left untouched.
block_service_start() {
  if [[ ! -e $POLICY_RC ]]; then
    printf '#!/bin/sh\n# temporary, written by ccm scripts/deps.sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
    POLICY_RC_OURS=1
  fi
}

unblock_service_start() {
  if [[ $POLICY_RC_OURS == 1 ]]; then
    rm -f "$POLICY_RC"
    POLICY_RC_OURS=0
  fi
}

install_packages() {
  local -a pkgs=("$@")
  [[ $(id -u) == 0 ]] || die "missing packages (${pkgs[*]}) and not root: run 'sudo $0'"
  log "deps: installing ${#pkgs[@]} missing package(s): ${pkgs[*]}"
  trap unblock_service_start EXIT
  block_service_start
  log "deps: apt-get update"
  if ! apt-get update -q >/tmp/ccm-apt-update.log 2>&1; then
    tail -n 20 /tmp/ccm-apt-update.log >&2
    die "apt-get update failed (log: /tmp/ccm-apt-update.log)"
  fi
  log "deps: apt-get install (log: /tmp/ccm-apt-install.log)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${pkgs[@]}" >/tmp/ccm-apt-install.log 2>&1; then
    tail -n 30 /tmp/ccm-apt-install.log >&2
    die "apt-get install failed (log: /tmp/ccm-apt-install.log)"
  fi
  unblock_service_start
  trap - EXIT
}

main() {
  local check_only=0
  case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      return 0
      ;;
    *) die "unknown argument '$1' (usage: $0 [--check])" ;;
  esac

  local -a missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if ((check_only)); then
    log "deps: missing: ${missing[*]}"
    return 1
  fi
  install_packages "${missing[@]}"

  mapfile -t missing < <(missing_packages)
  ((${#missing[@]} == 0)) || die "still missing after install: ${missing[*]}"
  log "deps: all packages installed"
}

main "$@"
