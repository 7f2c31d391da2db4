#!/usr/bin/env bash
# A/B two keyrelay binaries (e.g. the system allocator against mimalloc) on wall-clock
# throughput: one release mock, both keyrelays side by side (embedded store, same config), wrk
# alternating between them in ABBA order for chat and for 20-chunk streams, so a slow spell of
# a shared machine falls on both. Prints each round's req/s, the median per binary and
# workload, keyrelay's CPU per request (from /proc, robust to a busy machine), and each
# binary's peak RSS. Loopback only; stops only what it started.
# Usage: bash bench/ab.sh BINARY_A BINARY_B
#
# A third workload, held (in AB_WORKLOADS): AB_STREAMS streams at once, each 200 chunks 20 ms
# apart (a model's tokens, each chunk its own read and write), opened over 3 s and held
# AB_SECONDS, driven by keyrelay-loadgen; its figures are chunks a second and keyrelay's CPU per
# chunk (the streams' requests included), the "CPU/req" columns then being per chunk.
#
# Knobs (environment): AB_ROUNDS (4, ABBA pairs), AB_SECONDS (8 per run), AB_CONNECTIONS (64),
# AB_THREADS (2), AB_WORKLOADS ("chat stream"; any of chat, stream, held), AB_STREAMS (1000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${AB_ROUNDS:-4}"
SECS="${AB_SECONDS:-8}"
CONNS="${AB_CONNECTIONS:-64}"
THREADS="${AB_THREADS:-2}"
WORKLOADS="${AB_WORKLOADS:-chat stream}"
STREAMS="${AB_STREAMS:-1000}"
READY_DEADLINE=30
PREFIX=ab
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
(($# == 2)) || die "usage: bash bench/ab.sh BINARY_A BINARY_B"
need wrk wrk
need curl curl
need python3 python3
NO_BUILD=1 build_release keyrelay-mock
for w in $WORKLOADS; do
  [[ $w == chat || $w == stream || $w == held ]] || die "AB_WORKLOADS: unknown workload '$w'"
done
LOADGEN="$TARGET_DIR/release/keyrelay-loadgen"
if [[ " $WORKLOADS " == *" held "* ]]; then
  [[ -x "$LOADGEN" ]] || die "$LOADGEN not found (cargo build --release -p keyrelay-loadgen)"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
start_mock

declare -A URL PID
for side in A B; do
  bin="$1"
  [[ $side == B ]] && bin="$2"
  [[ -x "$bin" ]] || die "$bin is not an executable"
  mkdir -p "$TMP/$side/release"
  ln -sf "$(readlink -f "$bin")" "$TMP/$side/release/keyrelay"
  TARGET_DIR="$TMP/$side" start_keyrelay "kr$side" "" ""
  URL[$side]="$KR_URL"
  PID[$side]="$KR_PID"
done

chat_lua "$TMP/chat.lua" false "$BENCH_TOKEN"
chat_lua "$TMP/stream.lua" true "$BENCH_TOKEN"

run() { # run SIDE WORKLOAD -> "req/s cpu_us_per_request" (held: per chunk)
  local before after
  [[ $2 == held ]] && {
    held "$1"
    return
  }
  before="$(cpu_ticks "${PID[$1]}")"
  wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --timeout 10s -s "$TMP/$2.lua" "${URL[$1]}" \
    >"$TMP/wrk.out" 2>&1 || die "wrk failed: $(cat "$TMP/wrk.out")"
  grep -q "Non-2xx" "$TMP/wrk.out" && die "non-2xx answers: $(cat "$TMP/wrk.out")"
  after="$(cpu_ticks "${PID[$1]}")"
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    / requests in / { n = $1 }
    /^Requests\/sec:/ { r = $2 }
    END { printf "%s %.1f\n", r, t / hz * 1e6 / n }' "$TMP/wrk.out"
}

held() { # held SIDE -> "chunks/s cpu_us_per_chunk"
  local before after
  before="$(cpu_ticks "${PID[$1]}")"
  timeout $((SECS + 60)) "$LOADGEN" --kind streams --url "${URL[$1]}" --token "$BENCH_TOKEN" \
    --streams "$STREAMS" --chunks 200 --chunk-delay-ms 20 --ramp-secs 3 --hold-secs "$SECS" \
    >"$TMP/held.out" 2>&1 || die "loadgen held failed: $(tail -20 "$TMP/held.out")"
  after="$(cpu_ticks "${PID[$1]}")"
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /^streams / { for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } }
    END {
      if (f["chunks"] + 0 == 0 || f["failed"] + 0 > 0) exit 1
      printf "%.0f %.2f\n", f["chunks"] / f["seconds"], t / hz * 1e6 / f["chunks"]
    }' "$TMP/held.out" || die "held via $1: no chunks, or failed streams: $(cat "$TMP/held.out")"
}

declare -A ALL CPU PEAK
for side in A B; do
  for w in $WORKLOADS; do [[ $w == held ]] || run "$side" "$w" >/dev/null; done # warm-up
  PEAK[$side]=0
done
for ((r = 0; r < ROUNDS; r++)); do
  order=(A B)
  ((r % 2 == 1)) && order=(B A)
  for w in $WORKLOADS; do
    line="round $((r + 1)) $w:"
    for side in "${order[@]}"; do
      run "$side" "$w" >"$TMP/run.out" # in this shell, so that a failure (die) ends the script
      read -r rps cpu <"$TMP/run.out"
      ALL[$side$w]+="$rps "
      CPU[$side$w]+="$cpu "
      rss="$(rss_kib "${PID[$side]}")"
      ((rss > PEAK[$side])) && PEAK[$side]=$rss
      line+=" $side=$rps (${cpu} us CPU/req)"
    done
    echo "$line"
  done
done

for w in $WORKLOADS; do
  a="$(median <<<"${ALL[A$w]}")" b="$(median <<<"${ALL[B$w]}")"
  printf '%-6s median req/s: A %s, B %s, B/A %.3f\n' "$w" "$a" "$b" "$(python3 -c "print($b/$a)")"
  a="$(median <<<"${CPU[A$w]}")" b="$(median <<<"${CPU[B$w]}")"
  printf '%-6s median CPU us/request: A %s, B %s, B/A %.3f\n' "$w" "$a" "$b" "$(python3 -c "print($b/$a)")"
done
echo "RSS after the runs (KiB, highest sampled): A ${PEAK[A]}, B ${PEAK[B]}"
