#!/usr/bin/env bash
# Instructions per request: a release keyrelay (embedded store) under valgrind's callgrind in
# front of the release mock, driven by keyrelay-loadgen with a fixed number of chat requests
# and then of 20-chunk streams. Counting is switched on only after a warm-up, and dumped once
# per workload, so each figure is that workload's instructions divided by its requests. Counts
# are repeatable even on a busy machine (unlike timings). Loopback only; stops only what it
# started. Usage: bash bench/callgrind.sh
#
# Knobs (environment): CG_REQUESTS (2000 per workload), CG_CONCURRENCY (8), CG_WARMUP (200),
# CG_OUT (where the callgrind.out files and annotations are kept; default a temp dir that is
# printed), NO_BUILD (1 = use ${CARGO_TARGET_DIR:-target}/release as it is).
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

load() { # load MIX REQUESTS
  "$LOADGEN" --url "$KR_URL" --token "$BENCH_TOKEN" --mix "$1" --requests "$2" \
    --concurrency "$CONC" --timeout-secs 60 >"$TMP/loadgen-$1.log" 2>&1 ||
    die "loadgen $1 failed: $(tail -20 "$TMP/loadgen-$1.log")"
}

load normal=1 "$WARMUP"
load stream=1 "$WARMUP"
callgrind_control -i on "$KR_PID" >/dev/null
for w in chat stream; do
  mix=normal=1
  [[ $w == stream ]] && mix=stream=1
  callgrind_control -z "$KR_PID" >/dev/null
  load "$mix" "$REQUESTS"
  callgrind_control -d "$w" "$KR_PID" >/dev/null
done
callgrind_control -i off "$KR_PID" >/dev/null

# The dumps are numbered in order: .1 is chat, .2 is stream.
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
  printf '%-7s %12s instructions in all, %8d per request (%s requests)\n' \
    "$trigger" "$total" "$((total / REQUESTS))" "$REQUESTS"
done
log "annotations: $OUT/{chat,stream}.{self,incl}.txt"
