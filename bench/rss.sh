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
PREFIX=rss
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION INTERVAL BASE_SECOND MAX_GROWTH_KIB CONNS THREADS KEYS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((INTERVAL > 0 && CONNS >= THREADS && THREADS > 0 && KEYS > 0)) ||
  die "RSS_INTERVAL, RSS_THREADS and RSS_KEYS must be > 0, RSS_CONNECTIONS >= RSS_THREADS"
((DURATION > BASE_SECOND)) || die "RSS_SECONDS must be more than RSS_BASE_SECOND ($BASE_SECOND)"

# ---------------------------------------------------------------- tools
need curl curl
need python3 python3
need wrk wrk
build_release keyrelay keyrelay-mock
KEYRELAY="$TARGET_DIR/release/keyrelay"
MOCK="$TARGET_DIR/release/keyrelay-mock"
[[ -x "$KEYRELAY" && -x "$MOCK" ]] || die "$KEYRELAY or $MOCK not found (build them or unset RSS_NO_BUILD)"

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
