#!/usr/bin/env bash
# Starts the cluster, then runs the given command (default: wait until the container is
# stopped); the cluster is stopped, by pid, on the way out.
set -euo pipefail
cd /opt/modelshard
# The nodes' mount namespaces need CAP_SYS_ADMIN (docker run --cap-add SYS_ADMIN); without it,
# pass MODELSHARD_CLUSTER_FLAGS=--shared-host.
# shellcheck disable=SC2086
bin/modelshard-cluster start ${MODELSHARD_CLUSTER_FLAGS:-}
trap 'bin/modelshard-cluster stop' EXIT
if [[ ${1:-wait} == wait ]]; then
  trap 'exit 0' TERM INT
  sleep infinity & wait $!
else
  "$@"
fi
