#!/usr/bin/env bash
# The notifications soak: DEPLOYMENTS deployments (default 1,000) on LANES lanes (default 8),
# three events each, to a receiver that fails 30 % of attempts with 500s and holds 10 % without
# an answer. It prints what a deduping receiver saw (lost, accepted twice, out of order: each
# must be 0) and the time to each delivery's first attempt from when it could be sent (its event,
# or the acceptance of the deployment's event before it: p50, p99, max; the bar: p99 under 1 s),
# and exits 1 when a bar is missed.
#
#   benches/notify.sh [DEPLOYMENTS [LANES]]
set -euo pipefail
cd "$(dirname "$0")/.."
deployments=${1:-1000}
lanes=${2:-8}
target=${CARGO_TARGET_DIR:-target}
# Nothing a benchmark starts may talk to another machine: no EC2 metadata lookups.
export AWS_EC2_METADATA_DISABLED=true

cargo build --release --workspace --all-targets --quiet
out=$("$target/release/examples/notify_soak" "$deployments" "$lanes")
printf '%s\n' "$out"
line=$(grep '^notify:' <<<"$out")
p99=$(sed -n 's/.* first_attempt_p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
if awk -v p="$p99" 'BEGIN { exit !(p >= 1000) }'; then
  echo "missed: p99 from event to first attempt ${p99} ms, the bar is under 1000 ms" >&2
  exit 1
fi
