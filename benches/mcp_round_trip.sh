#!/usr/bin/env bash
# MCP tool round trip against the same REST call, in one run on the same host: the official
# Python SDK calls `get_deployment` over Streamable HTTP, and plain HTTP GETs
# /api/deployment/deployments/{id}, one after the other, N rounds each.
#
#   cargo build --release --workspace && tests/peers.sh && benches/mcp_round_trip.sh
#
# The host runs from target/release with a temporary data directory on a free loopback port,
# deploying the shipped demo environment once for a record to read.
set -euo pipefail
cd "$(dirname "$0")/.."
python=tests/mcp/.venv/bin/python
[ -x "$python" ] || { echo "the MCP Python SDK is missing: run tests/peers.sh" >&2; exit 2; }
# shellcheck source=benches/host.sh
. benches/host.sh
start_host admin "health_check_interval_secs = 0"
"$python" tests/mcp/drive.py http "http://$address/api/deployment/mcp" "$key" bench \
  --environment local_demo
