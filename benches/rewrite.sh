#!/usr/bin/env bash
# What URL rewriting costs: a JSON body with two Azure DevOps URLs in every 256 bytes, every one
# rewritten by the proxy, and a binary download the proxy passes untouched, each fetched with
# curl directly from the loopback upstream and through the proxy, alternating, ROUNDS times.
# Medians in MiB/s. Loopback only; every process stops at the end.
#
#   benches/rewrite.sh                       # 5 rounds, 50 MiB JSON, 1 GiB binary
#   ROUNDS=3 SKIP_BUILD=1 benches/rewrite.sh
#
# Environment (defaults in brackets): ROUNDS [5], JSON_BYTES [52428800], BINARY_BYTES
# [1073741824], SKIP_BUILD=1 (use target/release as it is), UP_PORT PROXY_PORT PROXY_ADMIN_PORT
# [28181 28183 28193].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=rewrite
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

ROUNDS=${ROUNDS:-5}
JSON_BYTES=${JSON_BYTES:-52428800}
BINARY_BYTES=${BINARY_BYTES:-1073741824}
UP_PORT=${UP_PORT:-28181}
PROXY_PORT=${PROXY_PORT:-28183}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-28193}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"

need_tools curl:curl
proxy_and_upstream
ports_free "$UP_PORT" "$PROXY_PORT" "$PROXY_ADMIN_PORT"

bench_init
start_upstream "$UP_PORT"
write_proxy_conf "$WORK/proxy" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$UP_PORT"
start_proxy "$WORK/proxy"
wait_http "http://127.0.0.1:$PROXY_ADMIN_PORT/readyz" 30 "$PROXY_PID" ||
  die "proxy not ready: $(tail -5 "$WORK/proxy/stderr.log")"

direct=http://127.0.0.1:$UP_PORT
proxy=http://127.0.0.1:$PROXY_PORT
# The rewriting must really happen, or the figures measure nothing.
sample=$(curl -sS --max-time 10 "$proxy/json?bytes=4096")
grep -q "\"http://127.0.0.1:$PROXY_PORT/_host/pkgs.dev.azure.com/fabrikam/" <<<"$sample" ||
  die "the proxy did not rewrite the JSON body: ${sample:0:300}"
grep -q 'https://' <<<"$sample" && die "an Azure DevOps URL survived the rewrite: ${sample:0:300}"

# mib_per_s URL BYTES: one download, its size checked, its rate in MiB/s.
mib_per_s() {
  local out size seconds
  out=$(curl -sS --max-time 600 -o /dev/null -w '%{size_download} %{time_total}' "$1")
  read -r size seconds <<<"$out"
  [[ $size -ge $2 ]] || die "$1: got $size bytes, want at least $2"
  awk -v b="$size" -v s="$seconds" 'BEGIN { printf "%.0f\n", b / 1048576 / s }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A runs
for ((round = 1; round <= ROUNDS; round++)); do
  for target in direct proxy; do
    base=$direct
    [[ $target == proxy ]] && base=$proxy
    runs[json_$target]+="$(mib_per_s "$base/json?bytes=$JSON_BYTES" "$JSON_BYTES") "
    runs[binary_$target]+="$(mib_per_s "$base/download?bytes=$BINARY_BYTES" "$BINARY_BYTES") "
  done
  log "round $round of $ROUNDS done"
done

printf '| %s | direct MiB/s | proxy MiB/s |\n|---|---:|---:|\n' "median of $ROUNDS rounds ($(date -u +%Y-%m-%dT%H:%MZ))"
for kind in json binary; do
  bytes=$JSON_BYTES
  [[ $kind == binary ]] && bytes=$BINARY_BYTES
  d=$(tr ' ' '\n' <<<"${runs[${kind}_direct]}" | grep . | median)
  p=$(tr ' ' '\n' <<<"${runs[${kind}_proxy]}" | grep . | median)
  label="JSON $((bytes / 1048576)) MiB, every URL rewritten"
  [[ $kind == binary ]] && label="binary $((bytes / 1048576)) MiB, passed untouched"
  printf '| %s | %s | %s |\n' "$label" "$d" "$p"
done
