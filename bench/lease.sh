#!/usr/bin/env bash
# Leased shares on the Redis store, A/B: the release keyrelay on one redis-server of its own,
# with lease_time "0s" (one script call per request) and with leases, alternating over
# LEASE_ROUNDS rounds of wrk chat (c=64): req/s, Redis script calls per request (INFO
# commandstats), redis-server's and keyrelay's CPU per request (/proc). Prints each run and
# the medians. Usage: bash bench/lease.sh   (NO_BUILD=1 to use the release binaries as built)
#
# Measured here (2 cores shared with other builds, load ~18; 3 rounds of 10 s, medians):
#   lease_time 0s:    12,755 req/s, 1.0003 script calls/request, redis 12.2 us/req, keyrelay 50.7
#   lease_time 250ms: 14,327 req/s, 0.0157 script calls/request, redis  1.6 us/req, keyrelay 45.5
# Earlier runs on the same load swung 4.6k-12k req/s per run; CPU per request is steadier.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=lease
READY_DEADLINE=30
ROUNDS="${LEASE_ROUNDS:-3}"
SECS="${LEASE_SECONDS:-10}"
LEASE="${LEASE_TIME:-250ms}"
CONNS="${LEASE_CONNECTIONS:-64}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

need wrk wrk
need redis-server redis-server
build_release keyrelay keyrelay-mock
start_redis
start_mock

BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello."}]}'
cat >"$TMP/chat.lua" <<EOF
wrk.method = "POST"
wrk.body = [[$BODY]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $BENCH_TOKEN"
EOF

# cpu_ticks PID: user + system clock ticks so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
evalsha() {
  redis-cli -p "$REDIS_PORT" INFO commandstats |
    awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 }' | tr -d '\r'
}

# run MODE LEASE_TIME: one keyrelay with that lease_time, warmed up, then one measured wrk run.
run() {
  local mode="$1" lease="$2" r0 k0 r1 k1 calls out rps reqs
  # The store section is the config's last: its url line carries the other store settings.
  # A command timeout far above any stall of a loaded machine, so no run is served degraded
  # (on local state, with fewer Redis calls) behind the comparison's back.
  start_keyrelay "kr-$mode" "redis://127.0.0.1:$REDIS_PORT\"
command_timeout = \"2s\"
connect_timeout = \"2s\"
lease_time = \"$lease" ""
  wrk -t2 -c"$CONNS" -d2s -s "$TMP/chat.lua" "$KR_URL" >/dev/null 2>&1
  redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
  r0="$(cpu_ticks "$REDIS_PID")" k0="$(cpu_ticks "$KR_PID")"
  out="$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$TMP/chat.lua" "$KR_URL")"
  r1="$(cpu_ticks "$REDIS_PID")" k1="$(cpu_ticks "$KR_PID")"
  calls="$(evalsha)"
  rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
  reqs="$(awk '/requests in/ { print $1 }' <<<"$out")"
  grep -q "Non-2xx" <<<"$out" && die "non-2xx answers in $mode: $out"
  stop_pid "$KR_PID"
  if grep -q "unavailable" "$TMP/kr-$mode.log"; then die "$mode: redis went degraded during the run"; fi
  # ticks are 1/100 s: CPU µs per request = ticks * 10000 / requests
  awk -v m="$mode" -v rps="$rps" -v c="${calls:-0}" -v n="$reqs" -v rt=$((r1 - r0)) -v kt=$((k1 - k0)) \
    'BEGIN { printf "%s %.0f %.4f %.1f %.1f\n", m, rps, c / n, rt * 10000 / n, kt * 10000 / n }'
}

log "rounds: $ROUNDS x (off, on) of ${SECS}s, c=$CONNS, lease_time $LEASE"
echo "mode req/s script_calls_per_request redis_cpu_us_per_request keyrelay_cpu_us_per_request" >"$TMP/runs"
for ((i = 1; i <= ROUNDS; i++)); do
  run off 0s | tee -a "$TMP/runs" >&2
  run on "$LEASE" | tee -a "$TMP/runs" >&2
done
echo "# each run"
cat "$TMP/runs"
echo "# medians"
for mode in off on; do
  awk -v m="$mode" '$1 == m' "$TMP/runs" | sort -k2 -n | awk -v m="$mode" '
    { rps[NR] = $2; c[NR] = $3; r[NR] = $4; k[NR] = $5 }
    END {
      n = NR; asort(c); asort(r); asort(k); mid = int((n + 1) / 2)
      printf "%s req/s %s  calls/req %s  redis us/req %s  keyrelay us/req %s\n", m, rps[mid], c[mid], r[mid], k[mid]
    }'
done
