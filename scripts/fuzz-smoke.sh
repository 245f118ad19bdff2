#!/usr/bin/env bash
# A short run of every fuzz target in fuzz/ (cargo fuzz, libFuzzer), starting from the committed
# seeds: each target for FUZZ_SMOKE_SECONDS (default 10) with no crash, leak or hang allowed.
# The 5-minute runs and their results are in fuzz/README.md.
#
# Only stable Rust is assumed: RUSTC_BOOTSTRAP=1 lets it take cargo fuzz's -Z sanitizer flags.
# Installs cargo-fuzz when it is missing and fails (never skips) when it cannot.
set -euo pipefail
# Tools are built for the scripts, not shipped: a quick release profile (no LTO, opt-level 1)
# roughly halves their cold build time. keyward's own release build (scripts/release.sh) is untouched.
TOOL_PROFILE=(env CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0)
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SMOKE_SECONDS:-10}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# The sanitizer build gets its own target dir (a CARGO_TARGET_DIR from the caller is the
# workspace's): in the keyward cache when there is one, so that later runs are incremental
# (a cold build takes ~10 minutes on 2 cores, a warm one seconds); else fuzz/target.
unset CARGO_TARGET_DIR
target_dir=()
if [ -n "${KEYWARD_CACHE:-}" ]; then
  target_dir=(--target-dir "$KEYWARD_CACHE/fuzz-target")
fi

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked cargo-fuzz@$CARGO_FUZZ_VERSION)"
  "${TOOL_PROFILE[@]}" cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
cargo fuzz --version

targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz-smoke: no fuzz targets found" >&2; exit 1; }

# The committed Cargo.lock pins the build (cargo fuzz has no --locked).
# -a: debug assertions and overflow checks on, so an arithmetic overflow is a crash.
cargo fetch --locked
cargo fuzz build -a "${target_dir[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $targets; do
  mkdir -p "$work/$t" "$work/artifacts/$t"
  echo "=== fuzz $t (${seconds}s)"
  # TMPDIR: what a target leaves in temporary directories (socket_api's broker) goes with $work.
  if TMPDIR="$work" cargo fuzz run -a "${target_dir[@]}" "$t" "$work/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$work/$t.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^Done' "$work/$t.log" | tr '\n' ' '
    echo
  else
    tail -n 60 "$work/$t.log"
    for a in "$work/artifacts/$t"/*; do
      [ -e "$a" ] || continue
      mkdir -p artifacts/"$t"
      cp "$a" artifacts/"$t"/
      echo "fuzz-smoke: $t: reproducer kept in fuzz/artifacts/$t/$(basename "$a")" >&2
    done
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz-smoke: all targets ran ${seconds}s without a finding"
