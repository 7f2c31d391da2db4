#!/usr/bin/env bash
# Instructions per request: a release keyrelay (embedded store) under valgrind's callgrind in
# front of the release mock, driven by keyrelay-loadgen with a fixed number of chat requests
# and then of 20-chunk streams. Counting is switched on only after a warm-up, and dumped once
# per workload, so each figure is that workload's instructions divided by its requests. Counts
# are repeatable even on a busy machine (unlike timings). Loopback only; stops only what it
# started. Usage: bash bench/callgrind.sh
#
# A third workload, held: CG_HELD_STREAMS streams at once (10), each CG_HELD_CHUNKS chunks (50)
# 20 ms apart, back to back for CG_HELD_SECS (3): each chunk its own read and write, as a model's
# tokens are; its figure is instructions per chunk received (the requests' share included).
#
# Knobs (environment): CG_REQUESTS (2000 per workload), CG_CONCURRENCY (8), CG_WARMUP (200),
# CG_OUT (where the callgrind.out files and annotations are kept; default a temp dir that is
# printed), NO_BUILD (1 = use ${CARGO_TARGET_DIR:-target}/release as it is), KR_FEATURES (1 =
# keyrelay with affinity, a tenant, limits and token metering on, as BENCH_FEATURES in run.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${CG_REQUESTS:-2000}"
CONC="${CG_CONCURRENCY:-8}"
WARMUP="${CG_WARMUP:-200}"
READY_DEADLINE=120 # valgrind starts slowly
PREFIX=callgrind
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
OUT="${CG_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-callgrind.XXXXXX")}"
mkdir -p "$OUT"

need valgrind valgrind
need curl curl
need python3 python3
build_release keyrelay keyrelay-mock keyrelay-loadgen
REAL="$TARGET_DIR"
LOADGEN="$REAL/release/keyrelay-loadgen"
start_mock

# start_keyrelay runs $TARGET_DIR/release/keyrelay: point it at a wrapper that runs the real
# binary under callgrind, counting off until the warm-up is done.
mkdir -p "$TMP/wrap/release"
cat >"$TMP/wrap/release/keyrelay" <<SH
#!/usr/bin/env bash
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \\
  "$REAL/release/keyrelay" "\$@"
SH
chmod +x "$TMP/wrap/release/keyrelay"
TARGET_DIR="$TMP/wrap"
start_keyrelay cg "" ""
log "keyrelay under callgrind: pid $KR_PID, output in $OUT"

# With features on, streams ask for usage (every chunk then carries "usage":null, as OpenAI's).
USAGE=()
[[ "${KR_FEATURES:-0}" == 1 ]] && USAGE=(--usage)

load() { # load MIX REQUESTS
  "$LOADGEN" --url "$KR_URL" --token "$BENCH_TOKEN" --mix "$1" --requests "$2" "${USAGE[@]}" \
    --concurrency "$CONC" --timeout-secs 60 >"$TMP/loadgen-$1.log" 2>&1 ||
    die "loadgen $1 failed: $(tail -20 "$TMP/loadgen-$1.log")"
}

held() { # held: timed streams, chunks apart; prints the chunks received
  "$LOADGEN" --url "$KR_URL" --token "$BENCH_TOKEN" --kind streams "${USAGE[@]}" \
    --streams "${CG_HELD_STREAMS:-10}" --chunks "${CG_HELD_CHUNKS:-50}" --chunk-delay-ms 20 \
    --ramp-secs 0.2 --hold-secs "${CG_HELD_SECS:-3}" >"$TMP/loadgen-held.log" 2>&1 ||
    die "loadgen held failed: $(tail -20 "$TMP/loadgen-held.log")"
  sed -n 's/^streams .* chunks=\([0-9]*\) .*/\1/p' "$TMP/loadgen-held.log"
}

load normal=1 "$WARMUP"
load stream=1 "$WARMUP"
callgrind_control -i on "$KR_PID" >/dev/null
for w in chat stream held; do
  callgrind_control -z "$KR_PID" >/dev/null
  case $w in
    chat) load normal=1 "$REQUESTS" ;;
    stream) load stream=1 "$REQUESTS" ;;
    held) HELD_CHUNKS="$(held)" ;;
  esac
  callgrind_control -d "$w" "$KR_PID" >/dev/null
done
callgrind_control -i off "$KR_PID" >/dev/null

# The dumps are numbered in order: .1 is chat, .2 is stream, .3 is held.
for f in "$OUT"/callgrind.out.*; do
  [[ -f "$f" ]] || continue
  trigger="$(sed -n 's/^desc: Trigger: dump //p' "$f")"
  total="$(sed -n 's/^summary: //p;s/^totals: //p' "$f" | head -1)"
  [[ -n "$trigger" ]] || continue
  # Whole annotations to files, then cut (head in a pipe would fail the script on SIGPIPE).
  callgrind_annotate --inclusive=no "$f" >"$OUT/$trigger.self.full" 2>/dev/null
  callgrind_annotate --inclusive=yes "$f" >"$OUT/$trigger.incl.full" 2>/dev/null
  sed -n 1,40p "$OUT/$trigger.self.full" >"$OUT/$trigger.self.txt"
  sed -n 1,60p "$OUT/$trigger.incl.full" >"$OUT/$trigger.incl.txt"
  if [[ $trigger == held ]]; then
    [[ ${HELD_CHUNKS:-0} -gt 0 ]] || die "held: no chunks received"
    printf '%-7s %12s instructions in all, %8d per chunk (%s chunks)\n' \
      "$trigger" "$total" "$((total / HELD_CHUNKS))" "$HELD_CHUNKS"
  else
    printf '%-7s %12s instructions in all, %8d per request (%s requests)\n' \
      "$trigger" "$total" "$((total / REQUESTS))" "$REQUESTS"
  fi
done
log "annotations: $OUT/{chat,stream,held}.{self,incl}.txt"
