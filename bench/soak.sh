#!/usr/bin/env bash
# Soak (issue 13, figure 8): SOAK_ROUNDS rounds (5) of SOAK_REQUESTS (20,000) mixed requests
# (30% streams, 10% 429, 5% 5xx, 5% cut streams, 5% client disconnects, the rest chat) through
# a keyrelay on Redis, with one Redis outage (kill, restart 2 s later) in each round. After each
# round, once keyrelay reports no request in flight and no open stream, it samples keyrelay's
# RSS, open descriptors and threads. Exits non-zero when RSS drifts more than 8 MiB over rounds
# 2 to 5, threads grow past round 1's, descriptors grow past round 1's by more than the
# upstream keep-alive pool can hold (SOAK_CONCURRENCY idle connections), requests or streams
# stay open, or a request came out unexpected.
# Loopback only; stops only what it started. Usage: bash bench/soak.sh
#
# Knobs: SOAK_ROUNDS (5), SOAK_REQUESTS (20000), SOAK_CONCURRENCY (64), NO_BUILD (1: as built).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=soak
READY_DEADLINE=30
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

ROUNDS="${SOAK_ROUNDS:-5}"
REQUESTS="${SOAK_REQUESTS:-20000}"
CONCURRENCY="${SOAK_CONCURRENCY:-64}"
MIX="normal=45,stream=30,429=10,5xx=5,cut=5,disconnect=5"
need curl curl
need python3 python3
need redis-server redis-server
need redis-cli redis-tools
build_release keyrelay keyrelay-mock keyrelay-loadgen

start_redis
start_mock
start_keyrelay soak "redis://127.0.0.1:$REDIS_PORT/0" ""
TOKEN="$BENCH_TOKEN"

# metric NAME: its value in /metrics.
metric() { curl -s --max-time 2 "$ADMIN_URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
settle() {
  local deadline=$((SECONDS + 30))
  until [[ "$(metric keyrelay_in_flight_requests)" == 0 && "$(metric keyrelay_open_streams)" == 0 ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

printf '%6s %10s %12s %6s %8s %10s\n' round unexpected rss_kib fds threads seconds
ok=1
base_fds="" base_threads="" rss2="" rss_last=""
for ((r = 1; r <= ROUNDS; r++)); do
  start=$SECONDS
  LOADGEN_TOKEN="$TOKEN" "$TARGET_DIR/release/keyrelay-loadgen" \
    --url "$KR_URL" --requests "$REQUESTS" \
    --concurrency "$CONCURRENCY" --mix "$MIX" >"$TMP/round$r.out" 2>&1 &
  load=$!
  PIDS+=("$load")
  sleep 2
  kill -KILL "$REDIS_PID"
  wait "$REDIS_PID" 2>/dev/null || true
  sleep 2
  start_redis
  wait "$load" || true
  settle || { log "round $r: requests or streams still open"; ok=0; }
  unexpected="$(awk '/^total / { print $4 }' "$TMP/round$r.out")"
  rss="$(rss_kib "$KR_PID")" f="$(fds "$KR_PID")" t="$(threads "$KR_PID")"
  [[ -n "$rss" ]] || die "keyrelay died in round $r: $(tail -n 20 "$TMP/soak.log")"
  printf '%6s %10s %12s %6s %8s %10s\n' "$r" "${unexpected:-?}" "$rss" "$f" "$t" "$((SECONDS - start))"
  [[ "$unexpected" == 0 ]] || { log "round $r: $unexpected unexpected outcomes: $(grep '^unexpected' "$TMP/round$r.out" | head -3)"; ok=0; }
  if ((r == 1)); then base_fds="$f" base_threads="$t"; fi
  if ((r == 2)); then rss2="$rss"; fi
  rss_last="$rss"
  if ((r > 1)); then
    ((f <= base_fds + CONCURRENCY)) || { log "round $r: $f descriptors, round 1 had $base_fds"; ok=0; }
    ((t <= base_threads)) || { log "round $r: $t threads, round 1 had $base_threads"; ok=0; }
  fi
done
if [[ -n "$rss2" ]]; then
  drift=$((rss_last - rss2))
  printf 'RSS drift over rounds 2-%s: %s KiB (limit 8192)\n' "$ROUNDS" "$drift"
  ((drift <= 8192)) || { log "RSS drifted $drift KiB"; ok=0; }
fi
((ok == 1)) || exit 1
log "ok: every target met"
