#!/usr/bin/env bash
# Compares two builds under the same load on one machine, interleaved: each round measures
# `GET /health` and `GET /api/deployment/status` on build A's host and on build B's (A first in
# odd rounds, B first in even ones), so a machine whose speed drifts drifts for both. Prints
# each round and the medians: req/s, the status : /health ratio, the CPU per request of each
# host (its own threads + the plugin's, its child included), and the answers that were not 2xx
# or failed (which would make a build look faster than it is).
#
#   mkdir -p /tmp/before && cp target/release/{powerautomation,libdeployment_mcp.so} /tmp/before
#   ... change, cargo build --release --workspace ...
#   benches/ab.sh /tmp/before target/release [connections] [rounds]
#
# Defaults: 1024 connections, 4 rounds of 5 s per route. $PLUGIN_LINES (e.g.
# 'isolation = "process"') configures both hosts; $WRK_THREADS, $BENCH_HOST_CPUS and
# $BENCH_LOAD_CPUS (both hosts on the first CPU list, wrk on the second) as in load.sh.
# Needs wrk and curl.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: benches/ab.sh BUILD_A BUILD_B [connections] [rounds]" >&2; exit 2; }
# The builds as the caller named them, before moving to the repository root.
build_a=$(cd "$1" && pwd) || { echo "no directory $1" >&2; exit 2; }
build_b=$(cd "$2" && pwd) || { echo "no directory $2" >&2; exit 2; }
cd "$(dirname "$0")/.."
connections="${3:-1024}"
rounds="${4:-4}"
threads="${WRK_THREADS:-2}"
[[ "$connections" =~ ^[0-9]+$ && "$rounds" =~ ^[0-9]+$ ]] && [ "$connections" -ge "$threads" ] && [ "$rounds" -ge 1 ] ||
  { echo "connections (>= WRK_THREADS) and rounds (>= 1) must be whole numbers" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is not installed: apt-get install -y curl" >&2; exit 2; }
ulimit -n $((connections * 2 + 512)) 2>/dev/null || true

# shellcheck source=benches/host.sh
. benches/host.sh

declare -A addresses keys pids
SERVER_LINES="max_connections = $((connections + 256))"
for build in A B; do
  dir=$build_a
  [ "$build" = B ] && dir=$build_b
  HOST_PIN=$(pin "${BENCH_HOST_CPUS:-}") HOST_BUILD=$dir start_host user
  wait_for_status_route "$address" "$key"
  addresses[$build]=$address keys[$build]=$key pids[$build]=$host_pid
done
tick=$(getconf CLK_TCK)

measure() { # build path -> "req/s cpu_us_per_request failed_answers"
  local before after out
  before=$(cpu_ticks "${pids[$1]}")
  out=$($(pin "${BENCH_LOAD_CPUS:-}") wrk -t"$threads" -c"$connections" -d5s -H "X-API-Key: ${keys[$1]}" "http://${addresses[$1]}$2") ||
    { echo "wrk failed against build $1 ($2)" >&2; return 1; }
  after=$(cpu_ticks "${pids[$1]}")
  awk -v before="$before" -v after="$after" -v tick="$tick" '
    /Requests\/sec/ { rps = $2 }
    / requests in / { requests = $1 }
    /Non-2xx/ { failed += $5 }
    /Socket errors/ { gsub(/,/, ""); failed += $4 + $6 + $8 + $10 }
    END {
      split(before, b, " "); split(after, a, " ")
      used = (a[1] + a[2]) - (b[1] + b[2])
      printf "%.0f %.2f %d\n", rps, (requests > 0) ? used * 1e6 / tick / requests : 0, failed
    }' <<<"$out"
}

echo "A: $build_a   B: $build_b   ${connections} connections, ${rounds} rounds of 5 s per route${PLUGIN_LINES:+, $PLUGIN_LINES}" >&2
printf '%5s %5s %10s %10s %8s %11s %11s %7s\n' round build "health/s" "status/s" ratio "health us" "status us" failed
results=()
for ((round = 1; round <= rounds; round++)); do
  order="A B"
  [ $((round % 2)) -eq 0 ] && order="B A"
  for build in $order; do
    health=$(measure "$build" /health)
    status=$(measure "$build" /api/deployment/status)
    read -r h_rps h_us h_failed <<<"$health"
    read -r s_rps s_us s_failed <<<"$status"
    ratio=$(awk -v s="$s_rps" -v h="$h_rps" 'BEGIN { printf "%.3f", (h > 0) ? s / h : 0 }')
    failed=$((h_failed + s_failed))
    printf '%5s %5s %10s %10s %8s %11s %11s %7s\n' "$round" "$build" "$h_rps" "$s_rps" "$ratio" "$h_us" "$s_us" "$failed"
    results+=("$build $h_rps $s_rps $ratio $h_us $s_us $failed")
  done
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for build in A B; do
  line=$(printf '%s\n' "${results[@]}" | awk -v b="$build" '$1 == b')
  printf '%5s %5s %10s %10s %8s %11s %11s %7s\n' median "$build" \
    "$(cut -d' ' -f2 <<<"$line" | median)" "$(cut -d' ' -f3 <<<"$line" | median)" \
    "$(cut -d' ' -f4 <<<"$line" | median)" "$(cut -d' ' -f5 <<<"$line" | median)" \
    "$(cut -d' ' -f6 <<<"$line" | median)" "$(awk '{ n += $7 } END { print n + 0 }' <<<"$line")"
done
failed_total=$(printf '%s\n' "${results[@]}" | awk '{ n += $7 } END { print n + 0 }')
if [ "$failed_total" -gt 0 ]; then
  echo "warning: $failed_total answers were not 2xx or failed: those builds' figures are not comparable" >&2
fi
