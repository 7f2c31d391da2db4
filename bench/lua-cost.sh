#!/usr/bin/env bash
# Instructions per call of acquire.lua's hot path, counted by valgrind's callgrind in Redis.
#
# Usage: bash bench/lua-cost.sh [BASELINE_REV]
#
# The hot path: strategy lc (least count), 3 keys, rpm far above what is sent (no key ever
# full), no mark in force, nothing tried. For each of two call counts N1 < N2 it starts a fresh
# `redis-server` under callgrind (listening on a Unix socket in a temp dir, TCP off: no port to
# pick or race, nothing leaves the machine), loads the script as the store builds it
# (common.lua, when there is one, then acquire.lua), sends the same EVALSHA N times from one
# redis-benchmark connection, checks Redis counted exactly N calls, and shuts it down. The
# fixed costs (start, script load, the first call creating the fields, shutdown) are the same
# in both runs, so (total(N2) - total(N1)) / (N2 - N1) is the cost of one call, including
# Redis's own work for the command (read, parse, dispatch, reply). Once-a-second work (a new
# bucket per key, Redis's cron at hz 1) is spread over the calls of that second, as in
# production: under valgrind about a thousand calls a second, so well under 100 instructions
# per call. A run is shorter than the window, so the expiry pass never runs in it.
#
# Measured here (Redis 7.0.15): 70.7k before common.lua and the fingerprint run (d9993bc),
# 76.0k-76.7k after (+7.5% to +8.1%, over several runs; a run repeats within ~0.5%). With the
# due set and the operator hash as KEYS 3 and 4 (issue 13): 78.9k-79.7k, against 76.3k-76.6k
# for e47d091 in the same runs (+3.4% to +4.1%, three runs).
#
# With BASELINE_REV (a git revision that has this script), the same is measured for that
# revision's Lua files with that revision's copy of this script (which knows its ARGV layout),
# and the ratio new/baseline is printed.
#
# Env: LUA_COST_N1 (default 2000), LUA_COST_N2 (default 10000), LUA_COST_TIMEOUT (seconds per
# redis run, default 300), LUA_COST_LUA_DIR (where the .lua files are; default
# pool/src/redis). Stops only the processes it started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LUA_DIR="${LUA_COST_LUA_DIR:-$ROOT/pool/src/redis}"
N1="${LUA_COST_N1:-2000}"
N2="${LUA_COST_N2:-10000}"
RUN_TIMEOUT="${LUA_COST_TIMEOUT:-300}"
READY_DEADLINE=60 # seconds for redis-server under valgrind to answer PING
BASELINE="${1:-}"

log() { printf '[lua-cost] %s\n' "$*" >&2; }
die() {
  printf '[lua-cost] FAIL: %s\n' "$*" >&2
  exit 1
}

for v in N1 N2 RUN_TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((N1 > 0 && N2 > N1)) || die "need 0 < LUA_COST_N1 < LUA_COST_N2"
for tool in valgrind redis-server redis-cli redis-benchmark timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (Debian: apt-get install valgrind redis-server)"
done
[[ -f "$LUA_DIR/acquire.lua" ]] || die "$LUA_DIR/acquire.lua not found"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-lua-cost.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the call
STATE='keyrelay:{bench}:state'
BUCKETS='keyrelay:{bench}:b'
# Since the due set and the operator hash (issue 13), acquire.lua takes four keys.
KEYS=("$STATE" "$BUCKETS")
if grep -q 'KEYS\[4\]' "$LUA_DIR/acquire.lua"; then
  KEYS+=('keyrelay:{bench}:due' 'keyrelay:{bench}:ops')
fi
FPS=(aaaaaaaaaaaa bbbbbbbbbbbb cccccccccccc)
RPM=1000000000

# The script as the store loads it.
script_text() {
  if [[ -f "$LUA_DIR/common.lua" ]]; then cat "$LUA_DIR/common.lua"; fi
  cat "$LUA_DIR/acquire.lua"
}

# ARGV of one acquire call, one per line, in this revision's layout (see acquire.lua): the
# strategy, the call counter, the tried list, each key's fingerprint, each key's rpm, then the
# state fields read at once ('x', 'mk', each key's `n:<fp>`).
acquire_argv() {
  local fp
  printf '%s\n' lc 0 ,
  printf '%s\n' "${FPS[@]}"
  for fp in "${FPS[@]}"; do printf '%s\n' "$RPM"; done
  printf '%s\n' x mk
  for fp in "${FPS[@]}"; do printf 'n:%s\n' "$fp"; done
}

# ---------------------------------------------------------------- one measured run
# Sets TOTAL to callgrind's instruction count for a Redis that served `$1` acquire calls. Runs
# in this shell (not in a command substitution), so the EXIT trap knows the server's PID.
measure() {
  local calls="$1" dir="$TMP/run-$1" sock sha i deadline counted
  mkdir -p "$dir"
  sock="$dir/redis.sock"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    redis-server --port 0 --unixsocket "$sock" --save '' --appendonly no --hz 1 --dir "$dir" \
    >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  deadline=$((SECONDS + READY_DEADLINE))
  until [[ -S "$sock" ]] && [[ "$(redis-cli -s "$sock" PING 2>/dev/null)" == PONG ]]; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "redis-server exited at start (see $dir/server.log)"
    ((SECONDS < deadline)) || die "redis-server did not answer PING within ${READY_DEADLINE}s"
    sleep 0.2
  done
  sha="$(script_text | redis-cli -s "$sock" -x SCRIPT LOAD)"
  [[ "$sha" =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD answered '$sha'"
  local -a args
  mapfile -t args < <(acquire_argv)
  # One call first, so both runs start from the same state, and a broken call shows here.
  i="$(redis-cli -s "$sock" EVALSHA "$sha" "${#KEYS[@]}" "${KEYS[@]}" "${args[@]}")"
  [[ "$i" =~ ^[1-9][0-9]*$ ]] || die "acquire answered '$i', not a key"
  timeout "$RUN_TIMEOUT" redis-benchmark -s "$sock" -c 1 -n "$((calls - 1))" -q \
    EVALSHA "$sha" "${#KEYS[@]}" "${KEYS[@]}" "${args[@]}" >"$dir/bench.log" 2>&1 ||
    die "redis-benchmark failed or ran past ${RUN_TIMEOUT}s (see $dir/bench.log)"
  counted="$(redis-cli -s "$sock" INFO commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p')"
  [[ "$counted" == "$calls" ]] || die "Redis counted ${counted:-no} EVALSHA calls, expected $calls"
  redis-cli -s "$sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  timeout "$RUN_TIMEOUT" tail --pid="$SERVER_PID" -f /dev/null || die "redis-server did not stop"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  TOTAL="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dir/callgrind.out")"
  [[ -n "$TOTAL" ]] || die "no totals in $dir/callgrind.out"
}

TOTAL=""
log "$LUA_DIR: $N1 calls"
measure "$N1"
t1="$TOTAL"
log "$LUA_DIR: $N2 calls"
measure "$N2"
t2="$TOTAL"
after=$(((t2 - t1) / (N2 - N1)))

if [[ -n "$BASELINE" ]]; then
  base_dir="$TMP/baseline"
  mkdir -p "$base_dir/bench"
  git -C "$ROOT" show "$BASELINE:bench/lua-cost.sh" >"$base_dir/bench/lua-cost.sh" ||
    die "$BASELINE has no bench/lua-cost.sh"
  mkdir -p "$base_dir/lua"
  for f in $(git -C "$ROOT" ls-tree --name-only "$BASELINE" pool/src/redis/ | grep '\.lua$'); do
    git -C "$ROOT" show "$BASELINE:$f" >"$base_dir/lua/$(basename "$f")"
  done
  before="$(LUA_COST_LUA_DIR="$base_dir/lua" bash "$base_dir/bench/lua-cost.sh" | tail -n 1 |
    sed -n 's/^acquire.lua lc hot path: \([0-9]*\) .*/\1/p')"
  [[ -n "$before" ]] || die "the baseline run printed no figure"
fi
echo "acquire.lua lc hot path: $after instructions per call ($LUA_DIR, N=$N1 and $N2)"
if [[ -n "$BASELINE" ]]; then
  echo "baseline $BASELINE: $before instructions per call; ratio $((after * 1000 / before))/1000"
fi
