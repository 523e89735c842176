#!/usr/bin/env bash
# Soak: at least REQUESTS requests through the proxy, mixing small GETs (wrk), streamed uploads
# and downloads, clients that break off mid-download and mid-upload (curl with a short
# --max-time), and token refreshes every few seconds (the loopback upstream issues tokens that
# live TOKEN_LIFETIME seconds). After every round it samples the proxy's RSS, open file
# descriptors and threads; after warm-up they must stay flat. Loopback only; bounded by REQUESTS
# and by MAX_ROUNDS; every process stops at the end.
#
#   benches/soak.sh                              # 1,000,000 requests
#   REQUESTS=200000 SKIP_BUILD=1 benches/soak.sh
#
# Environment (defaults in brackets): REQUESTS [1000000], ROUND [10s of wrk per round],
# MAX_ROUNDS [200], TOKEN_LIFETIME [20], CONNECTIONS [32], SKIP_BUILD=1, UP_PORT PROXY_PORT
# PROXY_ADMIN_PORT [28281 28283 28293].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=soak
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

REQUESTS=${REQUESTS:-1000000}
ROUND=${ROUND:-10s}
MAX_ROUNDS=${MAX_ROUNDS:-200}
TOKEN_LIFETIME=${TOKEN_LIFETIME:-20}
CONNECTIONS=${CONNECTIONS:-32}
UP_PORT=${UP_PORT:-28281}
PROXY_PORT=${PROXY_PORT:-28283}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-28293}
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "REQUESTS must be a positive integer"
[[ $ROUND =~ ^[1-9][0-9]*s$ ]] || die "ROUND must be seconds, like 10s"

need_tools wrk:wrk curl:curl
proxy_and_upstream
ports_free "$UP_PORT" "$PROXY_PORT" "$PROXY_ADMIN_PORT"

bench_init
BENCH_TOKEN_LIFETIME=$TOKEN_LIFETIME start_upstream "$UP_PORT"
write_proxy_conf "$WORK/proxy" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$UP_PORT"
start_proxy "$WORK/proxy"
wait_http "http://127.0.0.1:$PROXY_ADMIN_PORT/readyz" 30 "$PROXY_PID" ||
  die "proxy not ready: $(tail -5 "$WORK/proxy/stderr.log")"
proxy=http://127.0.0.1:$PROXY_PORT

metric() {
  curl -s --max-time 5 "http://127.0.0.1:$PROXY_ADMIN_PORT/metrics" |
    awk -v name="$1" 'index($0, name) == 1 { print $NF; exit }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$PROXY_PID/status"; }
fds() { find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# The side traffic of one round: streamed uploads and downloads, and clients that break off.
side_traffic() {
  head -c $((8 << 20)) /dev/zero |
    curl -s -o /dev/null -T - -H 'Transfer-Encoding: chunked' "$proxy/upload" || true
  curl -s -o /dev/null "$proxy/download?bytes=$((64 << 20))" || true
  curl -s -o /dev/null --max-time 0.2 "$proxy/download?bytes=$((1 << 30))" || true
  head -c $((256 << 20)) /dev/zero |
    curl -s -o /dev/null --max-time 0.2 -T - -H 'Transfer-Encoding: chunked' "$proxy/upload" || true
}

printf '| round | requests | RSS MiB | fds | threads | token refreshes |\n|---:|---:|---:|---:|---:|---:|\n'
total=0
round=0
declare -a rss_samples fd_samples
while ((total < REQUESTS && round < MAX_ROUNDS)); do
  round=$((round + 1))
  side_traffic &
  side=$!
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$ROUND" "$proxy/small")
  wait "$side"
  done_now=$(awk '/requests in/ { print $1 }' <<<"$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
  [[ -z $non2xx ]] || die "round $round: $non2xx answers were not 2xx"
  total=$((total + done_now + 4))
  rss=$(rss_kib)
  rss_samples+=("$rss")
  fd_samples+=("$(fds)")
  printf '| %d | %d | %.1f | %d | %d | %s |\n' "$round" "$total" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" \
    "${fd_samples[-1]}" "$(threads)" "$(metric 'ado_auth_proxy_token_refreshes_total{identity="default",result="success"}')"
done

# Flat after warm-up: the last round within 10% (RSS) and 8 descriptors of the second.
((round >= 3)) || die "too few rounds ($round) to judge; raise REQUESTS"
first=${rss_samples[1]} last=${rss_samples[-1]}
((last * 10 <= first * 11)) || die "RSS grew from $((first / 1024)) MiB to $((last / 1024)) MiB after warm-up"
((fd_samples[-1] <= fd_samples[1] + 8)) || die "open descriptors grew from ${fd_samples[1]} to ${fd_samples[-1]}"
log "flat after warm-up: RSS $((first / 1024)) -> $((last / 1024)) MiB, fds ${fd_samples[1]} -> ${fd_samples[-1]} over $total requests"
