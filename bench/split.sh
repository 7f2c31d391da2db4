#!/usr/bin/env bash
# Where a proxy's CPU goes: user time (the proxy's own code and its libraries) against system
# time (the kernel's socket work), per request, for nginx and for keyrelay (embedded store)
# in front of the same release mock. wrk runs chat and 20-chunk streams at c=64, nginx and
# keyrelay alternating in ABBA order, so a slow spell of a shared machine falls on both.
# utime and stime come from /proc/PID/stat over each measured run (nginx: master and workers).
# Prints every run, then the medians and keyrelay / nginx. Loopback only; stops only what it
# started. Usage: bash bench/split.sh
#
# Knobs (environment): SPLIT_ROUNDS (4), SPLIT_SECONDS (8 per run), SPLIT_CONNECTIONS (64),
# SPLIT_THREADS (2), NO_BUILD (1 = use ${CARGO_TARGET_DIR:-target}/release as it is).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${SPLIT_ROUNDS:-4}"
SECS="${SPLIT_SECONDS:-8}"
CONNS="${SPLIT_CONNECTIONS:-64}"
THREADS="${SPLIT_THREADS:-2}"
READY_DEADLINE=30
PREFIX=split
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
need wrk wrk
need nginx nginx-light
need curl curl
need python3 python3
build_release keyrelay keyrelay-mock
start_mock
start_nginx nginx "127.0.0.1:$MOCK_PORT" "sk-bench-nginx-fixed"
start_keyrelay kr "" ""

declare -A URL PROCS
URL[nginx]="$NGINX_URL"
URL[keyrelay]="$KR_URL"
PROCS[nginx]="$NGINX_PID $(children "$NGINX_PID" | tr '\n' ' ')"
PROCS[keyrelay]="$KR_PID"
chat_lua "$TMP/chat.lua" false "$BENCH_TOKEN"
chat_lua "$TMP/stream.lua" true "$BENCH_TOKEN"

# ticks PID...: "utime stime" summed over the processes, in clock ticks.
ticks() {
  local pid u=0 s=0 a b
  for pid in "$@"; do
    read -r a b < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }') || continue
    u=$((u + a)) s=$((s + b))
  done
  echo "$u $s"
}

run() { # run PROXY WORKLOAD -> "req/s user_us_per_request sys_us_per_request"
  local u1 s1 u2 s2
  # shellcheck disable=SC2086
  read -r u1 s1 < <(ticks ${PROCS[$1]})
  timeout $((SECS + 30)) wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --timeout 10s \
    -s "$TMP/$2.lua" "${URL[$1]}" >"$TMP/wrk.out" 2>&1 || die "wrk failed: $(cat "$TMP/wrk.out")"
  grep -q "Non-2xx" "$TMP/wrk.out" && die "non-2xx answers via $1: $(cat "$TMP/wrk.out")"
  # shellcheck disable=SC2086
  read -r u2 s2 < <(ticks ${PROCS[$1]})
  awk -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v hz="$(getconf CLK_TCK)" '
    / requests in / { n = $1 }
    /^Requests\/sec:/ { r = $2 }
    END { printf "%s %.1f %.1f\n", r, u / hz * 1e6 / n, s / hz * 1e6 / n }' "$TMP/wrk.out"
}

declare -A RPS USR SYS
for p in nginx keyrelay; do
  for w in chat stream; do run "$p" "$w" >/dev/null; done # warm-up
done
for ((r = 0; r < ROUNDS; r++)); do
  order=(nginx keyrelay)
  ((r % 2 == 1)) && order=(keyrelay nginx)
  for w in chat stream; do
    line="round $((r + 1)) $w:"
    for p in "${order[@]}"; do
      run "$p" "$w" >"$TMP/run.out" # in this shell, so that a failure (die) ends the script
      read -r rps usr sys <"$TMP/run.out"
      RPS[$p$w]+="$rps " USR[$p$w]+="$usr " SYS[$p$w]+="$sys "
      line+=" $p $rps req/s, user $usr us, system $sys us;"
    done
    echo "$line"
  done
done

for w in chat stream; do
  for f in RPS USR SYS; do
    declare -n fig="$f"
    n="$(median <<<"${fig[nginx$w]}")" k="$(median <<<"${fig[keyrelay$w]}")"
    case $f in
      RPS) what="req/s" ;;
      USR) what="user CPU us/request" ;;
      SYS) what="system CPU us/request" ;;
    esac
    printf '%-6s median %-22s nginx %8s  keyrelay %8s  keyrelay/nginx %.2f\n' \
      "$w" "$what" "$n" "$k" "$(python3 -c "print($k/$n)")"
    unset -n fig
  done
done
