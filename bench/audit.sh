#!/usr/bin/env bash
# `keyward audit verify` and a filtered `keyward audit query` over a large multi-pod export
# (2 million records in 50 chains by default, written once by the audit log's writer into
# $KEYWARD_CACHE/bench-audit/), against jq doing the same filter on the same file. Reports
# ratios (bench/README.md, "Audit review").
# Usage: bench/audit.sh [--records N] [--chains C] [--runs R] [--cache DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_CACHE=${KEYWARD_CACHE:-$HOME/.cache/keyward}
scripts/deps.sh browser   # jq (and chromium), pinned from Debian
# A target dir of its own: a release build in the shared one would hold its lock for minutes.
export CARGO_TARGET_DIR=${KEYWARD_BENCH_TARGET:-$KEYWARD_CACHE/bench-target}
cargo build --release --locked --bin keyward -p keyward
cargo build --release --locked -p keyward-bench --bin audit
"$CARGO_TARGET_DIR/release/audit" "$CARGO_TARGET_DIR/release/keyward" "$@"
