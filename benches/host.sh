# Sourced by the benchmark scripts: starts target/release/powerautomation with a temporary data
# directory on a free loopback port, and stops it (and removes the directory) on exit.
#
#   start_host ROLE [SETTINGS_LINE...]   # sets $address, $key, $host_pid, $work
#
# The key has ROLE; the extra lines go into [plugins.deployment_mcp.settings]. `$HOST_PIN` (a
# command prefix such as `taskset -c 0-7`) runs the host pinned.
[ -x target/release/powerautomation ] && [ -f target/release/libdeployment_mcp.so ] ||
  { echo "build first: cargo build --release --workspace" >&2; exit 2; }

# Nothing a benchmark starts may talk to another machine: no EC2 metadata lookups.
export AWS_EC2_METADATA_DISABLED=true
unset AWS_EC2_METADATA_SERVICE_ENDPOINT

start_host() {
  local role="$1"
  shift
  work=$(mktemp -d)
  trap 'kill "$host_pid" 2>/dev/null || true; wait "$host_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
  key="pa_bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  local hash
  hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
  cat > "$work/bench.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "$work/data"
[auth]
keys = [ { name = "bench", role = "$role", sha256 = "$hash" } ]
[log]
format = "json"
level = "warn,powerautomation::server=info"
[plugins.deployment_mcp]
path = "target/release/libdeployment_mcp.so"
mount = "/api/deployment"
watch = false
[plugins.deployment_mcp.settings]
environments_file = "config/remote_environments.json"
TOML
  printf '%s\n' "$@" >> "$work/bench.toml"
  ${HOST_PIN:-} target/release/powerautomation --config "$work/bench.toml" 2> "$work/host.log" &
  host_pid=$!
  address=
  for _ in $(seq 100); do
    address=$(grep -o '"address":"[^"]*"' "$work/host.log" | head -1 | cut -d'"' -f4 || true)
    [ -n "$address" ] && break
    sleep 0.1
  done
  [ -n "$address" ] || { echo "host did not start:" >&2; cat "$work/host.log" >&2; exit 1; }
}
