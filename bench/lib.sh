# Shared by the bench scripts: logging, the processes a script starts (stopped on exit, by PID
# only), free loopback ports, readiness polling, RSS and descriptor counts, release builds.
# Source it after setting PREFIX (the log prefix) and READY_DEADLINE (seconds).

log() { printf '[%s] %s\n' "$PREFIX" "$*" >&2; }
die() {
  printf '[%s] FAIL: %s\n' "$PREFIX" "$*" >&2
  exit 1
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-$PREFIX.XXXXXX")"
PIDS=()

# stop_pid PID: TERM, wait up to 5 s, then KILL.
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# rss_kib PID: resident memory in KiB, or nothing if the process is gone.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
# fds PID: open file descriptors.
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# threads PID
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# wait_http NAME PID URL [curl args...]: poll until URL answers any HTTP status, or fail.
wait_http() {
  local name="$1" pid="$2" url="$3" code deadline=$((SECONDS + READY_DEADLINE))
  shift 3
  while :; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup; its log:
$(cat "$TMP/$name.log" 2>/dev/null)"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != 000 ]] && return 0
    ((SECONDS < deadline)) || die "$name did not answer at $url within ${READY_DEADLINE}s"
    sleep 0.05
  done
}

# need CMD DEBIAN_PACKAGE: install it with apt-get when root, else fail naming it.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "$1 not found; installing $2 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1 || die "$1 is required (Debian: apt-get install $2)"
}

# build_release PACKAGE...: cargo build --release unless NO_BUILD=1; sets TARGET_DIR.
build_release() {
  if [[ "${NO_BUILD:-0}" != 1 ]]; then
    log "building release binaries ($*)"
    local args=()
    for p in "$@"; do args+=(-p "$p"); done
    (cd "$ROOT" && cargo build --release -q "${args[@]}") || die "release build failed"
  fi
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
}

# start_redis: a redis-server on REDIS_PORT (picked on the first call, kept for restarts), no
# persistence; sets REDIS_PID.
start_redis() {
  REDIS_PORT="${REDIS_PORT:-$(free_port)}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP" >>"$TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local deadline=$((SECONDS + READY_DEADLINE))
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "redis-server did not start on $REDIS_PORT"
    sleep 0.05
  done
}

# median: the median of the numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

# chat_lua FILE STREAM TOKEN: a wrk script posting the ~1 KB chat body with "stream": STREAM
# (true or false) and TOKEN as the bearer; the mock answers a stream with 20 chunks.
chat_lua() {
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = [[{"model":"mock","stream":$2,"messages":[{"role":"user","content":"$(printf 'x%.0s' {1..900})"}]}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $3"
wrk.headers["x-mock-chunks"] = "20"
LUA
}

# start_mock: the release mock on a free port; sets MOCK_PORT and MOCK_URL.
start_mock() {
  MOCK_PORT="$(free_port)"
  MOCK_URL="http://127.0.0.1:$MOCK_PORT"
  "$TARGET_DIR/release/keyrelay-mock" "127.0.0.1:$MOCK_PORT" >"$TMP/mock.log" 2>&1 &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  wait_http mock "$MOCK_PID" "$MOCK_URL/__mock/stats"
}

BENCH_TOKEN="bench-token-$$-$RANDOM"
BENCH_KEYS=(sk-bench-key-1 sk-bench-key-2 sk-bench-key-3)

# start_keyrelay NAME STORE_URL PROVIDER_EXTRA [KEYRELAY_ARGS...]: a release keyrelay in front
# of the mock (x-mock-* headers passed, three keys, client token BENCH_TOKEN), on Redis when
# STORE_URL is set, logging at KR_LOG (warn), with KR_SERVER_EXTRA (TOML lines) added to its
# [server] section and KR_STORE_EXTRA to its [store] section; sets KR_PID, KR_URL and ADMIN_URL.
# KR_FEATURES=1 turns on what the other issues added, each set so it never refuses a request:
# resource affinity (a secret), token metering (a tpm on the keys), and BENCH_TOKEN as the
# client of a tenant with its own three keys, with request and token limits on the client and
# on the tenant (so each request is checked against them, in Redis when the store is).
start_keyrelay() {
  local name="$1" store="$2" extra="$3" port admin client_token=BENCH_TOKEN BIG=4000000000 provider_tpm=""
  shift 3
  # With features on, BENCH_TOKEN is the tenant's client; the shared one is never used.
  if [[ "${KR_FEATURES:-0}" == 1 ]]; then
    client_token=BENCH_SHARED_TOKEN provider_tpm="tpm = $BIG"
  fi
  port="$(free_port)" admin="$(free_port)"
  cat >"$TMP/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "30s"
${KR_SERVER_EXTRA:-}

[upstream]
pass_headers = ["x-mock-*"]

[admin]
listen = "127.0.0.1:$admin"

[[clients]]
name = "bench"
token = "env:$client_token"

[[providers]]
name = "openai"
base_url = "$MOCK_URL/v1"
route = "/v1"
rpm = 100000000
keys = "env:BENCH_KEY_*"
$provider_tpm
$extra
TOML
  if [[ "${KR_FEATURES:-0}" == 1 ]]; then
    cat >>"$TMP/$name.toml" <<TOML

[affinity]
secret = "env:BENCH_AFFINITY_SECRET"

[[tenants]]
name = "bench"
rpm = $BIG
tpm = $BIG

[[tenants.clients]]
name = "bench-tenant"
token = "env:BENCH_TOKEN"
rpm = $BIG
tpm = $BIG

[[tenants.providers]]
name = "openai"
keys = "env:BENCH_TENANT_KEY_*"
rpm = 100000000
tpm = $BIG
TOML
  fi
  if [[ -n "$store" ]]; then
    printf '\n[store]\nurl = "%s"\n%s\n' "$store" "${KR_STORE_EXTRA:-}" >>"$TMP/$name.toml"
  fi
  # From its own temp dir, so no .env of the caller's is picked up.
  (cd "$TMP" && exec env KEYRELAY_LOG="${KR_LOG:-warn}" BENCH_TOKEN="$BENCH_TOKEN" \
    BENCH_SHARED_TOKEN="$BENCH_TOKEN-shared" BENCH_AFFINITY_SECRET="bench-affinity-secret-$$-$RANDOM" \
    BENCH_KEY_1="${BENCH_KEYS[0]}" BENCH_KEY_2="${BENCH_KEYS[1]}" BENCH_KEY_3="${BENCH_KEYS[2]}" \
    BENCH_TENANT_KEY_1="${BENCH_KEYS[0]}-tenant" BENCH_TENANT_KEY_2="${BENCH_KEYS[1]}-tenant" \
    BENCH_TENANT_KEY_3="${BENCH_KEYS[2]}-tenant" \
    "$TARGET_DIR/release/keyrelay" "$@" --config "$TMP/$name.toml") >"$TMP/$name.log" 2>&1 &
  KR_PID=$!
  PIDS+=("$KR_PID")
  KR_URL="http://127.0.0.1:$port/v1/chat/completions"
  ADMIN_URL="http://127.0.0.1:$admin"
  wait_http "$name" "$KR_PID" "$ADMIN_URL/healthz"
}

# cpu_ticks PID...: utime + stime of the processes together, in clock ticks (CLK_TCK a second).
# The fields are counted after the ")" that ends the command name, which may hold spaces.
cpu_ticks() {
  local pid total=0 t
  for pid in "$@"; do
    t="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')" || t=0
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# rss_sum_kib PID...: resident memory of the processes together, in KiB.
rss_sum_kib() {
  local pid total=0 r
  for pid in "$@"; do
    r="$(rss_kib "$pid")"
    total=$((total + ${r:-0}))
  done
  echo "$total"
}

# hwm_sum_kib PID...: peak resident memory (VmHWM) of the processes together, in KiB.
hwm_sum_kib() {
  local pid total=0 r
  for pid in "$@"; do
    r="$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)"
    total=$((total + ${r:-0}))
  done
  echo "$total"
}

# reset_hwm PID...: restart the processes' VmHWM from their current RSS (clear_refs 5, Linux
# 4.0+, our own processes only); returns 1 if the kernel refused, so the peak then spans the
# process's whole life.
reset_hwm() {
  local pid ok=0
  for pid in "$@"; do
    { echo 5 >"/proc/$pid/clear_refs"; } 2>/dev/null || ok=1
  done
  return "$ok"
}

# raise_nofile N: raise this shell's open-file limit (inherited by what it starts) towards N,
# as far as the hard limit allows; prints the limit it got.
raise_nofile() {
  local want="$1" hard
  hard="$(ulimit -Hn)"
  if [[ "$hard" != unlimited ]] && ((hard < want)); then want="$hard"; fi
  if (($(ulimit -Sn) < want)); then ulimit -Sn "$want" 2>/dev/null || true; fi
  ulimit -Sn
}

# start_nginx NAME UPSTREAM_HOST_PORT KEY: a plain nginx reverse proxy (proxy_pass with upstream
# keep-alive, proxy_buffering off, one fixed Authorization header "Bearer KEY") run as the
# current user from the nginx binary, its config, pid, logs and temp paths under $TMP/NAME;
# sets NGINX_PID (the master), NGINX_PORT and NGINX_URL. Workers: NGINX_WORKERS (auto).
start_nginx() {
  local name="$1" upstream="$2" key="$3" dir="$TMP/$1" user=""
  mkdir -p "$dir/logs" "$dir/temp"
  NGINX_PORT="$(free_port)"
  NGINX_URL="http://127.0.0.1:$NGINX_PORT/v1/chat/completions"
  # As root the workers would switch to "nobody", who cannot read $TMP: keep them as us.
  if [[ "$(id -u)" -eq 0 ]]; then user="user $(id -un) $(id -gn);"; fi
  cat >"$dir/nginx.conf" <<NGINX
$user
worker_processes ${NGINX_WORKERS:-auto};
worker_rlimit_nofile $(ulimit -Sn);
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $(( $(ulimit -Sn) - 64 )); }
http {
  access_log off;
  client_body_temp_path $dir/temp/body;
  proxy_temp_path $dir/temp/proxy;
  fastcgi_temp_path $dir/temp/fastcgi;
  uwsgi_temp_path $dir/temp/uwsgi;
  scgi_temp_path $dir/temp/scgi;
  keepalive_timeout 600s;
  keepalive_requests 100000000;
  upstream mock {
    server $upstream;
    keepalive 1024;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $key";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }
  }
}
NGINX
  nginx -t -q -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" >"$TMP/$name.log" 2>&1 ||
    die "nginx refused its config: $(cat "$TMP/$name.log")"
  nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" >>"$TMP/$name.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_http "$name" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/__mock/stats"
}

# children PID: the PIDs whose parent is PID (nginx's workers).
children() {
  if command -v pgrep >/dev/null 2>&1; then
    pgrep -P "$1" || true
  else
    grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3
  fi
}
