#!/usr/bin/env bash
# What the TLS listener costs: the same proxy configuration served over plain HTTP and over TLS
# (listen.tls, the test certificate of tests/fixtures, RSA 2048), small GETs with keep-alive from
# wrk, rounds alternating between the two; then memory per open connection on each, from the
# peak RSS of a run with many connections. Everything on 127.0.0.1.
#
#   benches/tls.sh                       # 3 rounds of 10 s at 16 connections, then 512 connections
#   ROUNDS=5 DURATION=10s SKIP_BUILD=1 benches/tls.sh
#
# Environment (defaults in brackets): ROUNDS [3], DURATION [10s], CONNECTIONS [16], MANY [512]
# (connections of the memory run), SKIP_BUILD=1, KEEP_WORK=1, UP_PORT PLAIN_PORT TLS_PORT
# [28181 28182 28183] (admin ports are these + 10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=tls
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
MANY=${MANY:-512}
UP_PORT=${UP_PORT:-28181}
PLAIN_PORT=${PLAIN_PORT:-28182}
TLS_PORT=${TLS_PORT:-28183}
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "DURATION must be seconds, like 10s"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"

need_tools wrk:wrk curl:curl
proxy_and_upstream
ports_free "$UP_PORT" "$PLAIN_PORT" "$TLS_PORT" $((PLAIN_PORT + 10)) $((TLS_PORT + 10))
bench_init
start_upstream "$UP_PORT"
CLK_TCK=$(getconf CLK_TCK)

write_proxy_conf "$WORK/plain" "$PLAIN_PORT" $((PLAIN_PORT + 10)) "$UP_PORT"
write_proxy_conf "$WORK/tls" "$TLS_PORT" $((TLS_PORT + 10)) "$UP_PORT"
fixtures=$ROOT/tests/fixtures
sed -i "/^address = \"127.0.0.1:$TLS_PORT\"/a tls = { certificate_file = \"$fixtures/listener-cert.pem\", key_file = \"$fixtures/listener-key.rsa.pem\" }" \
  "$WORK/tls/config.toml"
start_proxy "$WORK/plain"
PLAIN_PID=$PROXY_PID
start_proxy "$WORK/tls"
TLS_PID=$PROXY_PID
wait_http "http://127.0.0.1:$((PLAIN_PORT + 10))/readyz" 30 "$PLAIN_PID" || die "plain proxy not ready"
wait_http "http://127.0.0.1:$((TLS_PORT + 10))/readyz" 30 "$TLS_PID" || die "TLS proxy not ready"
curl -sf --cacert "$fixtures/listener-ca.pem" "https://127.0.0.1:$TLS_PORT/small" >/dev/null ||
  die "the TLS listener does not answer"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
url_of() { [[ $1 == plain ]] && echo "http://127.0.0.1:$PLAIN_PORT/small" || echo "https://127.0.0.1:$TLS_PORT/small"; }
pid_of() { [[ $1 == plain ]] && echo "$PLAIN_PID" || echo "$TLS_PID"; }

# run NAME CONNECTIONS: prints "req/s cpu_us_per_req errors"
run() {
  local name=$1 c=$2 pid before after out reqs rps errors
  pid=$(pid_of "$name")
  timeout 60 wrk -t1 -c"$c" -d2s "$(url_of "$name")" >/dev/null || die "$name: warm-up failed"
  before=$(cpu_ticks "$pid")
  out=$(timeout $((${DURATION%s} + 30)) wrk -t1 -c"$c" -d"$DURATION" --timeout 10s "$(url_of "$name")")
  after=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
  awk -v r="$rps" -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" -v e="$errors" \
    'BEGIN { printf "%.0f %.1f %d\n", r, t / hz * 1e6 / n, e }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for round in $(seq "$ROUNDS"); do
  order="plain tls"
  ((round % 2 == 0)) && order="tls plain"
  for name in $order; do
    read -r rps cpu errors < <(run "$name" "$CONNECTIONS")
    log "round $round $name: $rps req/s, $cpu µs CPU/req, $errors error lines"
    echo "$name $rps $cpu $errors" >>"$WORK/results"
  done
done

# Memory per connection: the peak RSS of a run with MANY connections, less the RSS before it.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
declare -A per_connection
for name in plain tls; do
  pid=$(pid_of "$name")
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  start=$(rss_kib "$pid")
  timeout 60 wrk -t1 -c"$MANY" -d5s --timeout 10s "$(url_of "$name")" >/dev/null || die "$name: $MANY connections failed"
  peak=$(hwm_kib "$pid")
  per_connection[$name]=$(awk -v s="$start" -v p="$peak" -v n="$MANY" 'BEGIN { printf "%.0f", (p - s) / n }')
  log "$name: RSS $start KiB before, peak $peak KiB with $MANY connections"
done

echo
echo "| metric ($CONNECTIONS conns, medians of $ROUNDS rounds of $DURATION) | plain | TLS | TLS / plain |"
echo "|---|---:|---:|---:|"
for column in 2 3; do
  label=$([[ $column == 2 ]] && echo "small GET: req/s" || echo "small GET: CPU µs/req")
  p=$(awk -v c=$column '$1 == "plain" { print $c }' "$WORK/results" | median)
  t=$(awk -v c=$column '$1 == "tls" { print $c }' "$WORK/results" | median)
  echo "| $label | $p | $t | $(awk -v p="$p" -v t="$t" 'BEGIN { printf "%.2f", t / p }') |"
done
echo "| memory per open connection, KiB ($MANY conns) | ${per_connection[plain]} | ${per_connection[tls]} | - |"
errors=$(awk '{ n += $4 } END { print n + 0 }' "$WORK/results")
echo
echo "- error lines from wrk (non-2xx or socket errors): $errors"
echo "- $(date -u +%F), commit $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) CPUs"
