#!/usr/bin/env bash
# Starts the cluster, then runs the given command (default: wait until the container is
# stopped); the cluster is stopped, by pid, on the way out.
set -euo pipefail
cd /opt/modelshard
bin/modelshard-cluster start
trap 'bin/modelshard-cluster stop' EXIT
if [[ ${1:-wait} == wait ]]; then
  trap 'exit 0' TERM INT
  sleep infinity & wait $!
else
  "$@"
fi
