#!/usr/bin/env bash
# Benchmark: requests through keyrelay vs. direct requests to the mock upstream, same run.
# See bench/README.md. Usage: bash bench/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/out"

SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
WARMUP="${BENCH_WARMUP_SECONDS:-2}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
KEYS="${BENCH_KEYS:-4}"
NO_BUILD="${BENCH_NO_BUILD:-0}"
ROUNDS="${BENCH_STORE_ROUNDS:-6}"
ROUND_SECONDS="${BENCH_STORE_SECONDS:-5}"
READY_DEADLINE=30 # seconds to wait for a process to answer

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  printf '[bench] FAIL: %s\n' "$*" >&2
  exit 1
}

for v in SECONDS_PER_RUN WARMUP CONNS THREADS KEYS ROUNDS ROUND_SECONDS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((SECONDS_PER_RUN > 0 && CONNS > 0 && THREADS > 0 && KEYS > 0 && ROUNDS > 0 && ROUND_SECONDS > 0)) ||
  die "BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_KEYS, BENCH_STORE_ROUNDS and BENCH_STORE_SECONDS must be > 0"
((CONNS >= THREADS)) || die "BENCH_CONNECTIONS must be >= BENCH_THREADS"

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

# ---------------------------------------------------------------- build
if [[ "$NO_BUILD" != 1 ]]; then
  log "building release binaries (cargo build --release -p keyrelay -p keyrelay-mock)"
  (cd "$ROOT" && cargo build --release -q -p keyrelay -p keyrelay-mock) || die "release build failed"
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
KEYRELAY="$TARGET_DIR/release/keyrelay"
MOCK="$TARGET_DIR/release/keyrelay-mock"
[[ -x "$KEYRELAY" ]] || die "$KEYRELAY not found (build it or unset BENCH_NO_BUILD)"
[[ -x "$MOCK" ]] || die "$MOCK not found (build it or unset BENCH_NO_BUILD)"

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-bench.XXXXXX")"
PIDS=()

stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    stop_pid "$pid"
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# rss_mib PID: resident memory of a process in MiB, or "?"
rss_mib() {
  if [[ -r "/proc/$1/status" ]]; then
    awk '/^VmRSS:/ { printf "%.0f", $2 / 1024; found = 1 } END { if (!found) printf "?" }' "/proc/$1/status" 2>/dev/null || true
  else
    printf '?'
  fi
}

# wait_http NAME PID URL [curl args...]: poll until URL answers any HTTP status, or fail.
wait_http() {
  local name="$1" pid="$2" url="$3" code
  shift 3
  local deadline=$((SECONDS + READY_DEADLINE))
  while :; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup; its log:
$(cat "$TMP/$name.log" 2>/dev/null)"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != 000 ]] && return 0
    ((SECONDS < deadline)) || die "$name did not answer at $url within ${READY_DEADLINE}s; its log:
$(cat "$TMP/$name.log" 2>/dev/null)"
    sleep 0.05
  done
}

MOCK_PID="" MOCK_PORT="" KR_PID="" KR_PORT="" REDIS_PID="" REDIS_PORT=""
TOKEN="bench-client-token-$$-$RANDOM"
DIRECT_KEY="sk-bench-direct"

start_mock() {
  MOCK_PORT="$(free_port)"
  "$MOCK" "127.0.0.1:$MOCK_PORT" >"$TMP/mock.log" 2>&1 &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  wait_http mock "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" \
    -X POST -H "Authorization: Bearer $DIRECT_KEY" -H 'Content-Type: application/json' --data '{}'
}

start_redis() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server is required for the Redis store run (Debian: apt-get install redis-server)"
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local deadline=$((SECONDS + READY_DEADLINE))
  until [[ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" == PONG ]]; do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited at start: $(cat "$TMP/redis.log")"
    ((SECONDS < deadline)) || die "redis-server did not answer PING"
    sleep 0.05
  done
}

# start_keyrelay [STORE_URL [NAME]]: keyrelay in front of the mock, on Redis when a URL is
# given; NAME (default keyrelay) names its directory and log under $TMP.
start_keyrelay() {
  local store_url="${1:-}" name="${2:-keyrelay}"
  KR_PORT="$(free_port)"
  local dir="$TMP/$name" i
  mkdir -p "$dir"
  cat >"$dir/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$KR_PORT"

[admin]
listen = "127.0.0.1:$(free_port)"

[[clients]]
name = "bench"
token = "env:KEYRELAY_BENCH_TOKEN"

[[providers]]
name = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
route = "/v1"
rpm = 100000000
keys = "env:BENCH_OPENAI_KEY_*"
EOF
  if [[ -n "$store_url" ]]; then
    printf '\n[store]\nurl = "%s"\n' "$store_url" >>"$dir/bench.toml"
  fi
  local envs=(KEYRELAY_LOG=warn "KEYRELAY_BENCH_TOKEN=$TOKEN")
  for ((i = 1; i <= KEYS; i++)); do
    envs+=("BENCH_OPENAI_KEY_$i=sk-bench-key-$i")
  done
  # From its own temp dir, so no .env of the caller's is picked up.
  (cd "$dir" && exec env "${envs[@]}" "$KEYRELAY" --config "$dir/bench.toml") >"$TMP/$name.log" 2>&1 &
  KR_PID=$!
  PIDS+=("$KR_PID")
  wait_http "$name" "$KR_PID" "http://127.0.0.1:$KR_PORT/v1/chat/completions"
}

# stop_all: stop every process this measurement started.
stop_all() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    stop_pid "$pid"
  done
  KR_PID="" MOCK_PID="" REDIS_PID=""
  PIDS=()
}

# ---------------------------------------------------------------- requests
body_for() { # scenario -> JSON body
  case "$1" in
    chat) printf '%s' '{"model":"mock","messages":[{"role":"user","content":"Say hello."}]}' ;;
    stream) printf '%s' '{"model":"mock","messages":[{"role":"user","content":"Say hello."}],"stream":true}' ;;
    *) die "unknown scenario $1" ;;
  esac
}

# url_auth TARGET -> sets URL and AUTH for that target
url_auth() {
  case "$1" in
    direct) URL="http://127.0.0.1:$MOCK_PORT/v1/chat/completions" AUTH="$DIRECT_KEY" ;;
    keyrelay) URL="http://127.0.0.1:$KR_PORT/v1/chat/completions" AUTH="$TOKEN" ;;
    *) die "unknown target $1" ;;
  esac
}

# verify SCENARIO TARGET: one request must answer 200 with the expected body, else fail loudly.
verify() {
  local scenario="$1" target="$2" code body
  url_auth "$target"
  body="$(body_for "$scenario")"
  code="$(curl -sS -o "$TMP/verify.out" -w '%{http_code}' --max-time 10 -X POST \
    -H "Authorization: Bearer $AUTH" -H 'Content-Type: application/json' --data "$body" "$URL")" ||
    die "$scenario via $target: request to $URL failed (curl)"
  [[ "$code" == 200 ]] || die "$scenario via $target: expected HTTP 200, got $code; body:
$(head -c 2000 "$TMP/verify.out")
keyrelay log:
$(tail -n 40 "$TMP/keyrelay.log" 2>/dev/null)"
  case "$scenario" in
    chat) grep -q '"chat.completion"' "$TMP/verify.out" || die "$scenario via $target: 200 but not a chat completion: $(head -c 2000 "$TMP/verify.out")" ;;
    stream) [[ "$(grep -c '^data:' "$TMP/verify.out")" -ge 5 ]] || die "$scenario via $target: 200 but fewer than 5 SSE data lines: $(head -c 2000 "$TMP/verify.out")" ;;
  esac
}

lua_for() { # scenario target -> path of a wrk Lua script
  local scenario="$1" target="$2" f="$TMP/$1-$2.lua"
  url_auth "$target"
  cat >"$f" <<EOF
wrk.method = "POST"
wrk.body = [[$(body_for "$scenario")]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $AUTH"
EOF
  printf '%s' "$f"
}

# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "1.02s", "2.00m") in milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
    printf "%.2f", n }'
}

declare -A RPS P50 P99 NON2XX SOCKERR RSS

# measure SCENARIO TARGET: fresh mock (and keyrelay), verify, warm up, run wrk, parse.
# A fresh mock (and keyrelay) per run, so no run inherits warm state from another.
measure() {
  local scenario="$1" target="$2" k="$1/$2" lua raw="$OUT/$1-$2.txt"
  start_mock
  case "$target" in
    keyrelay) start_keyrelay ;;
  esac
  verify "$scenario" "$target"
  url_auth "$target"
  lua="$(lua_for "$scenario" "$target")"
  if ((WARMUP > 0)); then
    wrk -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" -s "$lua" "$URL" >/dev/null 2>&1 || die "wrk warm-up failed for $k"
  fi
  log "measuring $scenario via $target (${SECONDS_PER_RUN}s, -c $CONNS -t $THREADS)"
  {
    echo "# scenario=$scenario target=$target url=$URL"
    echo "# wrk -t $THREADS -c $CONNS -d ${SECONDS_PER_RUN}s --latency -s $(basename "$lua")"
    echo "# body: $(body_for "$scenario")"
  } >"$raw"
  wrk -t "$THREADS" -c "$CONNS" -d "${SECONDS_PER_RUN}s" --timeout 10s --latency -s "$lua" "$URL" >>"$raw" 2>&1 ||
    die "wrk failed for $k; output:
$(cat "$raw")"
  kill -0 "$MOCK_PID" 2>/dev/null || die "mock died during $k"
  if [[ "$target" != direct ]]; then
    kill -0 "$KR_PID" 2>/dev/null || die "keyrelay died during $k; log:
$(tail -n 40 "$TMP/keyrelay.log")"
  fi

  RSS[$k]="mock $(rss_mib "$MOCK_PID") MiB"
  if [[ "$target" != direct ]]; then RSS[$k]+=", keyrelay $(rss_mib "$KR_PID") MiB"; fi
  echo "# rss after run: ${RSS[$k]}" >>"$raw"
  if [[ "$target" != direct && -s "$TMP/keyrelay.log" ]]; then
    { echo "# keyrelay log (warn and above, last 20 lines):"; tail -n 20 "$TMP/keyrelay.log" | sed 's/^/#   /'; } >>"$raw"
  fi

  RPS[$k]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$raw")"
  P50[$k]="$(to_ms "$(awk '$1 == "50%" { print $2; exit }' "$raw")")"
  P99[$k]="$(to_ms "$(awk '$1 == "99%" { print $2; exit }' "$raw")")"
  NON2XX[$k]="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$raw")"
  NON2XX[$k]="${NON2XX[$k]:-0}"
  SOCKERR[$k]="$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$raw")"
  SOCKERR[$k]="${SOCKERR[$k]:-0}"
  [[ -n "${RPS[$k]}" ]] || die "could not parse wrk output for $k:
$(cat "$raw")"
  stop_all
}

# wrk_run URL LUA SECONDS RAW: one measured wrk run, its output in RAW.
wrk_run() {
  wrk -t "$THREADS" -c "$CONNS" -d "${3}s" --timeout 10s --latency -s "$2" "$1" >"$4" 2>&1 ||
    die "wrk failed for $1; output:
$(cat "$4")"
}

# The Redis store against the embedded store: both keyrelays run side by side in front of one
# mock, and wrk alternates between them, ROUNDS runs each in ABBA order, so a slow spell of a
# shared machine falls on both alike instead of on whichever ran second.
STORE_RPS_EMB=() STORE_RPS_RED=() STORE_NON2XX=0 STORE_CMDS="" STORE_RSS=""
compare_stores() {
  local emb_port emb_pid red_port red_pid lua r t port raw requests evalsha total_red=0
  start_mock
  start_redis
  start_keyrelay "" keyrelay
  emb_port="$KR_PORT" emb_pid="$KR_PID"
  start_keyrelay "redis://127.0.0.1:$REDIS_PORT/0" keyrelay-redis
  red_port="$KR_PORT" red_pid="$KR_PID"
  KR_PORT="$emb_port" verify chat keyrelay
  KR_PORT="$red_port" verify chat keyrelay
  lua="$(lua_for chat keyrelay)"
  if ((WARMUP > 0)); then
    for port in "$emb_port" "$red_port"; do
      wrk -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" -s "$lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null 2>&1 ||
        die "wrk warm-up failed on port $port"
    done
  fi
  redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
  log "comparing stores: $ROUNDS rounds of ${ROUND_SECONDS}s on each, alternating (-c $CONNS -t $THREADS)"
  for ((r = 1; r <= ROUNDS; r++)); do
    for t in $( ((r % 2)) && echo "embedded redis" || echo "redis embedded"); do
      if [[ "$t" == embedded ]]; then port="$emb_port"; else port="$red_port"; fi
      raw="$OUT/stores-$t-$r.txt"
      wrk_run "http://127.0.0.1:$port/v1/chat/completions" "$lua" "$ROUND_SECONDS" "$raw"
      STORE_NON2XX=$((STORE_NON2XX + $(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$raw")))
      if [[ "$t" == embedded ]]; then
        STORE_RPS_EMB[r]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$raw")"
      else
        STORE_RPS_RED[r]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$raw")"
        requests="$(awk '/requests in/ { print $1; exit }' "$raw")"
        total_red=$((total_red + ${requests:-0}))
      fi
    done
  done
  kill -0 "$emb_pid" 2>/dev/null || die "keyrelay (embedded) died during the store comparison"
  kill -0 "$red_pid" 2>/dev/null || die "keyrelay (redis) died during the store comparison"
  redis-cli -p "$REDIS_PORT" INFO commandstats >"$OUT/stores-redis.commandstats.txt"
  evalsha="$(awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 }' "$OUT/stores-redis.commandstats.txt" | tr -d '\r')"
  STORE_CMDS="$(awk -v e="${evalsha:-0}" -v r="$total_red" 'BEGIN { if (r > 0) printf "%.3f", e / r; else printf "n/a" }')"
  STORE_RSS="keyrelay embedded $(rss_mib "$emb_pid") MiB, keyrelay redis $(rss_mib "$red_pid") MiB, redis $(rss_mib "$REDIS_PID") MiB"
  stop_all
}

# ---------------------------------------------------------------- run
mkdir -p "$OUT"
SCENARIOS=(chat stream)
declare -A TARGETS=([chat]="direct keyrelay" [stream]="direct keyrelay")
for s in "${SCENARIOS[@]}"; do
  for t in ${TARGETS[$s]}; do
    measure "$s" "$t"
  done
done
compare_stores

# ---------------------------------------------------------------- report
declare -A LABEL=([chat]="chat (non-stream)" [stream]="chat stream (5 chunks)")
{
  echo "keyrelay benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo '+dirty'), $(nproc) CPUs"
  echo "wrk -t $THREADS -c $CONNS -d ${SECONDS_PER_RUN}s (after ${WARMUP}s warm-up), $KEYS keys in the pool; latencies in ms"
  echo
  printf '%-24s %-10s %10s %9s %9s %8s %8s %8s\n' scenario target 'req/s' p50 p99 non-2xx 'sock err' '/direct'
  printf '%-24s %-10s %10s %9s %9s %8s %8s %8s\n' "$(printf '%.0s-' {1..24})" ---------- ---------- --------- --------- -------- -------- --------
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
  for s in "${SCENARIOS[@]}"; do
    for t in ${TARGETS[$s]}; do
      k="$s/$t" vs_direct=""
      if [[ "$t" != direct ]]; then vs_direct="$(ratio "${RPS[$k]}" "${RPS[$s/direct]}")"; fi
      printf '%-24s %-10s %10s %9s %9s %8s %8s %8s\n' "${LABEL[$s]}" "$t" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${NON2XX[$k]}" "${SOCKERR[$k]}" "$vs_direct"
    done
  done
  echo
  echo "/direct: throughput relative to the mock alone."
  echo
  echo "Redis store vs embedded store, chat (non-stream), both keyrelays side by side,"
  echo "$ROUNDS rounds of ${ROUND_SECONDS}s each, alternating (ABBA):"
  printf '%-6s %14s %14s %8s\n' round 'embedded req/s' 'redis req/s' ratio
  ratios=()
  sum_emb=0 sum_red=0
  for ((r = 1; r <= ROUNDS; r++)); do
    ratios+=("$(ratio "${STORE_RPS_RED[r]}" "${STORE_RPS_EMB[r]}")")
    sum_emb=$((sum_emb + STORE_RPS_EMB[r])) sum_red=$((sum_red + STORE_RPS_RED[r]))
    printf '%-6s %14s %14s %8s\n' "$r" "${STORE_RPS_EMB[r]}" "${STORE_RPS_RED[r]}" "${ratios[r - 1]}"
  done
  median="$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
  printf '%-6s %14s %14s %8s\n' mean "$((sum_emb / ROUNDS))" "$((sum_red / ROUNDS))" "$(ratio "$sum_red" "$sum_emb")"
  echo "Redis store / embedded store: $(ratio "$sum_red" "$sum_emb") (mean of rounds), $median (median of rounds); target >= 0.80"
  echo "Redis commands per request: $STORE_CMDS EVALSHA (INFO commandstats over all Redis rounds; target 1.000)"
  echo "non-2xx responses in the comparison: $STORE_NON2XX"
  echo
  for s in "${SCENARIOS[@]}"; do
    for t in ${TARGETS[$s]}; do
      echo "memory after $s/$t: ${RSS[$s/$t]}"
    done
  done
  echo "memory after the store comparison: $STORE_RSS"
} | tee "$OUT/summary.txt"

status=0
if ((STORE_NON2XX != 0)); then
  log "WARNING: the store comparison had $STORE_NON2XX non-2xx responses; its ratio is not a valid result"
  status=1
fi
for k in "${!NON2XX[@]}"; do
  if [[ "${NON2XX[$k]}" != 0 ]]; then
    log "WARNING: $k had ${NON2XX[$k]} non-2xx responses; its req/s is not a valid result (see $OUT/${k/\//-}.txt)"
    status=1
  fi
  if [[ "${SOCKERR[$k]}" != 0 ]]; then
    log "warning: $k had ${SOCKERR[$k]} socket errors (see $OUT/${k/\//-}.txt)"
  fi
done
log "raw wrk outputs and summary in $OUT/"
exit "$status"
