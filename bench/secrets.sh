#!/usr/bin/env bash
# Secret reads: keyward broker vs bao agent vs OpenBao directly, in one run.
# Usage: bench/secrets.sh [SECONDS_PER_CASE]   (release build; tools from scripts/deps.sh)
#        bench/secrets.sh soak [SECONDS]        (100 socket clients; fd and RSS curve)
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
scripts/deps.sh core >&2
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"
cargo build --release --locked --bin keyward
cargo build --release --locked -p keyward-bench --bin secrets
"$CARGO_TARGET_DIR/release/secrets" "$CARGO_TARGET_DIR/release/keyward" "${@:-5}"
