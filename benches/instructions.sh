#!/usr/bin/env bash
# Instructions per proxied small GET, counted by callgrind, for ado-auth-proxy, for nginx doing
# the same job, and for hyper's server and client alone (bare). Requests/s and CPU time on this shared 2-core machine move by 20% between runs;
# an instruction count does not (the same binary, inputs and environment give the same total),
# so this is the yardstick for whether a change made the request path cheaper.
#
#   benches/instructions.sh                  # every target, 10 s of `wrk -t1 -c8` each
#   TARGETS=proxy DURATION=5s SKIP_BUILD=1 benches/instructions.sh
#
# Environment (defaults in brackets): TARGETS ["proxy nginx bare proxy_job nginx_job"] (bare:
# benches/bare_proxy.rs, hyper server + client alone, the floor of the proxy's stack; proxy and
# nginx: open mode and plain nginx, the rows measured since the second session; proxy_job and
# nginx_job: both doing the whole job as in compare.sh, a client key, rules, the JSON line), DURATION [10s], CONNECTIONS [8],
# SKIP_BUILD=1 (use target/release as it is), PROXY_BIN (another ado-auth-proxy binary to count,
# e.g. an older commit's), KEEP_WORK=1 (keep configs, logs and callgrind files),
# UP_PORT NGINX_PORT PROXY_PORT PROXY_ADMIN_PORT BARE_PORT [28081 28082 28083 28093 28084].
#
# Each target runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is on only
# while wrk measures (after a warm-up), and the count is the dump's total divided by the requests
# wrk completed. nginx runs one process (`master_process off`, one worker) so that one callgrind
# sees all of it; the proxy runs as configured by default (one worker thread per core). nginx and
# the proxy log every request, as in compare.sh (bare logs nothing). Every response must be 200: a
# proxy answering 503 would look cheap.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=instructions
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

TARGETS=${TARGETS:-"proxy nginx bare proxy_job nginx_job"}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
UP_PORT=${UP_PORT:-28081}
NGINX_PORT=${NGINX_PORT:-28082}
PROXY_PORT=${PROXY_PORT:-28083}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-28093}
BARE_PORT=${BARE_PORT:-28084}
export BENCH_UPSTREAM_THREADS=${BENCH_UPSTREAM_THREADS:-1}
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "DURATION must be seconds, like 10s"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
for t in $TARGETS; do
  case $t in nginx | proxy | bare | proxy_job | nginx_job) ;; *) die "unknown target '$t' (proxy, nginx, bare, proxy_job, nginx_job)" ;; esac
done

need_tools wrk:wrk curl:curl valgrind:valgrind
[[ " $TARGETS " == *" nginx"* ]] && need_tools nginx:nginx-light
[[ ${SKIP_BUILD:-0} == 1 ]] || build_release --bin ado-auth-proxy
[[ -x $UPSTREAM_BIN ]] || die "$UPSTREAM_BIN missing (build it or unset SKIP_BUILD)"
[[ " $TARGETS " != *" proxy"* || -x $PROXY_BIN ]] || die "$PROXY_BIN missing (build it or unset SKIP_BUILD)"
[[ " $TARGETS " != *" bare "* || -x $BARE_BIN ]] || die "$BARE_BIN missing (build it or unset SKIP_BUILD)"
ports_free "$UP_PORT" "$NGINX_PORT" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$BARE_PORT"

bench_init
start_upstream "$UP_PORT"
# The job targets' client key; only their requests carry it, so the other rows stay comparable
# with the figures measured before those targets existed.
CLIENT_KEY=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
AUTH="Authorization: Basic $(printf 'bench:%s' "$CLIENT_KEY" | base64 -w0)"

# count TARGET PID URL [HEADER]: Ir per request of the callgrind-run PID while wrk loads URL
count() {
  local t=$1 pid=$2 url=$3 out requests total dump extra=()
  [[ -z ${4:-} ]] || extra=(-H "$4")
  timeout 60 wrk -t1 -c"$CONNECTIONS" -d3s "${extra[@]}" "$url" >/dev/null || die "$t: warm-up failed"
  # callgrind_control reaches an idle process through vgdb (ptrace); never wait on it forever.
  timeout 60 callgrind_control -i on "$pid" >/dev/null 2>&1 || die "$t: callgrind_control failed"
  out=$(timeout $((${DURATION%s} + 60)) wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 30s "${extra[@]}" "$url") ||
    die "$t: wrk failed: $out"
  timeout 60 callgrind_control -i off "$pid" >/dev/null 2>&1 || die "$t: callgrind_control failed"
  timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1 || die "$t: callgrind_control failed"
  ! grep -q 'Non-2xx' <<<"$out" || die "$t: answers other than 200 while measuring: $out"
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  [[ ${requests:-0} -gt 0 ]] || die "$t: no requests completed: $out"
  for _ in $(seq 100); do
    dump=$(find "$WORK" -maxdepth 1 -name "cg.$t.*.1" | head -n 1)
    [[ -n $dump ]] && grep -q '^totals:' "$dump" && break
    sleep 0.1
  done
  # callgrind_control exits 0 even when it reached no process: no dump means no measurement.
  [[ -n $dump ]] || die "$t: callgrind wrote no dump"
  total=$(awk '/^totals:/ { print $2 }' "$dump")
  [[ $total =~ ^[1-9][0-9]*$ ]] || die "$t: no instruction total in $dump"
  log "$t: $requests requests, $total instructions"
  printf '%s\t%d\n' "$t" $((total / requests)) >>"$WORK/results.tsv"
}

# stop_target PID: frees its port for the next target (nginx and nginx_job, proxy and proxy_job
# share theirs); a callgrind-run process may take a moment to write its last dump and exit.
stop_target() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

callgrind() { # the wrapper: valgrind with instrumentation off until switched on
  local t=$1
  echo valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$WORK/cg.$t.%p"
}

: >"$WORK/results.tsv"
for t in $TARGETS; do
  read -r -a wrapper <<<"$(callgrind "$t")"
  case $t in
    nginx)
      token=$(upstream_token "$UP_PORT")
      write_nginx_conf "$WORK/nginx" "$NGINX_PORT" "$UP_PORT" "$token" 1 64k off
      start_nginx "$WORK/nginx" "${wrapper[@]}"
      wait_http "http://127.0.0.1:$NGINX_PORT/small" 120 "$NGINX_PID" || die "nginx did not start: $(cat "$WORK/nginx/stdout.log")"
      count nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/small"
      stop_target "$NGINX_PID"
      ;;
    nginx_job)
      token=$(upstream_token "$UP_PORT")
      write_nginx_conf "$WORK/nginx_job" "$NGINX_PORT" "$UP_PORT" "$token" 1 64k off "$CLIENT_KEY"
      start_nginx "$WORK/nginx_job" "${wrapper[@]}"
      wait_http "http://127.0.0.1:$NGINX_PORT/small" 120 "$NGINX_PID" "$AUTH" || die "nginx_job did not start: $(cat "$WORK/nginx_job/stdout.log")"
      count nginx_job "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/small" "$AUTH"
      stop_target "$NGINX_PID"
      ;;
    bare)
      start_bare "$BARE_PORT" "$UP_PORT" "${wrapper[@]}"
      wait_http "http://127.0.0.1:$BARE_PORT/small" 120 "$BARE_PID" || die "bare proxy did not start: $(cat "$WORK/bare.log")"
      count bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT/small"
      ;;
    proxy)
      write_proxy_conf "$WORK/proxy" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$UP_PORT"
      start_proxy "$WORK/proxy" "${wrapper[@]}"
      wait_http "http://127.0.0.1:$PROXY_ADMIN_PORT/readyz" 120 "$PROXY_PID" ||
        die "proxy not ready: $(tail -n 20 "$WORK/proxy/stderr.log")"
      count proxy "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/small"
      stop_target "$PROXY_PID"
      ;;
    proxy_job)
      write_proxy_conf "$WORK/proxy_job" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$UP_PORT" "$CLIENT_KEY"
      PROXY_LOG_FORMAT=json start_proxy "$WORK/proxy_job" "${wrapper[@]}"
      wait_http "http://127.0.0.1:$PROXY_ADMIN_PORT/readyz" 120 "$PROXY_PID" ||
        die "proxy_job not ready: $(tail -n 20 "$WORK/proxy_job/stderr.log")"
      count proxy_job "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/small" "$AUTH"
      stop_target "$PROXY_PID"
      ;;
  esac
done

echo "| target | instructions per small GET |"
echo "|---|---:|"
while IFS=$'\t' read -r t per; do echo "| $t | $per |"; done <"$WORK/results.tsv"
