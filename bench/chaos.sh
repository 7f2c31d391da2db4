#!/usr/bin/env bash
# Redis chaos (issue 13, figure 1): 20,000 mixed requests (70% chat, 30% streams) at
# concurrency 64 through a keyrelay on Redis, while Redis is killed and restarted, frozen
# (SIGSTOP) for 5 s and paused (CLIENT PAUSE) for 3 s. Prints: failed client requests, the p99
# of requests started during the faults, the most log lines of one kind in one second, and how
# long shared state took to return after each fault. Exits non-zero when a target is missed:
# 0 failures, p99 <= 1 s, <= 1 line per second per kind, reconverged within 2 s.
# Loopback only; stops only the processes it started. Usage: bash bench/chaos.sh
#
# Knobs: CHAOS_REQUESTS (20000), CHAOS_CONCURRENCY (64), CHAOS_RATE (700 requests/s, so the
# run spans the faults), NO_BUILD (1: use target/release as it is).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=chaos
READY_DEADLINE=30
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

REQUESTS="${CHAOS_REQUESTS:-20000}"
CONCURRENCY="${CHAOS_CONCURRENCY:-64}"
RATE="${CHAOS_RATE:-700}"
need curl curl
need python3 python3
need redis-server redis-server
need redis-cli redis-tools
build_release keyrelay keyrelay-mock keyrelay-loadgen

# ---------------------------------------------------------------- processes
start_redis
start_mock
KR_LOG=info start_keyrelay chaos "redis://127.0.0.1:$REDIS_PORT/0" "" --log-json
TOKEN="$BENCH_TOKEN"

# shared_within START_EPOCH_MS: ms until /readyz says the store is shared again.
store_state() { curl -s --max-time 1 "$ADMIN_URL/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("store",""))' 2>/dev/null || true; }
now_ms() { date +%s%3N; }
shared_within() {
  local from="$1" deadline=$((SECONDS + 20))
  until [[ "$(store_state)" == shared ]]; do
    ((SECONDS < deadline)) || { echo 99999; return; }
    sleep 0.05
  done
  echo $(($(now_ms) - from))
}
[[ "$(store_state)" == shared ]] || die "keyrelay is not on shared state at start: $(store_state)"

# ---------------------------------------------------------------- load and faults
log "load: $REQUESTS requests at concurrency $CONCURRENCY, $RATE/s; faults at 4 s, 11 s, 20 s"
LOADGEN_TOKEN="$TOKEN" "$TARGET_DIR/release/keyrelay-loadgen" --url "$KR_URL" \
  --requests "$REQUESTS" --concurrency "$CONCURRENCY" --rate "$RATE" --mix normal=70,stream=30 \
  >"$TMP/load.out" 2>"$TMP/load.err" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
t0=$SECONDS
at() { while ((SECONDS - t0 < $1)); do sleep 0.05; done; }

at 4
log "kill -9 redis-server"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
at 7
log "restart redis-server"
start_redis
back1="$(now_ms)"
conv1="$(shared_within "$back1")"
at 11
log "SIGSTOP redis-server for 5 s"
kill -STOP "$REDIS_PID"
at 16
kill -CONT "$REDIS_PID"
back2="$(now_ms)"
conv2="$(shared_within "$back2")"
at 20
log "CLIENT PAUSE 3000"
redis-cli -p "$REDIS_PORT" client pause 3000 all >/dev/null
back3=$(($(now_ms) + 3000))
at 23
conv3="$(shared_within "$back3")"
((conv3 < 0)) && conv3=0

wait "$LOAD_PID" && load_ok=1 || load_ok=0
cat "$TMP/load.out"

# ---------------------------------------------------------------- figures
failed="$(awk '/^total / { print $4 }' "$TMP/load.out")"
p99_faults="$(awk '/^second / { s=$2+0; sub(":","",$2); if (s >= 4 && s <= 24 && $8+0 > m) m=$8+0 } END { printf "%.1f", m+0 }' "$TMP/load.out")"
lines_per_second="$(python3 - "$TMP/chaos.log" <<'PY'
import collections, json, sys
counts = collections.Counter()
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("level") not in ("WARN", "ERROR"):
        continue
    msg = e.get("fields", {}).get("message", "")
    counts[(e.get("timestamp", "")[:19], msg)] += 1
print(max(counts.values()) if counts else 0)
PY
)"
printf 'failed client requests: %s of %s\n' "$failed" "$REQUESTS"
printf 'p99 of requests started during the faults (s 4-24): %s ms\n' "$p99_faults"
printf 'most log lines of one kind in one second: %s\n' "$lines_per_second"
printf 'shared again after: kill+restart %s ms, SIGSTOP 5 s %s ms, CLIENT PAUSE 3 s %s ms\n' "$conv1" "$conv2" "$conv3"
ok=1
[[ "$load_ok" == 1 && "$failed" == 0 ]] || { log "missed: failed requests"; ok=0; }
awk -v p="$p99_faults" 'BEGIN { exit !(p <= 1000) }' || { log "missed: p99 during faults over 1 s"; ok=0; }
((lines_per_second <= 1)) || { log "missed: more than one log line per second per kind"; ok=0; }
for c in "$conv1" "$conv2" "$conv3"; do ((c <= 2000)) || { log "missed: shared state took $c ms"; ok=0; }; done
((ok == 1)) || exit 1
log "ok: every target met"
