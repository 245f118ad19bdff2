#!/usr/bin/env bash
# The full test run: installs the tools it needs (scripts/deps.sh, pinned, into the cache),
# checks formatting, lints and the dependency tree (cargo-deny), then runs every test — unit,
# service, loopback and real-server (OpenBao, PostgreSQL, Envoy, Helm, kubernetes-validate,
# checkov, a real kube-apiserver built from Go modules) — and a fuzz smoke. .ci/run calls this.
set -euo pipefail
# Tools are built for the scripts, not shipped: a quick release profile (no LTO, opt-level 1)
# roughly halves their cold build time. keyward's own release build (scripts/release.sh) is untouched.
TOOL_PROFILE=(env CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0)
cd "$(dirname "$0")/.."

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
# Build outputs live in the cache too, so a second run (or CI on this machine) is incremental.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n=== %s\n' "$*"; }

step "tools"
scripts/deps.sh all
scripts/deps.sh cluster   # the test cluster (Go build, ~10-18 min cold, instant once built: docs/cluster.md)
scripts/deps.sh release   # image tools: skopeo, umoci, cargo-auditable/-cyclonedx, cosign, registry (docs/release.md)
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"

# The build cache grows with every checkout that builds into it (incremental state is kept per
# source path). With under 20 GiB free, drop the incremental state first: it is only a speed-up.
free_kb=$(df -Pk "$KEYWARD_CACHE" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((20 * 1024 * 1024)) ] && [ -d "$CARGO_TARGET_DIR/debug/incremental" ]; then
  echo "only $((free_kb / 1024 / 1024)) GiB free: removing $CARGO_TARGET_DIR/debug/incremental"
  rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny (advisories, licenses, duplicates, sources: docs/supply-chain.md)"
scripts/deny.sh

step "release image: rebuild the commit the chart pins (docs/release.md; a release build, cached)"
scripts/release.sh --pinned --out "$KEYWARD_CACHE/release/out-pinned"

step "tests"
NEXTEST_VERSION=0.9.151
if ! cargo nextest --version 2>/dev/null | grep -q "cargo-nextest $NEXTEST_VERSION"; then
  echo "installing cargo-nextest $NEXTEST_VERSION (cargo install --locked cargo-nextest@$NEXTEST_VERSION)"
  "${TOOL_PROFILE[@]}" cargo install --locked "cargo-nextest@$NEXTEST_VERSION"
fi
cargo nextest run --workspace --locked --no-fail-fast --profile ci

step "fuzz smoke (every target in fuzz/, 10 s each)"
scripts/fuzz-smoke.sh
