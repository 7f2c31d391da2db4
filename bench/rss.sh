#!/usr/bin/env bash
# RSS under load: an embedded keyrelay (release build) in front of the mock, at full load with
# wrk for RSS_SECONDS, keyrelay's resident memory sampled from /proc every RSS_INTERVAL seconds.
# Prints the series and the growth from the first sample at or after second 20 to the last;
# exits non-zero if that growth is over RSS_MAX_GROWTH_KIB (2 MiB), or if the load failed.
# Loopback only; stops only the processes it started. Usage: bash bench/rss.sh
#
# Knobs (environment): RSS_SECONDS (180), RSS_INTERVAL (5), RSS_BASE_SECOND (20),
# RSS_MAX_GROWTH_KIB (2048), RSS_CONNECTIONS (64), RSS_THREADS (2), RSS_STREAM (false; true =
# 20-chunk SSE streams), RSS_NO_BUILD (0; 1 = use the binaries in
# ${CARGO_TARGET_DIR:-target}/release as they are), KR_FEATURES (1 = affinity, a tenant, limits
# and token metering on, as BENCH_FEATURES in run.sh; streams then ask for usage).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${RSS_SECONDS:-180}"
INTERVAL="${RSS_INTERVAL:-5}"
BASE_SECOND="${RSS_BASE_SECOND:-20}"
MAX_GROWTH_KIB="${RSS_MAX_GROWTH_KIB:-2048}"
CONNS="${RSS_CONNECTIONS:-64}"
THREADS="${RSS_THREADS:-2}"
STREAM="${RSS_STREAM:-false}"
RSS_NO_BUILD="${RSS_NO_BUILD:-0}"
READY_DEADLINE=30 # seconds for a process to answer
PREFIX=rss
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION INTERVAL BASE_SECOND MAX_GROWTH_KIB CONNS THREADS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((INTERVAL > 0 && CONNS >= THREADS && THREADS > 0)) ||
  die "RSS_INTERVAL and RSS_THREADS must be > 0, RSS_CONNECTIONS >= RSS_THREADS"
[[ "$STREAM" == true || "$STREAM" == false ]] || die "RSS_STREAM must be true or false, got '$STREAM'"
((DURATION > BASE_SECOND)) || die "RSS_SECONDS must be more than RSS_BASE_SECOND ($BASE_SECOND)"

# ---------------------------------------------------------------- tools
need curl curl
need python3 python3
need wrk wrk
NO_BUILD="$RSS_NO_BUILD" build_release keyrelay keyrelay-mock
for b in keyrelay keyrelay-mock; do
  [[ -x "$TARGET_DIR/release/$b" ]] || die "$TARGET_DIR/release/$b not found (build it or unset RSS_NO_BUILD)"
done

start_mock
# The bench keyrelay of run.sh (three keys; with KR_FEATURES=1 affinity, a tenant, limits and
# token metering on), on the embedded store.
start_keyrelay kr "" ""
URL="$KR_URL"
STREAM_OPTIONS=""
if [[ "$STREAM" == true && "${KR_FEATURES:-0}" == 1 ]]; then
  STREAM_OPTIONS=',"stream_options":{"include_usage":true}'
fi
BODY="{\"model\":\"mock\",\"stream\":$STREAM$STREAM_OPTIONS,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}"
code="$(curl -sS -o "$TMP/verify.out" -w '%{http_code}' --max-time 10 -X POST \
  -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' --data "$BODY" "$URL")" ||
  die "first request failed"
[[ "$code" == 200 ]] || die "first request answered $code: $(head -c 500 "$TMP/verify.out")"
cat >"$TMP/load.lua" <<EOF
wrk.method = "POST"
wrk.body = [[$BODY]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $BENCH_TOKEN"
wrk.headers["x-mock-chunks"] = "20"
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
$(tail -n 40 "$TMP/kr.log")"
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
