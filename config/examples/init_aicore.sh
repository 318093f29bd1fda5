#!/bin/sh
# Example environment init script (the original platform's init_aicore.sh).
# It prints each step and leaves a marker file so a first deployment is easy to verify.
set -eu
marker_dir="${AICORE_MARKER_DIR:-./data/demo}"
echo "[init_aicore] step 1/3: checking the environment on $(uname -s)"
mkdir -p "$marker_dir"
echo "[init_aicore] step 2/3: preparing AICore (version ${DEPLOYMENT_VERSION:-unversioned})"
date -u +%Y-%m-%dT%H:%M:%SZ > "$marker_dir/init_aicore.done"
echo "[init_aicore] step 3/3: done; marker written to $marker_dir/init_aicore.done"
