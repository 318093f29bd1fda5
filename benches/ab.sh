#!/usr/bin/env bash
# Compares two builds under the same load on one machine, interleaved: each round measures
# `GET /health` and `GET /api/deployment/status` on build A's host, then on build B's, so a
# machine whose speed drifts drifts for both. Prints each round and the medians: req/s, the
# status : /health ratio, and the CPU per request of each host (its own threads + the plugin's,
# its child included).
#
#   mkdir -p /tmp/before && cp target/release/{powerautomation,libdeployment_mcp.so} /tmp/before
#   ... change, cargo build --release --workspace ...
#   benches/ab.sh /tmp/before target/release [connections] [rounds]
#
# Defaults: 1024 connections, 4 rounds of 5 s per route. $PLUGIN_LINES (e.g.
# 'isolation = "process"') configures both hosts; $WRK_THREADS as in load.sh. Needs wrk and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: benches/ab.sh BUILD_A BUILD_B [connections] [rounds]" >&2; exit 2; }
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
  dir=$1
  [ "$build" = B ] && dir=$2
  HOST_BUILD=$dir start_host user
  wait_for_status_route "$address" "$key"
  addresses[$build]=$address keys[$build]=$key pids[$build]=$host_pid
done
tick=$(getconf CLK_TCK)

measure() { # build path -> "req/s cpu_us_per_request"
  local before after out
  before=$(cpu_ticks "${pids[$1]}")
  out=$(wrk -t"$threads" -c"$connections" -d5s -H "X-API-Key: ${keys[$1]}" "http://${addresses[$1]}$2")
  after=$(cpu_ticks "${pids[$1]}")
  awk -v before="$before" -v after="$after" -v tick="$tick" '
    /Requests\/sec/ { rps = $2 }
    / requests in / { requests = $1 }
    END {
      split(before, b, " "); split(after, a, " ")
      used = (a[1] + a[2]) - (b[1] + b[2])
      printf "%.0f %.2f\n", rps, (requests > 0) ? used * 1e6 / tick / requests : 0
    }' <<<"$out"
}

echo "A: $1   B: $2   ${connections} connections, ${rounds} rounds of 5 s per route${PLUGIN_LINES:+, $PLUGIN_LINES}" >&2
printf '%5s %5s %10s %10s %8s %11s %11s\n' round build "health/s" "status/s" ratio "health us" "status us"
results=()
for ((round = 1; round <= rounds; round++)); do
  for build in A B; do
    read -r h_rps h_us < <(measure "$build" /health)
    read -r s_rps s_us < <(measure "$build" /api/deployment/status)
    ratio=$(awk -v s="$s_rps" -v h="$h_rps" 'BEGIN { printf "%.3f", (h > 0) ? s / h : 0 }')
    printf '%5s %5s %10s %10s %8s %11s %11s\n' "$round" "$build" "$h_rps" "$s_rps" "$ratio" "$h_us" "$s_us"
    results+=("$build $h_rps $s_rps $ratio $h_us $s_us")
  done
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for build in A B; do
  line=$(printf '%s\n' "${results[@]}" | awk -v b="$build" '$1 == b')
  printf '%5s %5s %10s %10s %8s %11s %11s\n' median "$build" \
    "$(cut -d' ' -f2 <<<"$line" | median)" "$(cut -d' ' -f3 <<<"$line" | median)" \
    "$(cut -d' ' -f4 <<<"$line" | median)" "$(cut -d' ' -f5 <<<"$line" | median)" \
    "$(cut -d' ' -f6 <<<"$line" | median)"
done
