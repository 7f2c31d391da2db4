#!/usr/bin/env bash
# RSS under load: an embedded keyrelay (release build) in front of the mock, at full load with
# wrk for RSS_SECONDS, keyrelay's resident memory sampled from /proc every RSS_INTERVAL seconds.
# Prints the series and the growth from the first sample at or after second 20 to the last;
# exits non-zero if that growth is over RSS_MAX_GROWTH_KIB (2 MiB), or if the load failed.
# Loopback only; stops only the processes it started. Usage: bash bench/rss.sh
#
# Knobs (environment): RSS_SECONDS (180), RSS_INTERVAL (5), RSS_BASE_SECOND (20),
# RSS_MAX_GROWTH_KIB (2048), RSS_CONNECTIONS (64), RSS_THREADS (2), RSS_KEYS (4),
# RSS_NO_BUILD (0; 1 = use the binaries in ${CARGO_TARGET_DIR:-target}/release as they are).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${RSS_SECONDS:-180}"
INTERVAL="${RSS_INTERVAL:-5}"
BASE_SECOND="${RSS_BASE_SECOND:-20}"
MAX_GROWTH_KIB="${RSS_MAX_GROWTH_KIB:-2048}"
CONNS="${RSS_CONNECTIONS:-64}"
THREADS="${RSS_THREADS:-2}"
KEYS="${RSS_KEYS:-4}"
NO_BUILD="${RSS_NO_BUILD:-0}"
READY_DEADLINE=30 # seconds for a process to answer

log() { printf '[rss] %s\n' "$*" >&2; }
die() {
  printf '[rss] FAIL: %s\n' "$*" >&2
  exit 1
}

for v in DURATION INTERVAL BASE_SECOND MAX_GROWTH_KIB CONNS THREADS KEYS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((INTERVAL > 0 && CONNS >= THREADS && THREADS > 0 && KEYS > 0)) ||
  die "RSS_INTERVAL, RSS_THREADS and RSS_KEYS must be > 0, RSS_CONNECTIONS >= RSS_THREADS"
((DURATION > BASE_SECOND)) || die "RSS_SECONDS must be more than RSS_BASE_SECOND ($BASE_SECOND)"

# ---------------------------------------------------------------- tools
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required (to pick free ports)"
if ! command -v wrk >/dev/null 2>&1; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "wrk not found; installing it with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
  fi
  command -v wrk >/dev/null 2>&1 || die "wrk is required (Debian: apt-get install wrk)"
fi

if [[ "$NO_BUILD" != 1 ]]; then
  log "building release binaries (cargo build --release -p keyrelay -p keyrelay-mock)"
  (cd "$ROOT" && cargo build --release -q -p keyrelay -p keyrelay-mock) || die "release build failed"
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
KEYRELAY="$TARGET_DIR/release/keyrelay"
MOCK="$TARGET_DIR/release/keyrelay-mock"
[[ -x "$KEYRELAY" && -x "$MOCK" ]] || die "$KEYRELAY or $MOCK not found (build them or unset RSS_NO_BUILD)"

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-rss.XXXXXX")"
PIDS=()

stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
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

# rss_kib PID: resident memory in KiB (VmRSS), or nothing if the process is gone.
rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

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

TOKEN="rss-client-token-$$-$RANDOM"
MOCK_PORT="$(free_port)"
"$MOCK" "127.0.0.1:$MOCK_PORT" >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http mock "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" \
  -X POST -H "Authorization: Bearer sk-rss-direct" -H 'Content-Type: application/json' --data '{}'

KR_PORT="$(free_port)"
cat >"$TMP/rss.toml" <<EOF
[server]
listen = "127.0.0.1:$KR_PORT"

[admin]
listen = "127.0.0.1:$(free_port)"

[[clients]]
name = "rss"
token = "env:KEYRELAY_RSS_TOKEN"

[[providers]]
name = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
route = "/v1"
rpm = 100000000
keys = "env:RSS_OPENAI_KEY_*"
EOF
ENVS=(KEYRELAY_LOG=warn "KEYRELAY_RSS_TOKEN=$TOKEN")
for ((i = 1; i <= KEYS; i++)); do ENVS+=("RSS_OPENAI_KEY_$i=sk-rss-key-$i"); done
# From its own temp dir, so no .env of the caller's is picked up.
(cd "$TMP" && exec env "${ENVS[@]}" "$KEYRELAY" --config "$TMP/rss.toml") >"$TMP/keyrelay.log" 2>&1 &
KR_PID=$!
PIDS+=("$KR_PID")
URL="http://127.0.0.1:$KR_PORT/v1/chat/completions"
wait_http keyrelay "$KR_PID" "$URL"

BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello."}]}'
code="$(curl -sS -o "$TMP/verify.out" -w '%{http_code}' --max-time 10 -X POST \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data "$BODY" "$URL")" ||
  die "first request failed"
[[ "$code" == 200 ]] || die "first request answered $code: $(head -c 500 "$TMP/verify.out")"
cat >"$TMP/load.lua" <<EOF
wrk.method = "POST"
wrk.body = [[$BODY]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
EOF

# ---------------------------------------------------------------- load and samples
log "load: wrk -t $THREADS -c $CONNS -d ${DURATION}s on keyrelay (pid $KR_PID); RSS every ${INTERVAL}s"
wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 10s -s "$TMP/load.lua" "$URL" >"$TMP/wrk.out" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
start=$SECONDS
printf '%8s %12s\n' second rss_kib
printf '%8s %12s\n' 0 "$(rss_kib "$KR_PID")"
base="" base_at="" last="" last_at="" peak=0
while kill -0 "$WRK_PID" 2>/dev/null; do
  sleep "$INTERVAL"
  kill -0 "$WRK_PID" 2>/dev/null || break
  at=$((SECONDS - start))
  rss="$(rss_kib "$KR_PID")"
  [[ -n "$rss" ]] || die "keyrelay died under load; its log:
$(tail -n 40 "$TMP/keyrelay.log")"
  printf '%8s %12s\n' "$at" "$rss"
  if [[ -z "$base" && $at -ge $BASE_SECOND ]]; then base="$rss" base_at="$at"; fi
  last="$rss" last_at="$at"
  if ((rss > peak)); then peak="$rss"; fi
done
wait "$WRK_PID" || die "wrk failed: $(cat "$TMP/wrk.out")"

rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$TMP/wrk.out")"
non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$TMP/wrk.out")"
[[ -n "$rps" ]] || die "could not read wrk's output: $(cat "$TMP/wrk.out")"
[[ -z "$non2xx" ]] || die "$non2xx non-2xx responses: the load was not served"
[[ -n "$base" && "$last_at" -gt "$base_at" ]] || die "too few samples after second $BASE_SECOND"
growth=$((last - base))
printf 'requests/s %s over %ss (-t %s -c %s)\n' "$rps" "$DURATION" "$THREADS" "$CONNS"
printf 'rss at second %s: %s KiB; at second %s: %s KiB; peak %s KiB\n' "$base_at" "$base" "$last_at" "$last" "$peak"
printf 'growth from second %s to %s: %s KiB (limit %s KiB)\n' "$base_at" "$last_at" "$growth" "$MAX_GROWTH_KIB"
((growth <= MAX_GROWTH_KIB)) || die "keyrelay's RSS grew by $growth KiB under steady load"
log "ok: RSS flat within $MAX_GROWTH_KIB KiB"
