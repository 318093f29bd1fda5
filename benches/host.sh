# Sourced by the benchmark scripts: starts a host (target/release/powerautomation) with a temporary data
# directory on a free loopback port, and stops it (and removes the directory) on exit.
#
#   start_host ROLE [SETTINGS_LINE...]   # sets $address, $key, $host_pid, $work
#   stop_host                            # stops the host start_host started last, now
#
# The key has ROLE; the extra lines go into [plugins.deployment_mcp.settings]. `$PLUGIN_LINES`
# (TOML lines, e.g. 'isolation = "process"') go into [plugins.deployment_mcp] itself and
# `$SERVER_LINES` into [server]. `$HOST_PIN` (a command prefix such as `taskset -c 0-7`) runs
# the host pinned; `$BENCH_ENVIRONMENTS_FILE` replaces its environments file. `$HOST_BUILD`
# names a directory holding another build's `powerautomation`
# and `libdeployment_mcp.so` (default `target/release`). Several hosts may run at once, started
# one after the other (save $address, $key and $host_pid before the next start_host): every one
# still running is stopped, and its directory removed, on exit.
# Nothing a benchmark starts may talk to another machine: no EC2 metadata lookups.
export AWS_EC2_METADATA_DISABLED=true
unset AWS_EC2_METADATA_SERVICE_ENDPOINT

# The hosts started and not yet stopped, and their directories (same order).
bench_host_pids=()
bench_host_dirs=()

# Stops one host (SIGTERM, then waits: a host in process mode stops its plugin's child itself)
# and removes its directory.
stop_one_host() { # pid dir
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  rm -rf "$2"
}

stop_all_hosts() {
  local i
  for i in "${!bench_host_pids[@]}"; do
    stop_one_host "${bench_host_pids[$i]}" "${bench_host_dirs[$i]}"
  done
  bench_host_pids=()
  bench_host_dirs=()
}
trap stop_all_hosts EXIT

stop_host() {
  local i pids=() dirs=()
  stop_one_host "$host_pid" "$work"
  for i in "${!bench_host_pids[@]}"; do
    [ "${bench_host_pids[$i]}" = "$host_pid" ] && continue
    pids+=("${bench_host_pids[$i]}")
    dirs+=("${bench_host_dirs[$i]}")
  done
  bench_host_pids=(${pids[@]+"${pids[@]}"})
  bench_host_dirs=(${dirs[@]+"${dirs[@]}"})
}

start_host() {
  local role="$1" build="${HOST_BUILD:-target/release}"
  shift
  [ -x "$build/powerautomation" ] && [ -f "$build/libdeployment_mcp.so" ] ||
    { echo "no powerautomation and libdeployment_mcp.so in $build: build first (cargo build --release --workspace)" >&2; exit 2; }
  build=$(cd "$build" && pwd)
  work=$(mktemp -d)
  key="pa_bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  local hash
  hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
  cat > "$work/bench.toml" <<TOML
[server]
listen = "127.0.0.1:0"
${SERVER_LINES:-}
[storage]
data_dir = "$work/data"
[auth]
keys = [ { name = "bench", role = "$role", sha256 = "$hash" } ]
[log]
format = "json"
level = "warn,powerautomation::server=info"
[plugins.deployment_mcp]
path = "$build/libdeployment_mcp.so"
mount = "/api/deployment"
watch = false
${PLUGIN_LINES:-}
[plugins.deployment_mcp.settings]
environments_file = "${BENCH_ENVIRONMENTS_FILE:-config/remote_environments.json}"
allowed_target_networks = ["127.0.0.0/8", "::1/128"]
TOML
  printf '%s\n' "$@" >> "$work/bench.toml"
  ${HOST_PIN:-} "$build/powerautomation" --config "$work/bench.toml" 2> "$work/host.log" &
  host_pid=$!
  bench_host_pids+=("$host_pid")
  bench_host_dirs+=("$work")
  address=
  for _ in $(seq 100); do
    address=$(grep -o '"address":"[^"]*"' "$work/host.log" | head -1 | cut -d'"' -f4 || true)
    [ -n "$address" ] && break
    sleep 0.1
  done
  [ -n "$address" ] || { echo "host did not start:" >&2; cat "$work/host.log" >&2; exit 1; }
}

# `taskset -c LIST` when a CPU list is given, nothing otherwise (for $HOST_PIN and the load
# generator).
pin() { [ -n "${1:-}" ] && echo "taskset -c $1"; true; }

# Waits (bounded) until the status route answers 200 on the host at $1 with key $2.
wait_for_status_route() { # address key
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $2" "http://$1/api/deployment/status")" = 200 ] &&
      return 0
    sleep 0.1
  done
  echo "the plugin of the host at $1 does not serve:" >&2
  cat "$work/host.log" >&2
  exit 1
}

# CPU time a host has used so far, in clock ticks, split in two: "host plugin". The plugin's
# share is its runtime's threads in the host (named after the plugin) and, in process mode,
# every thread of the host's children.
cpu_ticks() { # host_pid
  local task comm stat host=0 plugin=0 child
  for task in /proc/"$1"/task/*; do
    read -r comm < "$task/comm" 2>/dev/null || continue
    read -r stat < "$task/stat" 2>/dev/null || continue
    # utime and stime are fields 14 and 15; the name (field 2) may hold spaces, so count
    # from the closing parenthesis.
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    if [[ "$comm" == deployment_mcp* ]]; then
      plugin=$((plugin + f[11] + f[12]))
    else
      host=$((host + f[11] + f[12]))
    fi
  done
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    for task in /proc/"$child"/task/*; do
      read -r stat < "$task/stat" 2>/dev/null || continue
      stat=${stat##*) }
      read -r -a f <<<"$stat"
      plugin=$((plugin + f[11] + f[12]))
    done
  done
  echo "$host $plugin"
}
