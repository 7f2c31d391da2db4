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

# start_redis: a redis-server on REDIS_PORT (picked on the first call, kept for restarts), no
# persistence; sets REDIS_PID.
start_redis() {
  REDIS_PORT="${REDIS_PORT:-$(free_port)}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP" >>"$TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local deadline=$((SECONDS + READY_DEADLINE))
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "redis-server did not start on $REDIS_PORT"
    sleep 0.05
  done
}

# start_mock: the release mock on a free port; sets MOCK_PORT and MOCK_URL.
start_mock() {
  MOCK_PORT="$(free_port)"
  MOCK_URL="http://127.0.0.1:$MOCK_PORT"
  "$TARGET_DIR/release/keyrelay-mock" "127.0.0.1:$MOCK_PORT" >"$TMP/mock.log" 2>&1 &
  PIDS+=("$!")
  wait_http mock "$!" "$MOCK_URL/__mock/stats"
}

BENCH_TOKEN="bench-token-$$-$RANDOM"
BENCH_KEYS=(sk-bench-key-1 sk-bench-key-2 sk-bench-key-3)

# start_keyrelay NAME STORE_URL PROVIDER_EXTRA [KEYRELAY_ARGS...]: a release keyrelay in front
# of the mock (x-mock-* headers passed, three keys, client token BENCH_TOKEN), on Redis when
# STORE_URL is set, logging at KR_LOG (warn); sets KR_PID, KR_URL and ADMIN_URL.
start_keyrelay() {
  local name="$1" store="$2" extra="$3" port admin
  shift 3
  port="$(free_port)" admin="$(free_port)"
  cat >"$TMP/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "30s"

[upstream]
pass_headers = ["x-mock-*"]

[admin]
listen = "127.0.0.1:$admin"

[[clients]]
name = "bench"
token = "env:BENCH_TOKEN"

[[providers]]
name = "openai"
base_url = "$MOCK_URL/v1"
route = "/v1"
rpm = 100000000
keys = "env:BENCH_KEY_*"
$extra
TOML
  if [[ -n "$store" ]]; then printf '\n[store]\nurl = "%s"\n' "$store" >>"$TMP/$name.toml"; fi
  # From its own temp dir, so no .env of the caller's is picked up.
  (cd "$TMP" && exec env KEYRELAY_LOG="${KR_LOG:-warn}" BENCH_TOKEN="$BENCH_TOKEN" \
    BENCH_KEY_1="${BENCH_KEYS[0]}" BENCH_KEY_2="${BENCH_KEYS[1]}" BENCH_KEY_3="${BENCH_KEYS[2]}" \
    "$TARGET_DIR/release/keyrelay" "$@" --config "$TMP/$name.toml") >"$TMP/$name.log" 2>&1 &
  KR_PID=$!
  PIDS+=("$KR_PID")
  KR_URL="http://127.0.0.1:$port/v1/chat/completions"
  ADMIN_URL="http://127.0.0.1:$admin"
  wait_http "$name" "$KR_PID" "$ADMIN_URL/healthz"
}
