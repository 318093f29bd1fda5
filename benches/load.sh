#!/usr/bin/env bash
# Load test, in one run on the same machine, with wrk at each connection count:
#   - the host's own GET /health;
#   - GET /api/deployment/status through the plugin loaded in-process (the default);
#   - the same route with the plugin in a child process (`isolation = "process"`).
# Prints one table: req/s, p99, and each status row's ratios to /health at the same connection
# count, against the targets (in-process: throughput >= 0.70 and p99 <= 2x, SPEC §9; process
# isolation: throughput >= 0.50). The last two columns say where the CPU went: microseconds of
# CPU per request in the host's own threads, and in the plugin's (its runtime's threads in the
# host, or its child process), from /proc, so a ratio that falls can be traced to one side.
#
#   cargo build --release --workspace && benches/load.sh [seconds] [connections]
#
# Connections: the second argument, else $BENCH_CONNECTIONS, else "64 256 1024" (a list,
# e.g. BENCH_CONNECTIONS="64" or benches/load.sh 10 "64 256").
# On a machine with cores to spare, pin the hosts and the load generator apart:
#   BENCH_HOST_CPUS=0-7 BENCH_LOAD_CPUS=8-15 WRK_THREADS=8 benches/load.sh 10
#
# Two hosts run side by side, one per mode, each from target/release with a temporary data
# directory on a free loopback port and the same configuration otherwise; only one is under
# load at a time. Both allow more connections than the largest count (server.max_connections),
# so the cap never answers for them. Needs wrk (Debian: apt-get install wrk) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
read -r -a connections <<<"${2:-${BENCH_CONNECTIONS:-64 256 1024}}"
threads="${WRK_THREADS:-2}"
# Each connection count is measured this many times, the three routes interleaved; the table
# shows the medians. More than one round steadies figures on a machine whose speed drifts.
rounds="${BENCH_ROUNDS:-1}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is not installed: apt-get install -y curl" >&2; exit 2; }
[ "${#connections[@]}" -gt 0 ] || { echo "no connection counts given" >&2; exit 2; }
most=0
for c in "${connections[@]}"; do
  [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -ge "$threads" ] ||
    { echo "connections must be whole numbers >= WRK_THREADS ($threads): got '$c'" >&2; exit 2; }
  if [ "$c" -gt "$most" ]; then most=$c; fi
done

# wrk and each host hold a descriptor per connection: raise the soft limit when it is lower.
need=$((most * 2 + 512))
limit=$(ulimit -n)
if [ "$limit" != unlimited ] && [ "$limit" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  limit=$(ulimit -n)
  [ "$limit" = unlimited ] || [ "$limit" -ge "$need" ] ||
    echo "warning: open files limited to $limit (want $need): the largest counts may see socket errors" >&2
fi

# shellcheck source=benches/host.sh
. benches/host.sh

SERVER_LINES="max_connections = $((most + 256))"
HOST_PIN=$(pin "${BENCH_HOST_CPUS:-}") start_host user
in_address=$address in_key=$key in_pid=$host_pid
wait_for_status_route "$in_address" "$in_key"
HOST_PIN=$(pin "${BENCH_HOST_CPUS:-}") PLUGIN_LINES='isolation = "process"' start_host user
pr_address=$address pr_key=$key pr_pid=$host_pid
wait_for_status_route "$pr_address" "$pr_key"
# The second host really runs the plugin in a child process.
curl -s -H "X-API-Key: $pr_key" "http://$pr_address/api/plugins" | grep -q '"isolation":"process"' ||
  { echo "the host at $pr_address does not report isolation = process:" >&2; cat "$work/host.log" >&2; exit 1; }

tick=$(getconf CLK_TCK)

measure() { # address key path connections host_pid -> "req/s p99_ms non2xx socket_errors host_us plugin_us"
  local out before after
  before=$(cpu_ticks "$5")
  out=$($(pin "${BENCH_LOAD_CPUS:-}") wrk -t"$threads" -c"$4" -d"${seconds}s" --latency -H "X-API-Key: $2" "http://$1$3")
  after=$(cpu_ticks "$5")
  awk -v before="$before" -v after="$after" -v tick="$tick" '
    /Requests\/sec/ { rps = $2 }
    $1 == "99%" {
      v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      p99 = v
    }
    /Non-2xx/ { non2xx = $5 }
    /Socket errors/ { gsub(/,/, ""); errors = $4 + $6 + $8 + $10 }
    / requests in / { requests = $1 }
    END {
      split(before, b, " "); split(after, a, " ")
      per = (requests > 0) ? 1e6 / tick / requests : 0
      printf "%.2f %.3f %d %d %.2f %.2f\n", rps, p99, non2xx, errors, (a[1] - b[1]) * per, (a[2] - b[2]) * per
    }' <<<"$out"
}

# One row of the table; the ratio columns are empty for /health.
row() { # connections name rps p99 non2xx errors host_us plugin_us [health_rps health_p99 throughput_target p99_target]
  awk -v c="$1" -v name="$2" -v rps="$3" -v p99="$4" -v non="$5" -v err="$6" -v hu="$7" -v pu="$8" \
    -v hr="${9:-}" -v hp="${10:-}" -v tt="${11:-}" -v pt="${12:-}" 'BEGIN {
    if (hr == "") {
      printf "%6s  %-38s %10.0f %9.2f %9s %9s  %-27s %8d %8d %7.1f %7s\n", c, name, rps, p99, "-", "-", "", non, err, hu, "-"
      exit
    }
    tr = (hr > 0) ? rps / hr : 0
    pr = (hp > 0) ? p99 / hp : 0
    met = (tr >= tt) && (pt == "" || pr <= pt)
    target = sprintf("thr>=%.2f%s %s", tt, (pt == "" ? "" : sprintf(" p99<=%.1f", pt)), met ? "met" : "NOT MET")
    printf "%6s  %-38s %10.0f %9.2f %9.2f %9.2f  %-27s %8d %8d %7.1f %7.1f\n", c, name, rps, p99, tr, pr, target, non, err, hu, pu
  }'
}

echo "wrk: ${threads} threads, ${seconds}s a run, connections: ${connections[*]}, rounds: $rounds (medians)" >&2
echo "hosts: in-process pid $in_pid (${BENCH_HOST_CPUS:-any CPU}), process isolation pid $pr_pid; load on ${BENCH_LOAD_CPUS:-any CPU}" >&2
printf '%6s  %-38s %10s %9s %9s %9s  %-27s %8s %8s %7s %7s\n' \
  conns route req/s "p99 ms" "thr/hlth" "p99/hlth" target non-2xx "sock err" "host us" "plug us"
# The median of the values on stdin, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Measures the three routes `rounds` times, interleaved (so a machine whose speed drifts
# drifts for all three), and prints each one's median req/s and p99 and summed errors.
three() { # connections
  local i h=() s=() p=()
  for ((i = 0; i < rounds; i++)); do
    h+=("$(measure "$in_address" "$in_key" /health "$1" "$in_pid")")
    s+=("$(measure "$in_address" "$in_key" /api/deployment/status "$1" "$in_pid")")
    p+=("$(measure "$pr_address" "$pr_key" /api/deployment/status "$1" "$pr_pid")")
  done
  local set
  for set in h s p; do
    local -n runs=$set
    printf '%s %s %s %s %s %s\n' \
      "$(printf '%s\n' "${runs[@]}" | cut -d' ' -f1 | median)" \
      "$(printf '%s\n' "${runs[@]}" | cut -d' ' -f2 | median)" \
      "$(printf '%s\n' "${runs[@]}" | awk '{ n += $3 } END { print n + 0 }')" \
      "$(printf '%s\n' "${runs[@]}" | awk '{ n += $4 } END { print n + 0 }')" \
      "$(printf '%s\n' "${runs[@]}" | cut -d' ' -f5 | median)" \
      "$(printf '%s\n' "${runs[@]}" | cut -d' ' -f6 | median)"
  done
}

for c in "${connections[@]}"; do
  {
    read -r h_rps h_p99 h_non h_err h_hu _
    read -r s_rps s_p99 s_non s_err s_hu s_pu
    read -r p_rps p_p99 p_non p_err p_hu p_pu
  } < <(three "$c")
  row "$c" "GET /health" "$h_rps" "$h_p99" "$h_non" "$h_err" "$h_hu" 0
  row "$c" "GET /api/deployment/status in-process" "$s_rps" "$s_p99" "$s_non" "$s_err" "$s_hu" "$s_pu" \
    "$h_rps" "$h_p99" 0.70 2
  row "$c" "GET /api/deployment/status process" "$p_rps" "$p_p99" "$p_non" "$p_err" "$p_hu" "$p_pu" \
    "$h_rps" "$h_p99" 0.50
done

rss() { awk '/VmRSS/ {print $2, $3}' "/proc/$1/status" 2>/dev/null || echo "gone"; }
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr -s ' \n' ' ' | sed 's/ $//'; }
echo "RSS after load: in-process host $(rss "$in_pid"); process-isolation host $(rss "$pr_pid")"
for child in $(children "$pr_pid"); do
  echo "  its child $child ($(tr '\0' ' ' < "/proc/$child/cmdline" 2>/dev/null | cut -c1-60)): $(rss "$child")"
done
