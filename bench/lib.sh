# Shared by the bench scripts: logging, the processes a script starts (stopped on exit, by PID
# only), free loopback ports, readiness polling, RSS and descriptor counts, release builds.
# Source it after setting PREFIX (the log prefix) and READY_DEADLINE (seconds).

log() { printf '[%s] %s\n' "$PREFIX" "$*" >&2; }
die() {
  printf '[%s] FAIL: %s\n' "$PREFIX" "$*" >&2
  exit 1
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-$PREFIX.XXXXXX")"
PIDS=()

# stop_pid PID: TERM, wait up to 5 s, then KILL.
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# rss_kib PID: resident memory in KiB, or nothing if the process is gone.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
# fds PID: open file descriptors.
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# threads PID
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# wait_http NAME PID URL [curl args...]: poll until URL answers any HTTP status, or fail.
wait_http() {
  local name="$1" pid="$2" url="$3" code deadline=$((SECONDS + READY_DEADLINE))
  shift 3
  while :; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup; its log:
$(cat "$TMP/$name.log" 2>/dev/null)"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != 000 ]] && return 0
    ((SECONDS < deadline)) || die "$name did not answer at $url within ${READY_DEADLINE}s"
    sleep 0.05
  done
}

# need CMD DEBIAN_PACKAGE: install it with apt-get when root, else fail naming it.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "$1 not found; installing $2 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1 || die "$1 is required (Debian: apt-get install $2)"
}

# build_release PACKAGE...: cargo build --release unless NO_BUILD=1; sets TARGET_DIR.
build_release() {
  if [[ "${NO_BUILD:-0}" != 1 ]]; then
    log "building release binaries ($*)"
    local args=()
    for p in "$@"; do args+=(-p "$p"); done
    (cd "$ROOT" && cargo build --release -q "${args[@]}") || die "release build failed"
  fi
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
}
