#!/usr/bin/env bash
# Mutation testing of keyward's security-critical pure code with cargo-mutants: every mutant
# (an operator flipped, a body replaced by a constant, a condition negated) is built and the
# owning crate's fast tests are run against it; a mutant that no test catches is a gap in the
# tests. Results and the how-to-read are in docs/testing.md ("Mutation testing").
#
# Not part of scripts/test.sh (it is slow: each mutant is a build plus a test run).
#
# Usage: scripts/mutants.sh [SCOPE...]     SCOPE: audit identity config injector authz svid policy
#                                          access (default: all); parts of audit: audit-claims =
#                                          audit-verify audit-written audit-checkpoints
#                                          audit-segments audit-writer; audit-envelope
#   scripts/mutants.sh --install-only       only install cargo-mutants
# Environment:
#   KEYWARD_MUTANTS_JOBS   parallel mutant builds (default 1: the machine is shared)
#   KEYWARD_MUTANTS_ARGS   extra arguments for cargo mutants (e.g. "--re verify" or "--list")
#   KEYWARD_MUTANTS_OUT    where results go (default $KEYWARD_CACHE/mutants)
#   KEYWARD_MUTANTS_ITERATE=1  re-test only what the last run in KEYWARD_MUTANTS_OUT did not
#                          catch (cargo-mutants --iterate): the quick loop while adding tests
#   KEYWARD_MUTANTS_REV    mutate a committed revision (e.g. HEAD) exported with `git archive`
#                          instead of the working tree: in a checkout others are editing, their
#                          half-done changes then cannot break the baseline build
#
# cargo-mutants is installed from crates.io at a pinned version into $KEYWARD_CACHE/cargo-mutants
# (idempotent, like scripts/deps.sh deny). It copies the tree to a scratch directory and builds
# there with a target directory of its own ($KEYWARD_CACHE/mutants-target), so it never takes the
# workspace build lock; it runs under `nice -n 10`. Output per crate:
# $KEYWARD_CACHE/mutants/<crate>/mutants.out/{outcomes.json,caught.txt,missed.txt,...}.
set -euo pipefail
# Tools are built for the scripts, not shipped: a quick release profile (no LTO, opt-level 1)
# roughly halves their cold build time. keyward's own release build (scripts/release.sh) is untouched.
TOOL_PROFILE=(env CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0)
cd "$(dirname "$0")/.."

CARGO_MUTANTS_VERSION=27.1.0   # crates.io; needs Rust >= 1.78

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TERM_COLOR=never
log() { printf '[mutants] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

root="$KEYWARD_CACHE/cargo-mutants"
mutants="$root/bin/cargo-mutants"
install_mutants() {
  if [ "$("$mutants" mutants --version 2>/dev/null)" = "cargo-mutants $CARGO_MUTANTS_VERSION" ]; then return 0; fi
  local t0=$SECONDS build="$KEYWARD_CACHE/cargo-mutants-build.$$"
  log "building cargo-mutants $CARGO_MUTANTS_VERSION with $(cargo --version): cold, this takes a few minutes"
  rm -rf "$build"
  CARGO_TARGET_DIR="$build" nice -n 19 "${TOOL_PROFILE[@]}" cargo install --quiet --locked --force \
    "cargo-mutants@$CARGO_MUTANTS_VERSION" --root "$root" \
    || { rm -rf "$build"; die "cargo install cargo-mutants@$CARGO_MUTANTS_VERSION failed"; }
  rm -rf "$build"
  "$mutants" mutants --version >&2
  log "cargo-mutants built in $((SECONDS - t0)) s"
}

install_mutants
[ "${1:-}" = --install-only ] && exit 0

# What is mutated, and by which tests it must be caught: the crate's own fast unit and
# integration tests (cargo-mutants tests only the package that owns the mutated file). For the
# injector: its unit tests and the admission and patch tests, not the webhook server or YAML
# tests (webhook_tls, webhook_memory, offline_yaml), which do not check annotation rules and
# cost a build and a link per mutant.
declare -A scope=(
  [audit]="-p keyward-audit"
  # The files behind the audit claims, without the report/query CLI: audit-claims is all five
  # parts below (one run: cargo-mutants takes files in module order, so verify.rs comes last;
  # the parts let the most important run first on a busy machine). Reading checkpoints from
  # Vault (VaultReader, checkpoints::run) is left to the OpenBao tests in tests/, which
  # cargo-mutants does not run for this crate.
  [audit-claims]="-p keyward-audit --file audit/src/canon.rs --file audit/src/verify.rs
    --file audit/src/written.rs --file audit/src/checkpoints.rs --file audit/src/sink.rs --file audit/src/lib.rs
    --exclude-re VaultReader|CheckpointArgs|\srun\s|in\srun$"
  [audit-verify]="-p keyward-audit --file audit/src/verify.rs --file audit/src/canon.rs"
  # verify's fast path: a line in the writer's form checked and hashed in place. A mutant that
  # only makes it decline a line is equivalent (the line goes the general way, to the same
  # result); one that makes it accept or misread a line must be caught.
  [audit-written]="-p keyward-audit --file audit/src/written.rs"
  [audit-checkpoints]="-p keyward-audit --file audit/src/checkpoints.rs
    --exclude-re VaultReader|CheckpointArgs|\srun\s|in\srun$"
  [audit-segments]="-p keyward-audit --file audit/src/sink.rs"
  # Finding the record in a line as a log pipeline delivers it (Fluent Bit, Vector, CRI
  # prefixes): what verify reads from logs that left the pod.
  [audit-envelope]="-p keyward-audit --file audit/src/envelope.rs"
  [audit-writer]="-p keyward-audit --file audit/src/lib.rs"
  [identity]="-p keyward-identity"
  [config]="-p keyward-config"
  [injector]="-p keyward-injector --file injector/src/annotations.rs --cargo-arg=--lib
    --cargo-arg=--test=admission_rules --cargo-arg=--test=webhook_patch"
  # The proxy's decisions: its unit tests and proxy/tests (in-process TLS, no external tools).
  [authz]="-p keyward-proxy --file proxy/src/authz.rs"
  [svid]="-p keyward-proxy --file proxy/src/svid.rs"
  [policy]="-p keyward-proxy --file proxy/src/policy.rs"
  # The broker's access decisions: its unit tests and broker/tests (in-memory secret sources).
  [access]="-p keyward-broker --file broker/src/access.rs"
)
all=(audit identity config injector authz svid policy access)
known=("${all[@]}" audit-claims audit-verify audit-written audit-checkpoints audit-segments audit-writer audit-envelope)
order=("${all[@]}")
[ $# -gt 0 ] && order=("$@")
for c in "${order[@]}"; do [ -n "${scope[$c]:-}" ] || die "unknown scope '$c' (${known[*]})"; done

test_tool=cargo
if cargo nextest --version >/dev/null 2>&1; then test_tool=nextest; fi

out_root=${KEYWARD_MUTANTS_OUT:-$KEYWARD_CACHE/mutants}
mkdir -p "$out_root"
src=.
if [ -n "${KEYWARD_MUTANTS_REV:-}" ]; then
  rev=$(git rev-parse --verify "${KEYWARD_MUTANTS_REV}^{commit}") || die "no such revision: $KEYWARD_MUTANTS_REV"
  src="$KEYWARD_CACHE/mutants-src/$rev"
  if [ ! -f "$src/Cargo.toml" ]; then
    rm -rf "$src" && mkdir -p "$src"
    git archive "$rev" | tar -x -C "$src" || die "cannot export $rev"
  fi
  log "mutating revision $rev (exported to $src), not the working tree"
fi
# A target dir of its own: mutated builds never wait on (or evict) the shared one, and the
# dependencies stay built between runs.
export CARGO_TARGET_DIR="$KEYWARD_CACHE/mutants-target"
# No debug info in mutant builds: each mutant relinks the crate's test binaries, and a mutant's
# result needs no backtrace. (Only this private target dir sees the setting.)
export CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_TEST_DEBUG=false
iterate=()
[ "${KEYWARD_MUTANTS_ITERATE:-0}" = 1 ] && iterate=(--iterate)

jobs=${KEYWARD_MUTANTS_JOBS:-1}
summary=()
status=0
for c in "${order[@]}"; do
  out="$out_root/$c"
  [ ${#iterate[@]} -gt 0 ] || rm -rf "$out/mutants.out" "$out/mutants.out.old"
  mkdir -p "$out"
  log "$c: cargo mutants ${scope[$c]} (test tool $test_tool, $jobs job(s)) -> $out/mutants.out"
  rc=0
  # shellcheck disable=SC2086  # scope and extra args are word lists
  nice -n 10 "$mutants" mutants --dir "$src" ${scope[$c]} --test-tool "$test_tool" --jobs "$jobs" \
    --output "$out" --no-shuffle --colors never --caught "${iterate[@]}" ${KEYWARD_MUTANTS_ARGS:-} || rc=$?
  # cargo-mutants exits 0 all caught, 2 missed, 3 timeouts, 4 baseline failed; else broken.
  case $rc in 0|2|3) ;; *) status=1; log "$c: cargo mutants failed (exit $rc)";; esac
  [ "$rc" = 2 ] || [ "$rc" = 3 ] && status=2
  n() { if [ -f "$out/mutants.out/$1.txt" ]; then grep -c . "$out/mutants.out/$1.txt" || true; else echo 0; fi; }
  caught=$(n caught) missed=$(n missed) unviable=$(n unviable) timeout=$(n timeout)
  viable=$((caught + missed + timeout))
  pct=n/a
  [ "$viable" -gt 0 ] && pct="$((100 * caught / viable))%"
  line=$(printf '%-9s caught %4s  missed %4s  unviable %4s  timeout %4s  caught/viable %s' \
    "$c" "$caught" "$missed" "$unviable" "$timeout" "$pct")
  if [ ${#iterate[@]} -gt 0 ]; then
    line+="  (this pass only; before it: $(n previously_caught) caught or unviable)"
  fi
  summary+=("$line")
  if [ "$missed" -gt 0 ]; then
    log "$c: missed mutants:"; sed 's/^/    /' "$out/mutants.out/missed.txt" >&2
  fi
done

printf '\n=== mutation testing (cargo-mutants %s, %s)\n' "$CARGO_MUTANTS_VERSION" "$(date -u +%F)"
printf '%s\n' "${summary[@]}"
exit "$status"
