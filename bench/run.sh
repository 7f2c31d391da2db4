#!/usr/bin/env bash
# Benchmark: four contenders side by side in one run, interleaved over rounds: direct to the
# mock, nginx (plain proxy_pass), keyrelay embedded, keyrelay on Redis. Workloads: chat and
# 20-chunk streams at c=64 and c=1 (wrk), long timed streams held open and idle keep-alive
# connections (keyrelay-loadgen). Figures per contender and workload go to bench/out/, the
# medians into bench/RESULTS.md and a chart (bench/report.py). See bench/README.md.
# Usage: bash bench/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/out"
PREFIX=bench
READY_DEADLINE=30 # seconds to wait for a process to answer

DURATION="${BENCH_SECONDS:-10}"
WARMUP="${BENCH_WARMUP_SECONDS:-2}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
ROUNDS="${BENCH_ROUNDS:-3}"
CHUNKS="${BENCH_CHUNKS:-20}"
STREAMS="${BENCH_STREAMS:-2000}"
STREAM_CHUNKS="${BENCH_STREAM_CHUNKS:-200}"
STREAM_DELAY_MS="${BENCH_STREAM_DELAY_MS:-20}"
STREAM_RAMP="${BENCH_STREAM_RAMP:-10}"
STREAM_HOLD="${BENCH_STREAM_HOLD:-10}"
IDLE_CONNS="${BENCH_IDLE_CONNECTIONS:-10000}"
IDLE_HOLD="${BENCH_IDLE_HOLD:-5}"
WORKLOADS="${BENCH_WORKLOADS:-chat64 chat1 stream64 stream1 streams idle}"
CONTENDERS="${BENCH_CONTENDERS:-direct nginx embedded redis}"
NO_BUILD="${BENCH_NO_BUILD:-0}"
# 1: both keyrelays run with affinity, a tenant, client and tenant limits and token metering on
# (see start_keyrelay in lib.sh), and stream requests ask for usage, for every contender.
FEATURES="${BENCH_FEATURES:-0}"
# The Redis contender's [store] lines: leased shares on (one script call per ~60 requests);
# BENCH_REDIS_STORE_EXTRA="" measures one script call per request.
REDIS_STORE_EXTRA="${BENCH_REDIS_STORE_EXTRA-lease_time = \"250ms\"}"
COMMAND="$(for v in $(compgen -e | grep -E '^BENCH_' | sort); do printf '%s=%q ' "$v" "${!v}"; done)bash bench/run.sh"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION WARMUP CONNS THREADS ROUNDS CHUNKS STREAMS STREAM_CHUNKS STREAM_DELAY_MS \
  STREAM_RAMP STREAM_HOLD IDLE_CONNS IDLE_HOLD; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[[ "$FEATURES" == 0 || "$FEATURES" == 1 ]] || die "BENCH_FEATURES must be 0 or 1, got '$FEATURES'"
# With features on, held streams ask for usage too (as the wrk streams do; see body below).
LOADGEN_USAGE=()
[[ "$FEATURES" == 1 ]] && LOADGEN_USAGE=(--usage)
((DURATION > 0 && CONNS > 0 && THREADS > 0 && ROUNDS > 0 && STREAMS > 0 && IDLE_CONNS > 0)) ||
  die "BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_ROUNDS, BENCH_STREAMS and BENCH_IDLE_CONNECTIONS must be > 0"
for w in $WORKLOADS; do
  [[ " chat64 chat1 stream64 stream1 streams idle " == *" $w "* ]] || die "unknown workload '$w' in BENCH_WORKLOADS"
done
for c in $CONTENDERS; do
  [[ " direct nginx embedded redis " == *" $c "* ]] || die "unknown contender '$c' in BENCH_CONTENDERS"
done

# ---------------------------------------------------------------- tools and limits
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
need wrk wrk
need nginx nginx-light
need redis-server redis-server
need redis-cli redis-tools
# Every held stream or idle connection is a descriptor in the client and two in a proxy.
want_fds=$((IDLE_CONNS > STREAMS * 2 ? IDLE_CONNS : STREAMS * 2))
NOFILE="$(raise_nofile $((want_fds + 2048)))"
((NOFILE >= want_fds + 256)) || log "warning: open-file limit $NOFILE is low for $IDLE_CONNS idle connections and $STREAMS streams; raise the hard limit (ulimit -Hn)"
build_release keyrelay keyrelay-mock keyrelay-loadgen
LOADGEN="$TARGET_DIR/release/keyrelay-loadgen"
for b in keyrelay keyrelay-mock keyrelay-loadgen; do
  [[ -x "$TARGET_DIR/release/$b" ]] || die "$TARGET_DIR/release/$b not found (build it or unset BENCH_NO_BUILD)"
done

# keyrelay: room for every idle connection, and idle connections not closed during the hold.
KR_SERVER_EXTRA="max_connections = $((IDLE_CONNS + 1000))
header_read_timeout = \"600s\"
keepalive_timeout = \"600s\""
NGINX_KEY="sk-bench-nginx-fixed"

# ---------------------------------------------------------------- contenders
# start_all: a fresh mock, redis-server, nginx and two keyrelays for one round; sets, per
# contender, URL_x, TOKEN_x and PIDS_x (the processes whose CPU and memory are the proxy's).
declare -A URL_ TOKEN_ PIDS_
start_all() {
  start_mock
  URL_[direct]="$MOCK_URL/v1/chat/completions" TOKEN_[direct]="sk-bench-direct" PIDS_[direct]="$MOCK_PID"
  start_redis
  start_nginx nginx "127.0.0.1:$MOCK_PORT" "$NGINX_KEY"
  local workers
  workers="$(children "$NGINX_PID" | tr '\n' ' ')"
  [[ -n "$workers" ]] || die "nginx started no workers"
  URL_[nginx]="$NGINX_URL" TOKEN_[nginx]="unused" PIDS_[nginx]="$NGINX_PID $workers"
  KR_FEATURES="$FEATURES" start_keyrelay kr-embedded "" ""
  URL_[embedded]="$KR_URL" TOKEN_[embedded]="$BENCH_TOKEN" PIDS_[embedded]="$KR_PID"
  KR_FEATURES="$FEATURES" KR_STORE_EXTRA="$REDIS_STORE_EXTRA" \
    start_keyrelay kr-redis "redis://127.0.0.1:$REDIS_PORT/0" ""
  URL_[redis]="$KR_URL" TOKEN_[redis]="$BENCH_TOKEN" PIDS_[redis]="$KR_PID"
  local c
  for c in $CONTENDERS; do verify "$c"; done
}

# stop_all ROUND WORKLOAD: stop every process start_all started (by PID); keep their logs and
# configs in bench/out/r<ROUND>-logs/<WORKLOAD>/.
stop_all() {
  local pid dir="$OUT/r$1-logs/$2"
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  mkdir -p "$dir"
  cp "$TMP"/*.log "$TMP"/*.toml "$TMP/nginx/nginx.conf" "$dir/" 2>/dev/null || true
  cp "$TMP/nginx/logs/error.log" "$dir/nginx-error.log" 2>/dev/null || true
  rm -f "$TMP"/*.log
  PIDS=()
  unset REDIS_PORT
}

# verify CONTENDER: a chat request answers 200 with a completion, and a stamped stream arrives
# with its stamps, so the headers the workloads rely on pass through.
verify() {
  local c="$1" code
  code="$(curl -sS -o "$TMP/verify.out" -w '%{http_code}' --max-time 10 -X POST \
    -H "Authorization: Bearer ${TOKEN_[$c]}" -H 'Content-Type: application/json' \
    --data "$(body false)" "${URL_[$c]}")" || die "$c: request to ${URL_[$c]} failed"
  [[ "$code" == 200 ]] && grep -q '"chat.completion"' "$TMP/verify.out" ||
    die "$c: expected a 200 chat completion, got $code: $(head -c 500 "$TMP/verify.out")"
  curl -sS -o "$TMP/verify.out" --max-time 10 -X POST -H "Authorization: Bearer ${TOKEN_[$c]}" \
    -H 'Content-Type: application/json' -H 'x-mock-stamp: 1' -H "x-mock-chunks: $CHUNKS" \
    --data "$(body true)" "${URL_[$c]}" || die "$c: stream request failed"
  [[ "$(grep -c '"t_us":' "$TMP/verify.out")" -eq "$CHUNKS" ]] && grep -q '\[DONE\]' "$TMP/verify.out" ||
    die "$c: expected $CHUNKS stamped chunks and [DONE]: $(head -c 500 "$TMP/verify.out")"
}

# body STREAM: a chat request of about 1 KB (a stream asks for usage with BENCH_FEATURES=1).
body() {
  local text="Summarise the following notes in three sentences. " s=""
  while ((${#s} < 860)); do s+="$text"; done
  local usage=""
  if [[ "$1" == true && "$FEATURES" == 1 ]]; then usage=',"stream_options":{"include_usage":true}'; fi
  printf '{"model":"mock","stream":%s%s,"max_tokens":256,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"%s"}]}' "$1" "$usage" "$s"
}

# ---------------------------------------------------------------- measurements
# emit ROUND WORKLOAD CONTENDER METRIC VALUE: one figure, into the results table.
emit() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/results.tsv"; }

# degraded: how often keyrelay on Redis has logged falling back to local state (a Redis answer
# slower than its timeout, e.g. on a loaded machine): its figures then are partly embedded's.
degraded() { grep -c 'redis store unavailable' "$TMP/kr-redis.log" 2>/dev/null || true; }

# redis_calls: script calls Redis has served (eval, evalsha, fcall and their _ro forms).
redis_calls() {
  redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro):/ { n += $3 } END { print n + 0 }'
}

# mock_received: requests the mock has answered (its /__mock/stats counter).
mock_received() {
  curl -s --max-time 5 "$MOCK_URL/__mock/stats" | sed -n 's/.*"received":\([0-9]*\).*/\1/p'
}

# snap CONTENDER: proxy CPU ticks, Redis CPU ticks, Redis calls and upstream requests now,
# into SNAP_*.
snap() {
  SNAP_CPU="$(cpu_ticks ${PIDS_[$1]})" SNAP_RCPU=0 SNAP_CALLS=0 SNAP_UP=0
  if [[ "$1" == redis ]]; then
    SNAP_RCPU="$(cpu_ticks "$REDIS_PID")" SNAP_CALLS="$(redis_calls)" SNAP_UP="$(mock_received)"
  fi
}

# emit_costs R W C UNITS PER: CPU since snap, per unit (UNITS requests or chunks), as PER.
emit_costs() {
  local r="$1" w="$2" c="$3" units="$4" per="$5" cpu rcpu calls
  cpu=$(($(cpu_ticks ${PIDS_[$c]}) - SNAP_CPU))
  per_us() { awk -v t="$1" -v n="$units" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.3f", t / hz * 1e6 / n; else print "" }'; }
  [[ "$c" == direct ]] || emit "$r" "$w" "$c" "cpu_us_per_$per" "$(per_us "$cpu")"
  if [[ "$c" == redis ]]; then
    rcpu=$(($(cpu_ticks "$REDIS_PID") - SNAP_RCPU))
    calls=$(($(redis_calls) - SNAP_CALLS))
    LAST_CALLS="$calls"
    emit "$r" "$w" "$c" "redis_cpu_us_per_$per" "$(per_us "$rcpu")"
    emit "$r" "$w" "$c" "cpu_with_redis_us_per_$per" "$(per_us $((cpu + rcpu)))"
    emit "$r" "$w" "$c" "redis_calls_per_$per" "$(awk -v a="$calls" -v n="$units" 'BEGIN { if (n > 0) printf "%.3f", a / n }')"
    # Per attempt: every upstream request the mock saw in the window, those still in flight
    # when the load client stopped counting included (the client's count leaves them out).
    emit "$r" "$w" "$c" redis_calls_per_attempt "$(awk -v a="$calls" -v n="$(($(mock_received) - SNAP_UP))" 'BEGIN { if (n > 0) printf "%.3f", a / n }')"
  fi
}

# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "1.02s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# wrk_lua CONTENDER STREAM: a wrk script posting the ~1 KB body.
wrk_lua() {
  local f="$TMP/$1-$2.lua"
  {
    echo 'wrk.method = "POST"'
    echo "wrk.body = [[$(body "$2")]]"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo "wrk.headers[\"Authorization\"] = \"Bearer ${TOKEN_[$1]}\""
    [[ "$2" == true ]] && echo "wrk.headers[\"x-mock-chunks\"] = \"$CHUNKS\""
  } >"$f"
  printf '%s' "$f"
}

# run_wrk ROUND WORKLOAD CONTENDER: warm up, then one measured wrk run with CPU, peak RSS and
# Redis calls taken around it.
run_wrk() {
  local r="$1" w="$2" c="$3" conns threads stream=false lua raw="$OUT/r$1-$2-$3.txt" requests
  case "$w" in chat64 | stream64) conns="$CONNS" ;; *) conns=1 ;; esac
  [[ "$w" == stream* ]] && stream=true
  threads=$((THREADS < conns ? THREADS : conns))
  lua="$(wrk_lua "$c" "$stream")"
  if ((WARMUP > 0)); then
    timeout $((WARMUP + 30)) wrk -t "$threads" -c "$conns" -d "${WARMUP}s" -s "$lua" "${URL_[$c]}" >/dev/null 2>&1 ||
      die "wrk warm-up failed for $w via $c"
  fi
  log "round $r: $w via $c (${DURATION}s, -c $conns -t $threads)"
  reset_hwm ${PIDS_[$c]} ${REDIS_PID} || HWM_NOTE="peak RSS spans each process's life (clear_refs refused)"
  snap "$c"
  timeout $((DURATION + 60)) wrk -t "$threads" -c "$conns" -d "${DURATION}s" --timeout 10s --latency \
    -s "$lua" "${URL_[$c]}" >"$raw" 2>&1 || die "wrk failed for $w via $c: $(cat "$raw")"
  requests="$(awk '/requests in/ { print $1; exit }' "$raw")"
  emit_costs "$r" "$w" "$c" "${requests:-0}" req
  emit "$r" "$w" "$c" requests "${requests:-0}"
  emit "$r" "$w" "$c" rps "$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$raw")"
  emit "$r" "$w" "$c" p50_ms "$(to_ms "$(awk '$1 == "50%" { print $2; exit }' "$raw")")"
  emit "$r" "$w" "$c" p99_ms "$(to_ms "$(awk '$1 == "99%" { print $2; exit }' "$raw")")"
  emit "$r" "$w" "$c" non2xx "$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$raw")"
  emit "$r" "$w" "$c" socket_errors "$(awk '/Socket errors:/ { gsub(",", ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' "$raw")"
  [[ "$c" == direct ]] || emit "$r" "$w" "$c" peak_rss_kib "$(hwm_sum_kib ${PIDS_[$c]})"
  [[ "$c" != redis ]] || emit "$r" "$w" "$c" redis_peak_rss_kib "$(hwm_sum_kib "$REDIS_PID")"
  alive "$c" "$w"
}

# alive CONTENDER WORKLOAD: fail if one of the contender's processes died.
alive() {
  local pid
  for pid in ${PIDS_[$1]} ${MOCK_PID}; do
    kill -0 "$pid" 2>/dev/null || die "a process of $1 (pid $pid) died during $2; logs in $TMP"
  done
}

# wait_line FILE PATTERN PID SECONDS: wait until FILE has a line matching PATTERN.
wait_line() {
  local deadline=$((SECONDS + $4))
  until grep -q "$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# run_streams ROUND CONTENDER: STREAMS long stamped streams held open; CPU per chunk, RSS per
# open stream (at mid-hold minus before), chunk delay p50/p99.
run_streams() {
  local r="$1" c="$2" raw="$OUT/r$1-streams-$2.txt" idle plateau open chunks lg opened
  idle="$(rss_sum_kib ${PIDS_[$c]})"
  reset_hwm ${PIDS_[$c]} || true
  log "round $r: streams via $c ($STREAMS streams of $STREAM_CHUNKS chunks ${STREAM_DELAY_MS} ms apart, ramp ${STREAM_RAMP}s, hold ${STREAM_HOLD}s)"
  snap "$c"
  timeout $((STREAM_RAMP + STREAM_HOLD + STREAM_CHUNKS * STREAM_DELAY_MS / 1000 + 60)) \
    "$LOADGEN" --kind streams --url "${URL_[$c]}" --token "${TOKEN_[$c]}" --streams "$STREAMS" \
    --chunks "$STREAM_CHUNKS" --chunk-delay-ms "$STREAM_DELAY_MS" --ramp-secs "$STREAM_RAMP" \
    --hold-secs "$STREAM_HOLD" "${LOADGEN_USAGE[@]}" >"$raw" 2>&1 &
  lg=$!
  PIDS+=("$lg")
  wait_line "$raw" '^plateau open=' "$lg" $((STREAM_RAMP + STREAM_HOLD + 30)) ||
    die "streams via $c: loadgen gave no plateau line: $(cat "$raw")"
  plateau="$(rss_sum_kib ${PIDS_[$c]})"
  wait "$lg" || log "warning: streams via $c: loadgen reported failures (see $raw)"
  open="$(sed -n 's/^plateau open=//p' "$raw")"
  chunks="$(sed -n 's/.* chunks=\([0-9]*\).*/\1/p' "$raw")"
  [[ -n "$chunks" ]] || die "streams via $c: no figures from loadgen: $(cat "$raw")"
  emit_costs "$r" streams "$c" "$chunks" chunk
  opened="$(sed -n 's/^streams opened=\([0-9]*\).*/\1/p' "$raw")"
  if [[ "$c" == redis ]]; then
    emit "$r" streams "$c" redis_calls_per_stream "$(awk -v a="$LAST_CALLS" -v n="$opened" 'BEGIN { if (n > 0) printf "%.3f", a / n }')"
  fi
  emit "$r" streams "$c" chunks "$chunks"
  emit "$r" streams "$c" open_streams "$open"
  emit "$r" streams "$c" failed_streams "$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' "$raw")"
  emit "$r" streams "$c" delay_p50_ms "$(awk '/^chunk delay ms:/ { print $5 }' "$raw")"
  emit "$r" streams "$c" delay_p99_ms "$(awk '/^chunk delay ms:/ { print $7 }' "$raw")"
  if [[ "$c" != direct ]]; then
    emit "$r" streams "$c" rss_idle_kib "$idle"
    emit "$r" streams "$c" rss_plateau_kib "$plateau"
    emit "$r" streams "$c" rss_per_stream_kib "$(awk -v a="$plateau" -v b="$idle" -v n="$open" 'BEGIN { if (n > 0) printf "%.2f", (a - b) / n }')"
    emit "$r" streams "$c" peak_rss_kib "$(hwm_sum_kib ${PIDS_[$c]})"
  fi
  alive "$c" streams
}

# run_idle ROUND CONTENDER: IDLE_CONNS keep-alive connections, each after one request, held
# open: RSS per connection (held minus before) and in total.
run_idle() {
  local r="$1" c="$2" raw="$OUT/r$1-idle-$2.txt" idle held open lg
  idle="$(rss_sum_kib ${PIDS_[$c]})"
  log "round $r: idle via $c ($IDLE_CONNS connections held ${IDLE_HOLD}s)"
  timeout $((IDLE_HOLD + 120)) "$LOADGEN" --kind idle --url "${URL_[$c]}" --token "${TOKEN_[$c]}" \
    --connections "$IDLE_CONNS" --concurrency 256 --hold-secs "$IDLE_HOLD" >"$raw" 2>&1 &
  lg=$!
  PIDS+=("$lg")
  wait_line "$raw" '^idle open=' "$lg" 120 || die "idle via $c: loadgen gave no open line: $(cat "$raw")"
  sleep 1 # let the last answers' buffers go
  held="$(rss_sum_kib ${PIDS_[$c]})"
  wait "$lg" || log "warning: idle via $c: some connections failed or closed early (see $raw)"
  open="$(sed -n 's/^idle open=\([0-9]*\).*/\1/p' "$raw")"
  emit "$r" idle "$c" open_connections "$open"
  emit "$r" idle "$c" still_open "$(sed -n 's/^idle still_open=\([0-9]*\).*/\1/p' "$raw")"
  emit "$r" idle "$c" rss_idle_kib "$idle"
  emit "$r" idle "$c" rss_held_kib "$held"
  emit "$r" idle "$c" rss_per_conn_kib "$(awk -v a="$held" -v b="$idle" -v n="$open" 'BEGIN { if (n > 0) printf "%.3f", (a - b) / n }')"
  alive "$c" idle
}

# chart_python: a python3 with matplotlib: the system's, else a venv under bench/out/venv.
chart_python() {
  if python3 -c 'import matplotlib' 2>/dev/null; then
    echo python3
    return
  fi
  local venv="$OUT/venv"
  if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "matplotlib not found; installing it with pip into $venv"
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q matplotlib >&2 || die "pip install matplotlib failed"
  fi
  echo "$venv/bin/python"
}

# ---------------------------------------------------------------- run
mkdir -p "$OUT"
chart_python >/dev/null
rm -rf "$OUT"/results.tsv "$OUT"/r[0-9]*-*.txt "$OUT"/r[0-9]*-logs
HWM_NOTE=""
started=$SECONDS
read -ra order <<<"$CONTENDERS"
for ((r = 1; r <= ROUNDS; r++)); do
  # Each round starts the contender order one further along, so none is always first.
  rotated=("${order[@]:$(((r - 1) % ${#order[@]}))}" "${order[@]:0:$(((r - 1) % ${#order[@]}))}")
  for w in $WORKLOADS; do
    # Fresh processes for every workload: memory before and at peak belongs to it alone.
    start_all
    for c in "${rotated[@]}"; do
      degraded_before="$(degraded)"
      case "$w" in
        streams) run_streams "$r" "$c" ;;
        idle) [[ "$c" == direct ]] || run_idle "$r" "$c" ;;
        *) run_wrk "$r" "$w" "$c" ;;
      esac
      [[ "$c" != redis ]] || emit "$r" "$w" "$c" degraded "$(($(degraded) - degraded_before))"
    done
    stop_all "$r" "$w"
  done
done
log "measured in $((SECONDS - started)) s"

# ---------------------------------------------------------------- report
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo '+dirty')"
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "kernel=$(uname -sr)"
  echo "rustc=$(rustc --version 2>/dev/null || echo '?')"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*version: //')"
  echo "redis=$(redis-server --version | awk '{ print $3 }' | sed 's/v=//')"
  echo "wrk=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
  echo "command=$COMMAND"
  echo "rounds=$ROUNDS"
  echo "seconds=$DURATION"
  echo "warmup=$WARMUP"
  echo "connections=$CONNS"
  echo "threads=$THREADS"
  echo "chunks=$CHUNKS"
  echo "streams=$STREAMS"
  echo "stream_chunks=$STREAM_CHUNKS"
  echo "stream_delay_ms=$STREAM_DELAY_MS"
  echo "stream_ramp=$STREAM_RAMP"
  echo "stream_hold=$STREAM_HOLD"
  echo "idle_connections=$IDLE_CONNS"
  echo "nofile=$NOFILE"
  echo "elapsed_s=$((SECONDS - started))"
  echo "features=$FEATURES"
  echo "note=${BENCH_NOTE:-}${HWM_NOTE:+ $HWM_NOTE}"
} >"$OUT/meta.txt"
"$(chart_python)" "$ROOT/bench/report.py" "$OUT" "$ROOT/bench/RESULTS.md" "$ROOT/bench/run-chart.png" ||
  die "report failed"
log "raw outputs in $OUT/, table in bench/RESULTS.md, chart in bench/run-chart.png"
awk -F'\t' '$4 == "non2xx" && $5 != 0 { bad = 1; print "[bench] WARNING: " $2 " via " $3 " (round " $1 ") had " $5 " non-2xx responses" > "/dev/stderr" }
  END { exit bad }' "$OUT/results.tsv"
