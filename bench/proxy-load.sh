#!/usr/bin/env bash
# Load through a real sidecar pair (keyward sidecar outbound -> inbound, real OpenBao PKI):
# 10,000 concurrent connections, three rounds of 34 requests on each (1,020,000 requests),
# with the fd and RSS checks of tests/load_proxy.rs. Needs root for the descriptor limit.
# Usage: bench/proxy-load.sh [CONNECTIONS] [REQUESTS_PER_CONNECTION_PER_ROUND]
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
scripts/deps.sh core >&2
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"
export KEYWARD_LOAD_CONNECTIONS=${1:-10000} KEYWARD_LOAD_REQUESTS=${2:-34}
# Each sidecar holds two descriptors per connection; the client and echo app one each.
exec prlimit --nofile=262144:262144 cargo nextest run --release --locked --test load_proxy --no-capture
