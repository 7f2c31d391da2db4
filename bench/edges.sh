#!/usr/bin/env bash
# Hostile edges, against the release binary with normal traffic beside: slow connections
# (silent, HTTP/2 preface only, slow header, slow body) timed until keyrelay closes them, its
# RSS per slow connection, the normal traffic's errors and p99 against a baseline; then a
# keyrelay under a low `ulimit -n` with idle clients holding every descriptor it allows: its
# logs, its CPU while held, and how soon it serves again once they go; and the same with the
# limit lowered after start, so accept() itself runs out of descriptors.
# Loopback only; every step bounded in time; stops only the processes it started.
# Usage: bash bench/edges.sh   (the clients are bench/edges.py)
#
# Knobs (environment): EDGES_HEADER_TIMEOUT ("3s"), EDGES_SILENT (2000), EDGES_PREFACE (200),
# EDGES_SLOW_HEADER (200), EDGES_SLOW_BODY (200), EDGES_WATCH (15, seconds the slow clients
# are watched), EDGES_BASELINE (10, seconds of normal traffic alone), EDGES_BODY_READ_TIMEOUT
# ("3s", server.body_read_timeout; the slow-body clients send a byte every 5 s, slower than it),
# EDGES_ULIMIT (512), EDGES_HOLD (1000 idle connections), EDGES_HOLD_SECONDS (8),
# EDGES_NO_BUILD (0; 1 = use the binaries in ${CARGO_TARGET_DIR:-target}/release as they are).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEADER_TIMEOUT="${EDGES_HEADER_TIMEOUT:-3s}"
SILENT="${EDGES_SILENT:-2000}"
PREFACE="${EDGES_PREFACE:-200}"
SLOW_HEADER="${EDGES_SLOW_HEADER:-200}"
SLOW_BODY="${EDGES_SLOW_BODY:-200}"
WATCH="${EDGES_WATCH:-15}"
BASELINE="${EDGES_BASELINE:-10}"
BODY_READ_TIMEOUT="${EDGES_BODY_READ_TIMEOUT:-3s}"
LOW_ULIMIT="${EDGES_ULIMIT:-512}"
HOLD="${EDGES_HOLD:-1000}"
HOLD_SECONDS="${EDGES_HOLD_SECONDS:-8}"
NO_BUILD="${EDGES_NO_BUILD:-0}"
READY_DEADLINE=30 # seconds for a process to answer
CLIENT="$ROOT/bench/edges.py"

PREFIX=edges
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in SILENT PREFACE SLOW_HEADER SLOW_BODY WATCH BASELINE LOW_ULIMIT HOLD HOLD_SECONDS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
need curl curl
need python3 python3
build_release keyrelay keyrelay-mock
KEYRELAY="$TARGET_DIR/release/keyrelay"
MOCK="$TARGET_DIR/release/keyrelay-mock"
[[ -x "$KEYRELAY" && -x "$MOCK" ]] || die "$KEYRELAY or $MOCK not found (build them or unset EDGES_NO_BUILD)"

TOKEN="edges-client-token-$$-$RANDOM"
MOCK_PORT="$(free_port)"
"$MOCK" "127.0.0.1:$MOCK_PORT" >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http mock "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" \
  -X POST -H "Authorization: Bearer sk-edges-direct" -H 'Content-Type: application/json' --data '{}'

# start_keyrelay NAME HEADER_TIMEOUT [ULIMIT]: start a keyrelay; sets KR_PID, KR_PORT, ADMIN.
start_keyrelay() {
  local name="$1" header="$2" limit="${3:-}" body_line=""
  if [[ -n "$BODY_READ_TIMEOUT" ]]; then body_line="body_read_timeout = \"$BODY_READ_TIMEOUT\""; fi
  KR_PORT="$(free_port)"
  ADMIN="127.0.0.1:$(free_port)"
  cat >"$TMP/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$KR_PORT"
header_read_timeout = "$header"
$body_line

[admin]
listen = "$ADMIN"

[[clients]]
name = "edges"
token = "env:KEYRELAY_EDGES_TOKEN"

[[providers]]
name = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
route = "/v1"
rpm = 100000000
keys = "env:EDGES_OPENAI_KEY_*"
EOF
  local envs=(KEYRELAY_LOG=info "KEYRELAY_EDGES_TOKEN=$TOKEN" EDGES_OPENAI_KEY_1=sk-edges-key-1)
  # From its own temp dir, so no .env of the caller's is picked up; the ulimit only in there.
  (
    cd "$TMP"
    if [[ -n "$limit" ]]; then ulimit -n "$limit"; fi
    exec env "${envs[@]}" "$KEYRELAY" --config "$TMP/$name.toml"
  ) >"$TMP/$name.log" 2>&1 &
  KR_PID=$!
  PIDS+=("$KR_PID")
  wait_http "$name" "$KR_PID" "http://$ADMIN/healthz"
}

URL_PATH=/v1/chat/completions
BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello."}]}'
chat() { # chat PORT: the status of one chat request (000 when refused)
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data "$BODY" "http://127.0.0.1:$1$URL_PATH" || true
}

# ---------------------------------------------------------------- 1. slow clients
start_keyrelay slow "$HEADER_TIMEOUT"
[[ "$(chat "$KR_PORT")" == 200 ]] || die "keyrelay does not serve: $(tail -n 20 "$TMP/slow.log")"
log "baseline: normal traffic alone for ${BASELINE}s"
timeout $((BASELINE + 30)) python3 "$CLIENT" normal "http://127.0.0.1:$KR_PORT$URL_PATH" "$TOKEN" "$BASELINE" \
  >"$TMP/baseline.json" || die "the baseline traffic failed"
log "attack: $SILENT silent, $PREFACE HTTP/2-preface-only, $SLOW_HEADER slow-header, $SLOW_BODY slow-body connections (header_read_timeout $HEADER_TIMEOUT), watched ${WATCH}s, normal traffic beside"
timeout $((WATCH + 40)) python3 "$CLIENT" normal "http://127.0.0.1:$KR_PORT$URL_PATH" "$TOKEN" $((WATCH + 2)) \
  >"$TMP/beside.json" &
NORMAL_PID=$!
PIDS+=("$NORMAL_PID")
sleep 1
timeout $((WATCH + 60)) python3 "$CLIENT" slow "127.0.0.1:$KR_PORT" "$KR_PID" "http://$ADMIN" "$TOKEN" "$WATCH" \
  "$SILENT" "$PREFACE" "$SLOW_HEADER" "$SLOW_BODY" >"$TMP/slow.json" || die "the slow client failed"
wait "$NORMAL_PID" || die "the normal traffic beside failed"
[[ "$(chat "$KR_PORT")" == 200 ]] || die "keyrelay does not serve after the attack"
stop_pid "$KR_PID"

# ---------------------------------------------------------------- 2. low ulimit
log "ulimit -n $LOW_ULIMIT: $HOLD idle connections held ${HOLD_SECONDS}s"
start_keyrelay held 60s "$LOW_ULIMIT"
[[ "$(chat "$KR_PORT")" == 200 ]] || die "keyrelay (ulimit) does not serve"
timeout $((HOLD_SECONDS + 60)) python3 "$CLIENT" hold "127.0.0.1:$KR_PORT" "$KR_PID" "$HOLD" "$HOLD_SECONDS" \
  >"$TMP/hold.json" &
HOLD_PID=$!
PIDS+=("$HOLD_PID")
sleep $((HOLD_SECONDS / 2 + 1))
during="$(chat "$KR_PORT")"
wait "$HOLD_PID" || die "the hold client failed"
released=$SECONDS recovered=""
while ((SECONDS - released < 10)); do
  if [[ "$(chat "$KR_PORT")" == 200 ]]; then
    recovered=$((SECONDS - released))
    break
  fi
  sleep 0.1
done
kill -0 "$KR_PID" 2>/dev/null || die "keyrelay exited under the hold: $(tail -n 20 "$TMP/held.log")"
lowered="$(grep -c 'max_connections lowered' "$TMP/held.log" || true)"
refusals="$(grep -c 'connection refused' "$TMP/held.log" || true)"
accept_errors="$(grep -c 'accept failed' "$TMP/held.log" || true)"
refused_total="$(curl -s --max-time 5 "http://$ADMIN/metrics" | awk '/^keyrelay_connections_refused_total / { print $2 }')"
stop_pid "$KR_PID"

# ---------------------------------------------------------------- 3. out of descriptors
# The limit lowered after start (prlimit), so the cap fitted at start is far above it and
# accept() itself fails with EMFILE: the path a leak or a burst of upstream sockets would take.
emfile=""
if command -v prlimit >/dev/null 2>&1; then
  start_keyrelay emfile 60s
  [[ "$(chat "$KR_PORT")" == 200 ]] || die "keyrelay (emfile) does not serve"
  fds=$(($(ls "/proc/$KR_PID/fd" | wc -l) + 16))
  prlimit --pid "$KR_PID" --nofile="$fds:$fds" || die "prlimit failed"
  log "out of descriptors: limit $fds set after start, $HOLD idle connections held ${HOLD_SECONDS}s"
  timeout $((HOLD_SECONDS + 60)) python3 "$CLIENT" hold "127.0.0.1:$KR_PORT" "$KR_PID" "$HOLD" "$HOLD_SECONDS" \
    >"$TMP/emfile.json" &
  HOLD_PID=$!
  PIDS+=("$HOLD_PID")
  sleep $((HOLD_SECONDS / 2 + 1))
  emfile_during="$(chat "$KR_PORT")"
  wait "$HOLD_PID" || die "the hold client failed"
  released=$SECONDS emfile_recovered=""
  while ((SECONDS - released < 10)); do
    if [[ "$(chat "$KR_PORT")" == 200 ]]; then
      emfile_recovered=$((SECONDS - released))
      break
    fi
    sleep 0.1
  done
  emfile_lines="$(grep -c 'accept failed' "$TMP/emfile.log" || true)"
  emfile="limit $fds: $(python3 -c 'import json,sys; h=json.load(open(sys.argv[1])); print("keyrelay CPU %s%% while %s clients waited, %s connects timed out" % (h["cpu_percent_while_held"], h["held_open"], h["connect_failed"]))' "$TMP/emfile.json");"
  emfile+=" a chat request meanwhile: HTTP $emfile_during; $emfile_lines 'accept failed' line(s) over"
  emfile+=" ${HOLD_SECONDS}s and more; after release: 200 within ${emfile_recovered:-(not within 10)}s"
  stop_pid "$KR_PID"
else
  log "prlimit not found (util-linux): skipping the out-of-descriptors run"
fi

# ---------------------------------------------------------------- report
echo "== slow clients (header_read_timeout $HEADER_TIMEOUT${BODY_READ_TIMEOUT:+, body_read_timeout $BODY_READ_TIMEOUT}, watched ${WATCH}s;"
echo "   closed after: seconds from the client's connect, so time in the accept queue counts)"
python3 - "$TMP/slow.json" "$TMP/baseline.json" "$TMP/beside.json" <<'EOF'
import json, sys
slow, base, beside = (json.load(open(p)) for p in sys.argv[1:4])
print(f"{'kind':<12} {'total':>6} {'closed':>7} {'open':>6} {'first_s':>8} {'last_s':>7}")
for kind, k in slow["kinds"].items():
    print(f"{kind:<12} {k['total']:>6} {k['closed']:>7} {k['still_open']:>6} "
          f"{str(k['closed_after_min_s']):>8} {str(k['closed_after_max_s']):>7}")
print(f"keyrelay RSS {slow['rss_before_kib']} KiB before, {slow['rss_at_peak_kib']} KiB with the most "
      f"slow connections open ({slow['peak_held']}): {slow['rss_per_slow_connection_kib']} KiB per slow "
      f"connection; CPU {slow['cpu_percent']}% while watched")
print(f"normal traffic alone:  {base['requests']} requests, {base['errors']} errors, "
      f"p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms")
ratio = (f" ({beside['p99_ms'] / base['p99_ms']:.2f}x baseline)"
         if base['p99_ms'] and beside['p99_ms'] else "")
print(f"normal traffic beside: {beside['requests']} requests, {beside['errors']} errors "
      f"{beside['error_kinds']}, p50 {beside['p50_ms']} ms, p99 {beside['p99_ms']} ms{ratio}")
EOF
echo "== ulimit -n $LOW_ULIMIT, $HOLD idle connections held ${HOLD_SECONDS}s"
python3 - "$TMP/hold.json" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))
print(f"held open {h['held_open']}, closed at once {h['closed_at_once']}, "
      f"connect failed {h['connect_failed']} {h['connect_errors']}; keyrelay CPU {h['cpu_percent_while_held']}% while held")
EOF
echo "a chat request while held: HTTP $during; after release: 200 within ${recovered:-(not within 10)}s"
echo "keyrelay log: $lowered 'max_connections lowered' warning(s), $refusals 'connection refused' line(s)" \
  "(at most one a second), $accept_errors 'accept failed' line(s);" \
  "keyrelay_connections_refused_total ${refused_total:-?}"
if [[ -n "$emfile" ]]; then
  echo "== out of descriptors (accept() failing with EMFILE)"
  echo "$emfile"
fi
