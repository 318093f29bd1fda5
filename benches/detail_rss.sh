#!/usr/bin/env bash
# Memory of reading one long deployment's detail: a deployment whose one environment writes
# LINES lines (default 60,000), then READERS parallel reads of its detail (default 8), ROUNDS
# times (default 5); prints the host's RSS before the reads and after each round. A detail
# carries the last 200 lines, and reads only the chunks that hold them.
#
#   cargo build --release --workspace && benches/detail_rss.sh [LINES [READERS [ROUNDS]]]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-60000}
readers=${2:-8}
rounds=${3:-5}
environments=$(mktemp)
cat > "$environments" <<JSON
{"environments": [{"environment_id": "chatty", "environment_type": "linux_local",
  "connection_method": "local", "command": ["seq", "1", "$lines"], "timeout": 300}]}
JSON
# shellcheck source=benches/host.sh
. benches/host.sh
BENCH_ENVIRONMENTS_FILE=$environments start_host admin "health_check_interval_secs = 0"
rm -f "$environments"
wait_for_status_route "$address" "$key"
api="http://$address/api/deployment"
id=$(curl -sf -X POST -H "X-API-Key: $key" -H 'Content-Type: application/json' \
  -d '{"environments": ["chatty"]}' "$api/trigger-local" | sed -n 's/.*"deployment_id":"\([^"]*\)".*/\1/p')
# The last line of the log tells whether it ended (bounded: 60 s).
for _ in $(seq 600); do
  page=$(curl -sf -H "X-API-Key: $key" "$api/deployments/$id/logs?tail=1")
  grep -q '"complete":true' <<<"$page" && break
  sleep 0.1
done
status=$(sed -n 's/.*"status":"\([a-z_]*\)".*/\1/p' <<<"$page")
stored=$(sed -n 's/.*"stored_lines":\([0-9]*\).*/\1/p' <<<"$page")
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$host_pid/status"; }
before=$(rss)
echo "deployment $id: $status, $stored lines stored; host RSS before the reads: $before MB"
for round in $(seq "$rounds"); do
  readers_pids=()
  for _ in $(seq "$readers"); do
    curl -sf -o /dev/null -H "X-API-Key: $key" "$api/deployments/$id" &
    readers_pids+=($!)
  done
  wait "${readers_pids[@]}"
  echo "after round $round of $readers parallel detail reads: $(rss) MB (+$(($(rss) - before)) MB)"
done
