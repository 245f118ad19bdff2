#!/usr/bin/env bash
# Load through a real sidecar pair (keyward sidecar outbound -> inbound, real OpenBao PKI):
# 9,500 concurrent connections, three rounds of 36 requests on each (1,026,000 requests), with
# the fd and RSS checks of tests/load_proxy.rs. Every process on the path holds two descriptors
# per connection (a sidecar: downstream + upstream; the driver: client + echo app), so the
# descriptor hard limit caps the run: 20,000 here (10,000 connections would need ~20,050), and
# raising it needs CAP_SYS_RESOURCE, which this machine's sandbox does not grant.
# Usage: bench/proxy-load.sh [CONNECTIONS] [REQUESTS_PER_CONNECTION_PER_ROUND]
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
scripts/deps.sh core >&2
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"
export KEYWARD_LOAD_CONNECTIONS=${1:-9500} KEYWARD_LOAD_REQUESTS=${2:-36}
hard=$(ulimit -Hn)
need=$((KEYWARD_LOAD_CONNECTIONS * 2 + 100))
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  echo "descriptor hard limit $hard < $need needed for $KEYWARD_LOAD_CONNECTIONS connections; pass fewer" >&2
  exit 2
fi
ulimit -Sn "$hard"
exec cargo nextest run --release --locked --test load_proxy --no-capture
