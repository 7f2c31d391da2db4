#!/usr/bin/env bash
# Upstream faults (issue 13, figures 2-7), each against the release binaries on loopback:
#  2. 1,000 streams cut upstream: every client sees a failure, none looks complete, exactly one
#     upstream attempt each.
#  3. 500 streams the client leaves mid-way: every upstream stream closed within 1 s.
#  4. 1,000 POSTs the provider reads and drops: exactly 1,000 receipts (no replay); with
#     retry_after_send = true the replays stay within the retry budget.
#  5. 1,000 requests every key refuses (403) interleaved with 1,000 chat requests: every chat
#     request succeeds and /readyz stays 200.
#  6. A 429 storm (every key 429 with Retry-After: 20) at 200 requests/s: at most one attempt per
#     key in the window, then keyrelay's own 429 within 5 ms with no upstream call, and a success
#     within 1 s of the hint's end.
#  7. 10 reloads (SIGHUP) under load with 0 failures; SIGTERM with 64 streams in flight: all of
#     them finish, none cut.
# Prints each figure; exits non-zero when a target is missed. Stops only what it started.
# Usage: bash bench/faults.sh   Knobs: NO_BUILD (1: as built).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=faults
READY_DEADLINE=30
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
need curl curl
need python3 python3
build_release keyrelay keyrelay-mock keyrelay-loadgen
LOADGEN="$TARGET_DIR/release/keyrelay-loadgen"

start_mock
TOKEN="$BENCH_TOKEN"
KEYS=("${BENCH_KEYS[@]}")

received() { curl -s "$MOCK_URL/__mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"])'; }
open_streams() { curl -s "$MOCK_URL/__mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["open_streams"])'; }
attempts() { curl -s "$ADMIN_URL/metrics" | awk '/^keyrelay_upstream_attempts_total/ { n += $2 } END { print n+0 }'; }
load() { LOADGEN_TOKEN="$TOKEN" "$LOADGEN" --url "$KR_URL" "$@"; }
ok=1
miss() { log "missed: $*"; ok=0; }

start_keyrelay main "" ""

# 2. Cut streams.
before="$(received)" a0="$(attempts)"
load --requests 1000 --concurrency 64 --mix cut=1 >"$TMP/cut.out" || miss "a cut stream looked complete or failed otherwise: $(grep '^unexpected' "$TMP/cut.out" | head -2)"
got=$(($(received) - before)) tried=$(($(attempts) - a0))
printf '2. cut streams: %s, %s unexpected; upstream receipts %s, attempts %s\n' 1000 "$(awk '/^total/ {print $4}' "$TMP/cut.out")" "$got" "$tried"
((got == 1000 && tried == 1000)) || miss "cut streams took $got receipts / $tried attempts"

# 3. Client disconnects.
load --requests 500 --concurrency 64 --mix disconnect=1 >"$TMP/disconnect.out" || miss "disconnect run: $(grep '^unexpected' "$TMP/disconnect.out" | head -2)"
left="$(date +%s%3N)"
until [[ "$(open_streams)" == 0 ]]; do
  (($(date +%s%3N) - left < 5000)) || break
  sleep 0.02
done
closed_ms=$(($(date +%s%3N) - left))
printf '3. client disconnects: 500 streams, every upstream stream closed %s ms after the last client left\n' "$closed_ms"
((closed_ms <= 1000)) || miss "upstream streams still open after $closed_ms ms"

# 4. Read-then-drop.
before="$(received)"
load --requests 1000 --concurrency 64 --mix drop=1 >"$TMP/drop.out" || miss "read-then-drop: $(grep '^unexpected' "$TMP/drop.out" | head -2)"
got=$(($(received) - before))
printf '4. read-then-drop: 1000 POSTs, %s upstream receipts (default: no replay)\n' "$got"
((got == 1000)) || miss "read-then-drop took $got receipts"
main_pid="$KR_PID" main_url="$KR_URL" main_admin="$ADMIN_URL"
start_keyrelay replay "" "retry_after_send = true"
before="$(received)"
load --requests 1000 --concurrency 64 --mix drop=1 >"$TMP/replay.out" || true
got=$(($(received) - before))
# The budget: 20% of the last 10 s of requests, plus a floor of 10 per second over those 10 s.
budget=$((1000 / 5 + 10 * 10))
printf '   with retry_after_send = true: %s receipts, replays %s (budget %s)\n' "$got" "$((got - 1000))" "$budget"
((got - 1000 <= budget)) || miss "replays beyond the budget"
stop_pid "$KR_PID"
KR_PID="$main_pid" KR_URL="$main_url" ADMIN_URL="$main_admin"

# 5. A refused route beside chat.
load --requests 2000 --concurrency 64 --mix normal=1,refused=1 >"$TMP/refused.out" || miss "refused route: $(grep '^unexpected' "$TMP/refused.out" | head -2)"
ready="$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN_URL/readyz")"
printf '5. 1000 refused + 1000 chat: %s; /readyz %s\n' "$(grep '^kind' "$TMP/refused.out" | tr '\n' ';')" "$ready"
[[ "$ready" == 200 ]] || miss "/readyz answered $ready"

# 6. A 429 storm.
for k in "${KEYS[@]}"; do curl -s -X POST "$MOCK_URL/__mock/script?key=$k&fault=429%3D20" >/dev/null; done
before="$(received)"
storm_start="$(date +%s%3N)"
load --requests 5000 --concurrency 16 --rate 200 --mix normal=1 >"$TMP/storm.out" &
storm=$!
PIDS+=("$storm")
# The scripts go just before the hint ends, so the first attempt after it meets a willing key.
sleep 19
got=$(($(received) - before))
curl -s -X POST "$MOCK_URL/__mock/reset" >/dev/null
wait "$storm" || true
p99_local="$(awk '/^second / { s=$2+0; if (s >= 2 && s <= 18 && $8+0 > m) m=$8+0 } END { printf "%.2f", m+0 }' "$TMP/storm.out")"
first_ok="$(awk '/^second / { s=$2+0; if ($3+0 > $5+0 && s >= 19 && f == "") f=s } END { print f }' "$TMP/storm.out")"
printf '6. 429 storm: %s upstream attempts in the 20 s window (3 keys); keyrelay 429 p99 %s ms (worst second); first successes in second %s of the run (hint ends at 20)\n' "$got" "$p99_local" "${first_ok:-none}"
grep '^head latency' "$TMP/storm.out" | sed 's/^/   whole run, /'
((got <= 3 + 10)) || miss "$got upstream attempts during the storm"
p99_run="$(awk '/^head latency/ { print $7 }' "$TMP/storm.out")"
awk -v p="$p99_run" 'BEGIN { exit !(p <= 5) }' || miss "keyrelay's own 429 p99 $p99_run ms"
[[ -n "$first_ok" && "$first_ok" -le 21 ]] || miss "no success within 1 s of the hint's end"

# 7. Reloads and a drain under load.
load --requests 10000 --concurrency 64 --rate 800 --mix normal=70,stream=30 >"$TMP/reload.out" &
loadp=$!
PIDS+=("$loadp")
for i in $(seq 1 10); do sleep 1; kill -HUP "$KR_PID"; done
wait "$loadp" && reload_ok=1 || reload_ok=0
printf '7. 10 reloads under load: %s\n' "$(grep '^total' "$TMP/reload.out")"
((reload_ok == 1)) || miss "requests failed across reloads"
load --requests 64 --concurrency 64 --mix long=1 >"$TMP/drain.out" &
loadp=$!
PIDS+=("$loadp")
sleep 0.5
kill -TERM "$KR_PID"
wait "$loadp" && drain_ok=1 || drain_ok=0
wait "$KR_PID" 2>/dev/null && code=0 || code=$?
printf '   SIGTERM with 64 streams in flight: %s; keyrelay exit %s\n' "$(grep '^total' "$TMP/drain.out")" "$code"
((drain_ok == 1 && code == 0)) || miss "streams cut by the drain, or a bad exit"

((ok == 1)) || exit 1
log "ok: every target met"
