#!/usr/bin/env bash
# The full test run: installs the tools it needs (scripts/deps.sh), checks formatting and
# lints, then runs every test — unit, service, loopback and real-server (OpenBao, PostgreSQL,
# Envoy, Helm, kubernetes-validate, checkov). .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
# Build outputs live in the cache too, so a second run (or CI on this machine) is incremental.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n=== %s\n' "$*"; }

step "tools"
scripts/deps.sh all
scripts/deps.sh cluster   # the test cluster (Go build, ~10-18 min cold, instant once built: docs/cluster.md)
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo deny (advisories, licenses, duplicates, sources: docs/supply-chain.md)"; scripts/deny.sh

step "tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest missing; installing it (cargo install cargo-nextest --locked)"
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --locked --no-fail-fast --profile ci

step "fuzz smoke (every target in fuzz/, 10 s each)"
scripts/fuzz-smoke.sh
