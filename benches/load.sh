#!/usr/bin/env bash
# Load test: GET /api/deployment/status through the plugin against the host's own GET /health,
# in one run on the same machine, with wrk at 64 connections. Prints both, and the ratios.
#
#   cargo build --release --workspace && benches/load.sh [seconds] [connections]
#
# On a machine with cores to spare, pin the two apart so they do not share cores:
#   BENCH_HOST_CPUS=0-7 BENCH_LOAD_CPUS=8-15 WRK_THREADS=8 benches/load.sh 10 256
#
# Needs wrk (Debian: apt-get install wrk). The host runs from target/release with a temporary
# data directory on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
connections="${2:-64}"
threads="${WRK_THREADS:-2}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 2; }
# shellcheck source=benches/host.sh
. benches/host.sh

# `taskset -c LIST` when a CPU list is given, nothing otherwise.
pin() { [ -n "${1:-}" ] && echo "taskset -c $1"; true; }
HOST_PIN=$(pin "${BENCH_HOST_CPUS:-}") start_host user

run() { # name path -> "req/s p99_ms"
  local out
  out=$($(pin "${BENCH_LOAD_CPUS:-}") wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -H "X-API-Key: $key" "http://$address$2")
  local rps p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '%-32s %10.0f req/s   p99 %7.2f ms   non-2xx %s\n' "$1" "$rps" "$p99" "${non2xx:-0}" >&2
  echo "$rps $p99"
}

echo "wrk: ${threads} threads, ${connections} connections, ${seconds}s each, host pid $host_pid" >&2
read -r health_rps health_p99 < <(run "GET /health" /health)
read -r status_rps status_p99 < <(run "GET /api/deployment/status" /api/deployment/status)
awk -v hr="$health_rps" -v sr="$status_rps" -v hp="$health_p99" -v sp="$status_p99" 'BEGIN {
  printf "throughput ratio (status/health): %.2f   (target >= 0.80)\n", sr/hr
  printf "p99 ratio (status/health):        %.2f   (target <= 1.50)\n", sp/hp
}'
echo "host RSS after load: $(awk '/VmRSS/ {print $2, $3}' /proc/$host_pid/status)"
