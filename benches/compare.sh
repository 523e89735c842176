#!/usr/bin/env bash
# Compare ado-auth-proxy with nginx (plain, and doing the proxy's job), with hyper alone (bare)
# and with no proxy at all, in front of a loopback upstream.
#
#   benches/compare.sh                       # direct, nginx, nginx_job, bare and proxy; 3 rounds
#   TARGETS="direct nginx" ROUNDS=1 DURATION=5s benches/compare.sh
#
# Environment (defaults in brackets):
#   TARGETS        which targets to measure ["direct nginx nginx_job bare proxy"]; bare is hyper's
#                  server and client with nothing else (benches/bare_proxy.rs), the floor of the
#                  proxy's stack; nginx_job is nginx doing the proxy's job with stock directives
#                  (see write_nginx_conf in common.sh: a client key map, an allowlist map, the
#                  request id, a JSON access line with the audit line's fields, timeouts)
#   ROUNDS         rounds; the target order rotates every round, the table shows medians [3]
#   DURATION       wrk duration of each small-request run [10s]
#   CONNECTIONS    wrk connection counts for the small-request runs ["16 128"]
#   WRK_THREADS    wrk threads [1]
#   STREAM_BYTES   bytes downloaded and uploaded through each target [1073741824 = 1 GiB]
#   NGINX_WORKERS  nginx worker_processes [nproc, i.e. "auto"]
#   NGINX_BUFFER   nginx proxy/client body buffer size, in KiB with a k suffix [64k]
#   PROXY_RUST_LOG RUST_LOG of the proxy; info writes the audit line per request [info]
#   HOLD_CARGO_LOCK=0  do not hold /tmp/cargo.lock while measuring (see below) [1]
#   BENCH_UPSTREAM_THREADS  tokio worker threads of the upstream [1]
#   UP_PORT NGINX_PORT PROXY_PORT PROXY_ADMIN_PORT BARE_PORT NGINX_JOB_PORT  loopback ports
#                  [18081 18082 18083 18093 18084 18085]
#   RESULTS        where the markdown table goes [benches/results.md]
#   SKIP_BUILD=1   use the binaries already in target/release
#   KEEP_WORK=1    keep the temporary directory (configs, logs) after the run
#
# Everything listens on and targets 127.0.0.1 only; every step is bounded in time, and the
# processes this script starts are stopped on exit.
#
# Fairness (2-core machine; load generator, system under test and upstream share it):
# - upstream: one tokio worker thread, the same for every target, so each target competes with
#   the same upstream;
# - ado-auth-proxy: its default of one worker thread per core (= 2), each with its own runtime
#   and upstream pool; nginx: `worker_processes`
#   = nproc (what `auto` gives) = 2. Both may use both cores;
# - wrk: ONE thread. One wrk thread drives ~65k small requests/s against the bare upstream
#   here, more than either proxy reaches, and a second thread would only take CPU from the
#   system under test (measured here: -t2 was no faster than -t1 even against the bare upstream);
# - nginx and the proxy batch their per-request lines in 64 KiB and flush at least every 100 ms
#   (nginx `access_log ... buffer=64k flush=100ms`, the proxy's own log writer);
# - nginx and the proxy log one access/audit line per request to a file (nginx `access_log`,
#   the proxy's stderr redirected), keep upstream connections alive (nginx `keepalive` pool),
#   stream both ways (`proxy_buffering off`, `proxy_request_buffering off`, 64 KiB buffers
#   rather than nginx's 4/8 KiB defaults, which stream 2-3x slower here), replace
#   Authorization with a bearer token of the same ~1400 characters and rewrite Host;
# - nginx `keepalive_requests` is raised so it does not close client connections every 1000
#   requests (the proxy does not either).
# - concurrent builds: the machine's cargo builds go through `flock /tmp/cargo.lock`; the script
#   holds that lock while it measures (HOLD_CARGO_LOCK=1), so no build competes for the cores.
# - bare (benches/bare_proxy.rs): hyper's HTTP/1 server and client, two single-threaded workers,
#   one upstream connection per client connection, only Authorization and Host replaced; no
#   logs, metrics, checks or timeouts. What the proxy's stack costs before the proxy adds anything
#   (it also does less than nginx here: no access log);
# - the proxy runs in keys mode with one client, four rules and its audit line on (JSON, like
#   nginx_job's access line); every request of every target carries that client's key as Basic
#   credentials (ignored by direct, nginx and bare). The proxy also rewrites the Azure DevOps URL
#   in /small's JSON body, which no nginx row does;
# - CPU per request counts the system under test only (the proxy or bare process; nginx master
#   + workers); for "direct" it is the upstream's own cost, for reference.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=${TARGETS:-"direct nginx nginx_job bare proxy"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-"16 128"}
WRK_THREADS=${WRK_THREADS:-1}
STREAM_BYTES=${STREAM_BYTES:-1073741824}
NCPU=$(nproc)
NGINX_WORKERS=${NGINX_WORKERS:-$NCPU}
NGINX_BUFFER=${NGINX_BUFFER:-64k}
export BENCH_UPSTREAM_THREADS=${BENCH_UPSTREAM_THREADS:-1}
UP_PORT=${UP_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
PROXY_PORT=${PROXY_PORT:-18083}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-18093}
BARE_PORT=${BARE_PORT:-18084}
NGINX_JOB_PORT=${NGINX_JOB_PORT:-18085}
RESULTS=${RESULTS:-$ROOT/benches/results.md}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

BENCH_NAME=compare
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

for t in $TARGETS; do
  case $t in direct | nginx | nginx_job | bare | proxy) ;; *) die "unknown target '$t' (direct, nginx, nginx_job, bare, proxy)" ;; esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "DURATION must be seconds, like 10s"
[[ $NGINX_BUFFER =~ ^[1-9][0-9]*k$ ]] || die "NGINX_BUFFER must be KiB, like 64k"
HOLD_CARGO_LOCK=${HOLD_CARGO_LOCK:-1}
PROXY_RUST_LOG=${PROXY_RUST_LOG:-info}
DURATION_S=${DURATION%s}

# ---------------------------------------------------------------------------------------------
# Tools
need_tools wrk:wrk curl:curl
{ has_target nginx || has_target nginx_job; } && need_tools nginx:nginx-light

# ---------------------------------------------------------------------------------------------
# Build (the cargo lock serialises builds on this shared machine)
if [[ $SKIP_BUILD != 1 ]]; then
  if has_target proxy; then build_release --bin ado-auth-proxy; else build_release; fi
fi
if [[ $HOLD_CARGO_LOCK == 1 ]]; then
  exec 9>>/tmp/cargo.lock
  log "waiting for /tmp/cargo.lock (no builds while measuring; HOLD_CARGO_LOCK=0 to skip)"
  timeout 1800 flock 9 || die "could not get /tmp/cargo.lock within 30 minutes"
fi
busy=$(ps -eo pcpu=,comm= | awk '$1 > 20 && $2 !~ /^(ps|awk)$/ { print $2 }' | sort -u | tr '\n' ' ')
[[ -z $busy ]] || log "warning: busy processes may disturb the measurement: $busy"
[[ -x $UPSTREAM_BIN ]] || die "$UPSTREAM_BIN missing (build it or unset SKIP_BUILD)"
if has_target proxy; then [[ -x $PROXY_BIN ]] || die "$PROXY_BIN missing"; fi
if has_target bare; then [[ -x $BARE_BIN ]] || die "$BARE_BIN missing"; fi

# ---------------------------------------------------------------------------------------------
# Processes
bench_init

ports=("$UP_PORT")
has_target nginx && ports+=("$NGINX_PORT")
has_target nginx_job && ports+=("$NGINX_JOB_PORT")
has_target proxy && ports+=("$PROXY_PORT" "$PROXY_ADMIN_PORT")
has_target bare && ports+=("$BARE_PORT")
ports_free "${ports[@]}"

start_upstream "$UP_PORT"
curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/small" >"$WORK/small.direct"
TOKEN=$(upstream_token "$UP_PORT")

declare -A URL
URL[direct]="http://127.0.0.1:$UP_PORT"
# The one client's key, sent by every request to every target.
CLIENT_KEY=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
AUTH="Authorization: Basic $(printf 'bench:%s' "$CLIENT_KEY" | base64 -w0)"

if has_target nginx; then
  N=$WORK/nginx
  write_nginx_conf "$N" "$NGINX_PORT" "$UP_PORT" "$TOKEN" "$NGINX_WORKERS" "$NGINX_BUFFER" on
  start_nginx "$N"
  NGINX_PLAIN_PID=$NGINX_PID
  wait_http "http://127.0.0.1:$NGINX_PORT/small" 10 "$NGINX_PID" || die "nginx did not start: $(cat "$N/error.log")"
  URL[nginx]="http://127.0.0.1:$NGINX_PORT"
fi

if has_target nginx_job; then
  J=$WORK/nginx_job
  write_nginx_conf "$J" "$NGINX_JOB_PORT" "$UP_PORT" "$TOKEN" "$NGINX_WORKERS" "$NGINX_BUFFER" on "$CLIENT_KEY"
  start_nginx "$J"
  NGINX_JOB_PID=$NGINX_PID
  wait_http "http://127.0.0.1:$NGINX_JOB_PORT/small" 10 "$NGINX_JOB_PID" "$AUTH" ||
    die "nginx_job did not start: $(cat "$J/error.log")"
  URL[nginx_job]="http://127.0.0.1:$NGINX_JOB_PORT"
fi

if has_target proxy; then
  P=$WORK/proxy
  write_proxy_conf "$P" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$UP_PORT" "$CLIENT_KEY"
  PROXY_LOG_FORMAT=json start_proxy "$P"
  wait_http "http://127.0.0.1:$PROXY_ADMIN_PORT/readyz" 30 "$PROXY_PID" ||
    die "proxy not ready: $(tail -n 20 "$P/stderr.log")"
  URL[proxy]="http://127.0.0.1:$PROXY_PORT"
fi

if has_target bare; then
  start_bare "$BARE_PORT" "$UP_PORT"
  wait_http "http://127.0.0.1:$BARE_PORT/small" 10 "$BARE_PID" || die "bare proxy did not start: $(cat "$WORK/bare.log")"
  URL[bare]="http://127.0.0.1:$BARE_PORT"
fi

# The targets doing the job must enforce it: no key is a 401, a call no rule allows a 403.
for t in nginx_job proxy; do
  has_target "$t" || continue
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${URL[$t]}/small" || true)
  [[ $code == 401 ]] || die "$t: GET /small without the key answered $code, not 401"
  code=$(curl -s -H "$AUTH" -o /dev/null -w '%{http_code}' --max-time 5 "${URL[$t]}/contoso/other" || true)
  [[ $code == 403 ]] || die "$t: a call no rule allows answered $code, not 403"
done

# Every target must answer /small like the upstream does (a proxy answering 401 would look fast).
for t in $TARGETS; do
  code=$(curl -s -H "$AUTH" -o "$WORK/small.$t" -w '%{http_code}' --max-time 5 "${URL[$t]}/small" || true)
  [[ $code == 200 ]] || die "$t: GET /small answered $code: $(head -c 300 "$WORK/small.$t")"
  cmp -s "$WORK/small.direct" "$WORK/small.$t" ||
    log "note: $t's /small body differs from the upstream's ($(wc -c <"$WORK/small.$t") vs $(wc -c <"$WORK/small.direct") bytes)"
done

# ---------------------------------------------------------------------------------------------
# Measurements
CLK_TCK=$(getconf CLK_TCK)
RES=$WORK/results.tsv
: >"$RES"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; } # target metric round value

# pids of the system under test (nginx: master and its workers), on one line
sut_pids() {
  case $1 in
    nginx) echo "$NGINX_PLAIN_PID" "$(pgrep -P "$NGINX_PLAIN_PID" | tr '\n' ' ' || true)" ;;
    nginx_job) echo "$NGINX_JOB_PID" "$(pgrep -P "$NGINX_JOB_PID" | tr '\n' ' ' || true)" ;;
    proxy) echo "$PROXY_PID" ;;
    bare) echo "$BARE_PID" ;;
    direct) echo "$UP_PID" ;;
  esac
}
cpu_ticks() { # utime + stime, summed
  local total=0 pid s
  for pid in "$@"; do
    s=$(<"/proc/$pid/stat") || continue
    s=${s##*) }
    read -r -a f <<<"$s"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
reset_peak_rss() { # VmHWM := VmRSS (Linux >= 4.0)
  local pid ok=0
  for pid in "$@"; do echo 5 2>/dev/null >"/proc/$pid/clear_refs" && ok=1; done
  ((ok)) || log "warning: could not reset VmHWM; peak RSS is the lifetime peak"
}
# Peak of the summed PSS (proportional set size: a page shared by n processes counts 1/n in
# each), sampled every 50 ms until OUT.stop exists. nginx's master and workers share their
# binary, libraries and pre-fork heap, which a sum of RSS counts two or three times.
sample_peak_pss() { # OUT pid...
  local out=$1 peak=0 sum pid key value i
  shift
  for ((i = 0; i < 24000; i++)); do # at most 20 minutes: the two transfers' own timeouts
    [[ -e $out.stop ]] && break
    sum=0
    for pid in "$@"; do
      while read -r key value _; do
        [[ $key == Pss: ]] && sum=$((sum + value)) && break
      done 2>/dev/null <"/proc/$pid/smaps_rollup" || true
    done
    ((sum > peak)) && peak=$sum
    echo "$peak" >"$out"
    sleep 0.05
  done
}
kib_to_mib() { awk -v kb="$(cat "$1" 2>/dev/null || echo 0)" 'BEGIN { printf "%.1f", kb / 1024 }'; }
peak_rss_mib() { # sum of VmHWM
  local pid kb=0 v
  for pid in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    kb=$((kb + ${v:-0}))
  done
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF

run_small() { # target connections round
  local t=$1 c=$2 r=$3 sut before after out line
  read -r -a sut <<<"$(sut_pids "$t")"
  reset_peak_rss "${sut[@]}"
  before=$(cpu_ticks "${sut[@]}")
  out=$(timeout $((DURATION_S + 30)) wrk -t"$WRK_THREADS" -c"$c" -d"$DURATION" --timeout 10s \
    -H "$AUTH" -s "$WORK/report.lua" "${URL[$t]}/small" 2>&1) || die "wrk failed against $t: $out"
  after=$(cpu_ticks "${sut[@]}")
  line=$(grep '^RESULT ' <<<"$out") || die "no wrk result: $out"
  read -r _ reqs dur_us errs p50 p99 <<<"$line"
  ((errs == 0)) || log "warning: $t c=$c: $errs errors (socket errors or non-2xx/3xx)"
  record "$t" "rps_c$c" "$r" "$(awk -v n="$reqs" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')"
  record "$t" "p50_c$c" "$r" "$(awk -v v="$p50" 'BEGIN { printf "%.3f", v / 1000 }')"
  record "$t" "p99_c$c" "$r" "$(awk -v v="$p99" 'BEGIN { printf "%.3f", v / 1000 }')"
  record "$t" "cpu_c$c" "$r" "$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" \
    'BEGIN { printf "%.1f", t * 1e6 / hz / n }')"
  record "$t" "err_c$c" "$r" "$errs"
  record "$t" "rss_c$c" "$r" "$(peak_rss_mib "${sut[@]}")"
  log "$t c=$c round $r: $(awk -v n="$reqs" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }') req/s, p50 ${p50}us p99 ${p99}us, $errs errors"
}

value_of() { awk -F'\t' -v t="$1" -v m="$2" -v r="$3" '$1 == t && $2 == m && $3 == r { print $4 }' "$RES"; }

run_stream() { # target round
  local t=$1 r=$2 sut out speed size code sampler pss
  pss=$WORK/pss.$t.$r
  read -r -a sut <<<"$(sut_pids "$t")"
  reset_peak_rss "${sut[@]}"
  rm -f "$pss" "$pss.stop"
  sample_peak_pss "$pss" "${sut[@]}" &
  sampler=$!
  PIDS+=("$sampler")
  out=$(curl -s -H "$AUTH" -o /dev/null --max-time 600 -w '%{speed_download} %{size_download} %{http_code}' \
    "${URL[$t]}/download?bytes=$STREAM_BYTES") || die "$t: download failed ($out)"
  read -r speed size code <<<"$out"
  [[ $code == 200 && $size == "$STREAM_BYTES" ]] || die "$t: download got $code, $size bytes"
  record "$t" dl "$r" "$(awk -v s="$speed" 'BEGIN { printf "%.0f", s / 1048576 }')"
  out=$(head -c "$STREAM_BYTES" /dev/zero |
    curl -s -H "$AUTH" -T - -H 'Transfer-Encoding: chunked' -H 'Expect:' --max-time 600 \
      -o "$WORK/upload.out" -w '%{speed_upload} %{http_code}' "${URL[$t]}/upload") ||
    die "$t: upload failed ($out)"
  read -r speed code <<<"$out"
  [[ $code == 200 && $(tr -d '\n' <"$WORK/upload.out") == "$STREAM_BYTES" ]] ||
    die "$t: upload got $code, upstream counted $(cat "$WORK/upload.out")"
  record "$t" ul "$r" "$(awk -v s="$speed" 'BEGIN { printf "%.0f", s / 1048576 }')"
  touch "$pss.stop"
  wait "$sampler" || true
  unset 'PIDS[-1]' # the sampler, ended: its pid may be reused before the cleanup runs
  record "$t" rss_stream "$r" "$(peak_rss_mib "${sut[@]}")"
  if [[ -r /proc/$$/smaps_rollup ]]; then
    record "$t" pss_stream "$r" "$(kib_to_mib "$pss")"
  else
    log "warning: no /proc/PID/smaps_rollup (Linux < 4.14): PSS not measured"
  fi
  log "$t streaming round $r: download $(value_of "$t" dl "$r") MiB/s, upload $(value_of "$t" ul "$r") MiB/s, peak RSS $(peak_rss_mib "${sut[@]}") MiB, peak PSS $(kib_to_mib "$pss") MiB"
}

read -r -a targets <<<"$TARGETS"
n=${#targets[@]}

log "warm-up"
for t in "${targets[@]}"; do
  timeout 30 wrk -t"$WRK_THREADS" -c128 -d2s -H "$AUTH" "${URL[$t]}/small" >/dev/null 2>&1 || die "warm-up of $t failed"
  curl -s -H "$AUTH" -o /dev/null --max-time 60 "${URL[$t]}/download?bytes=67108864"
done

for ((r = 1; r <= ROUNDS; r++)); do
  for ((i = 0; i < n; i++)); do
    t=${targets[$(((i + r - 1) % n))]}
    for c in $CONNECTIONS; do run_small "$t" "$c" "$r"; sleep 1; done
    run_stream "$t" "$r"
    sleep 1
  done
done

# ---------------------------------------------------------------------------------------------
# Report: medians across rounds
median() { # target metric
  awk -F'\t' -v t="$1" -v m="$2" '$1 == t && $2 == m { print $4 }' "$RES" | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "-"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      if (m == int(m)) printf "%d\n", m
      else if (m >= 100) printf "%.0f\n", m
      else if (m >= 10) printf "%.1f\n", m
      else if (m >= 1) printf "%.2f\n", m
      else printf "%.3f\n", m }'
}

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
proxy_version=$("$PROXY_BIN" --version 2>/dev/null | head -n 1 || true)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n 1)
{
  echo "## ado-auth-proxy vs nginx vs bare hyper vs direct ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "- machine: $NCPU CPUs ($cpu_model), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  echo "- ado-auth-proxy: ${proxy_version:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)}, commit $commit${dirty:+ + local changes}, $(rustc --version 2>/dev/null || echo rustc ?), release profile"
  echo "- $("$NGINX" -v 2>&1 | head -n 1), $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2 || true), $(curl --version | head -n 1 | cut -d' ' -f1-2)"
  echo "- settings: TARGETS=\"$TARGETS\" ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=\"$CONNECTIONS\" WRK_THREADS=$WRK_THREADS STREAM_BYTES=$STREAM_BYTES NGINX_WORKERS=$NGINX_WORKERS NGINX_BUFFER=$NGINX_BUFFER BENCH_UPSTREAM_THREADS=$BENCH_UPSTREAM_THREADS (proxy: default runtime, $NCPU worker threads, RUST_LOG=$PROXY_RUST_LOG)"
  echo "- median of $ROUNDS rounds; target order rotated per round; \`GET /small\` answers $(wc -c <"$WORK/small.direct") bytes of JSON; CPU is user+system time of the server under test (direct: the upstream itself) per request; RSS is the peak (VmHWM, reset before each run), summed over the server's processes (nginx: master and workers, which share their binary, libraries and pre-fork heap, so the sum counts those pages more than once); PSS divides shared pages among the processes that share them, sampled every 50 ms while streaming"
  logs=""
  has_target nginx && logs+=" nginx access.log $(wc -l <"$WORK/nginx/access.log") lines;"
  has_target nginx_job && logs+=" nginx_job access.log $(wc -l <"$WORK/nginx_job/access.log") lines;"
  has_target proxy && logs+=" proxy stderr $(wc -l <"$WORK/proxy/stderr.log") lines;"
  [[ -z $logs ]] || echo "- per-request logging (sanity check):${logs%;}"
  echo
  header="| metric |"
  sep="|---|"
  for t in "${targets[@]}"; do header+=" $t |"; sep+="---:|"; done
  if has_target nginx && has_target proxy; then header+=" proxy / nginx |"; sep+="---:|"; fi
  if has_target nginx_job && has_target proxy; then header+=" proxy / nginx_job |"; sep+="---:|"; fi
  echo "$header"
  echo "$sep"
  rows=()
  for c in $CONNECTIONS; do
    rows+=("rps_c$c|small GET, $c conns: req/s" "p50_c$c|small GET, $c conns: p50 ms" "p99_c$c|small GET, $c conns: p99 ms"
      "cpu_c$c|small GET, $c conns: CPU µs/req" "rss_c$c|small GET, $c conns: peak RSS MiB" "err_c$c|small GET, $c conns: errors")
  done
  rows+=("dl|download $((STREAM_BYTES / 1048576)) MiB: MiB/s" "ul|upload $((STREAM_BYTES / 1048576)) MiB (chunked): MiB/s"
    "rss_stream|streaming: peak RSS MiB" "pss_stream|streaming: peak PSS MiB")
  for row in "${rows[@]}"; do
    m=${row%%|*}
    line="| ${row#*|} |"
    for t in "${targets[@]}"; do line+=" $(median "$t" "$m") |"; done
    for base in nginx nginx_job; do
      if ! has_target "$base" || ! has_target proxy; then continue; fi
      line+=" $(awk -v a="$(median proxy "$m")" -v b="$(median $base "$m")" \
        'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }') |"
    done
    echo "$line"
  done
} >"$WORK/table.md"

cat "$WORK/table.md"
cp "$WORK/table.md" "$RESULTS"
log "written: $RESULTS"
