# shellcheck shell=bash
# Shared by the benches/*.sh scripts (sourced, not run): tools, the work
# directory and its cleanup, the loopback upstream, and nginx and ado-auth-proxy configured for
# the same job. Expects ROOT and BENCH_NAME; the functions set UP_PID, NGINX_PID, PROXY_PID and BARE_PID.
# Every process started here is stopped on exit; everything listens on 127.0.0.1 only.

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

TENANT=3f1c2b7a-5d4e-4c8b-9a0f-6e2d1c3b4a59
CLIENT=8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d
UPSTREAM_BIN=$ROOT/target/release/examples/bench-upstream
PROXY_BIN=${PROXY_BIN:-$ROOT/target/release/ado-auth-proxy}
BARE_BIN=$ROOT/target/release/examples/bench-bare-proxy
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# need_tools COMMAND:PACKAGE...: installs from Debian the packages of the commands missing.
need_tools() {
  local pair need=() sudo=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || [[ -x /usr/sbin/${pair%%:*} ]] || need+=("${pair#*:}")
  done
  ((${#need[@]})) || return 0
  log "installing ${need[*]}"
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# build_release [--bin ado-auth-proxy]: the upstream and bare-proxy examples and, when asked, the proxy.
build_release() {
  local build=(cargo build --release --example bench-upstream --example bench-bare-proxy "$@")
  log "building: ${build[*]}"
  (cd "$ROOT" && flock /tmp/cargo.lock "${build[@]}")
}

# bench_init: the work directory (kept with KEEP_WORK=1 or on failure) and the cleanup of PIDS.
bench_init() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ado-bench.XXXXXX")
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  log "work directory: $WORK"
}

cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP_WORK:-0} == 1 || $rc -ne 0 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ports_free PORT...: dies naming the first one already in use on 127.0.0.1.
ports_free() {
  local p
  for p in "$@"; do port_free "$p" || die "port $p on 127.0.0.1 is in use (set *_PORT)"; done
}

# proxy_and_upstream: builds both unless SKIP_BUILD=1, and dies if either is missing.
proxy_and_upstream() {
  [[ ${SKIP_BUILD:-0} == 1 ]] || build_release --bin ado-auth-proxy
  [[ -x $UPSTREAM_BIN && -x $PROXY_BIN ]] || die "release binaries missing (build them or unset SKIP_BUILD)"
}

# wait_http URL SECONDS PID [HEADER]: until URL answers 200, the process died, or time is up
wait_http() {
  local url=$1 secs=$2 pid=$3 header=${4:-X-Bench: wait} i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(curl -s -H "$header" -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

# start_upstream PORT: the release-built loopback upstream (fake Azure DevOps and Entra ID).
start_upstream() {
  "$UPSTREAM_BIN" "$1" >"$WORK/upstream.log" 2>&1 9>&- &
  UP_PID=$!
  PIDS+=("$UP_PID")
  wait_http "http://127.0.0.1:$1/small" 10 "$UP_PID" || die "upstream did not start: $(cat "$WORK/upstream.log")"
}

# upstream_token PORT: the token the proxy will get from the upstream's fake Entra ID.
upstream_token() {
  local token
  token=$(curl -s --max-time 5 -X POST -d grant_type=client_credentials \
    "http://127.0.0.1:$1/$TENANT/oauth2/v2.0/token" |
    sed -n 's/.*"access_token":"\([A-Za-z0-9._-]*\)".*/\1/p')
  [[ ${#token} -gt 1000 ]] || die "no token from the upstream's token endpoint"
  echo "$token"
}

# write_nginx_conf DIR PORT UP_PORT TOKEN WORKERS BUFFER MASTER(on|off) [KEY]: nginx as the same
# token-injecting reverse proxy (see compare.sh's header for each choice). With KEY, nginx does
# the proxy's whole job with stock directives: the client from `Authorization` by a `map` of the
# literal key (stock nginx cannot hash), an allowlist of method and path (`map` of regexes, as
# the proxy's bench rules), `$request_id` sent upstream and returned, a JSON access line with
# the audit line's fields, and the header-read, connect and response timeouts set.
write_nginx_conf() {
  local n=$1 port=$2 up=$3 token=$4 workers=$5 buffer=$6 master=$7 key=${8:-}
  local http_job="" location_job="" log="combined"
  if [[ -n $key ]]; then
    local basic
    basic=$(printf 'bench:%s' "$key" | base64 -w0)
    log="audit"
    http_job=$(
      cat <<JOB
  # Before the maps: the literal credentials are longer than the default bucket holds.
  map_hash_bucket_size 256;
  log_format audit escape=json '{"time":"\$time_iso8601","request_id":"\$request_id","client":"\$client","peer":"\$remote_addr","rule":"\$rule","method":"\$request_method","path":"\$uri","status":\$status,"request_bytes":\$request_length,"response_bytes":\$bytes_sent,"duration":\$request_time,"upstream":"\$upstream_response_time"}';
  map \$http_authorization \$client {
    default "";
    "Basic $basic" bench;
    "Bearer $key" bench;
  }
  map "\$client:\$request_method:\$uri" \$rule {
    default "";
    "~^bench:GET:/small\$" "GET /small";
    "~^bench:GET:/download\$" "GET /download";
    "~^bench:(PUT|POST):/upload\$" "PUT,POST /upload";
    "~^bench:(GET|POST):/contoso/web/_git/web/" "GET,POST /contoso/web/_git/web/**";
  }
  client_header_timeout 10s;
JOB
    )
    location_job=$(
      cat <<JOB
      if (\$client = "") { return 401; }
      if (\$rule = "") { return 403; }
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id always;
      proxy_connect_timeout 10s;
JOB
    )
  fi
  mkdir -p "$n"/{client_body,proxy,fastcgi,uwsgi,scgi}
  cat >"$n/nginx.conf" <<CONF
worker_processes $workers;
daemon off;
master_process $master;
pid $n/nginx.pid;
error_log $n/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
$http_job
  access_log $n/access.log $log buffer=64k flush=100ms;
  client_body_temp_path $n/client_body;
  proxy_temp_path $n/proxy;
  fastcgi_temp_path $n/fastcgi;
  uwsgi_temp_path $n/uwsgi;
  scgi_temp_path $n/scgi;
  client_max_body_size 0;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  upstream ado {
    server 127.0.0.1:$up;
    keepalive 256;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
$location_job
      proxy_pass http://ado;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$up;
      proxy_set_header Authorization "Bearer $token";
      proxy_set_header Cookie "";
      proxy_buffering off;
      proxy_request_buffering off;
      # Same-size I/O buffers as the upstream's chunks; nginx's 4/8 KiB defaults stream 2-3x slower.
      proxy_buffer_size $buffer;
      proxy_buffers 8 $buffer;
      proxy_busy_buffers_size $((2 * ${buffer%k}))k;
      client_body_buffer_size $buffer;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }
  }
}
CONF
  "$NGINX" -p "$n" -c "$n/nginx.conf" -t >"$n/test.log" 2>&1 || die "nginx config: $(cat "$n/test.log")"
}

# start_nginx DIR [WRAPPER...]: nginx with DIR/nginx.conf, run under WRAPPER (e.g. valgrind).
start_nginx() {
  local n=$1
  shift
  "$@" "$NGINX" -p "$n" -c "$n/nginx.conf" >"$n/stdout.log" 2>&1 9>&- &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}

# write_proxy_conf DIR PORT ADMIN_PORT UP_PORT [KEY]: sidecar mode, no client keys (like plain
# nginx, which authenticates no one), one allow-all rule; with KEY, keys mode with one client of
# that key and the same few rules as nginx's same-job allowlist.
write_proxy_conf() {
  local p=$1 key=${5:-}
  mkdir -p "$p"
  cat >"$p/config.toml" <<CONF
[listen]
address = "127.0.0.1:$2"

[admin]
address = "127.0.0.1:$3"

[upstream]
url = "http://127.0.0.1:$4"

[identities.default]
tenant_id = "$TENANT"
client_id = "$CLIENT"
authority = "http://127.0.0.1:$4"

# Sidecar mode: no client keys (loopback listener), like nginx, which authenticates no one.
[inbound]
mode = "open"
allow = [{ methods = ["*"], path = "/**" }]
CONF
  if [[ -n $key ]]; then
    local hash
    hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
    sed -i '/^# Sidecar mode/,$d' "$p/config.toml"
    cat >>"$p/config.toml" <<CONF
[inbound]
mode = "keys"

[[clients]]
name = "bench"
key_sha256 = "$hash"
allow = [
  { methods = ["GET"], path = "/small" },
  { methods = ["GET"], path = "/download" },
  { methods = ["PUT", "POST"], path = "/upload" },
  { methods = ["GET", "POST"], path = "/contoso/web/_git/web/**" },
]
CONF
    return
  fi
  # Builds from before client keys existed have no [inbound] section (unknown keys are errors).
  local out
  if ! out=$(AZURE_CLIENT_SECRET=bench-not-a-secret timeout 30 "$PROXY_BIN" --config "$p/config.toml" check 2>&1 9>&-) &&
    grep -q 'inbound' <<<"$out"; then
    log "note: this proxy build has no [inbound] setting; running without it"
    sed -i '/^# Sidecar mode/,$d' "$p/config.toml"
  fi
}

# start_proxy DIR [WRAPPER...]: ado-auth-proxy with DIR/config.toml, run under WRAPPER.
start_proxy() {
  local p=$1
  shift
  AZURE_CLIENT_SECRET=bench-not-a-secret RUST_LOG=${PROXY_RUST_LOG:-info} \
    "$@" "$PROXY_BIN" ${PROXY_LOG_FORMAT:+--log-format "$PROXY_LOG_FORMAT"} --config "$p/config.toml" run \
    >"$p/stdout.log" 2>"$p/stderr.log" 9>&- &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
}

# start_bare PORT UP_PORT [WRAPPER...]: hyper server + hyper client and nothing else (see
# benches/bare_proxy.rs), the floor of the proxy's HTTP stack.
start_bare() {
  local port=$1 up=$2
  shift 2
  "$@" "$BARE_BIN" "$port" "$up" >"$WORK/bare.log" 2>&1 9>&- &
  BARE_PID=$!
  PIDS+=("$BARE_PID")
}
