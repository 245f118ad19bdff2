#!/usr/bin/env bash
# Supply-chain check: cargo-deny over the workspace's dependency graph (advisories, licenses,
# duplicate crates, sources; rules in deny.toml, explained in docs/supply-chain.md).
#
# The RustSec advisory database: first the normal fetch from upstream. Where that is impossible
# (no network), the newest offline snapshot found beside the checkout, unpacked once into a git
# repository of its own under $CARGO_HOME/advisory-dbs. The output says which database was used
# and how old it is.
#
# Usage: scripts/deny.sh [CHECK...]   (advisories, bans, licenses, sources; default: all)
# Environment: KEYWARD_DENY_OFFLINE=1 skips the fetch attempt; KEYWARD_DENY_FETCH_TIMEOUT
# (seconds, default 120) bounds it; KEYWARD_ADVISORY_SNAPSHOTS overrides where snapshots are looked
# for (default: shared/advisory-db beside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
log() { printf '[deny] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

scripts/deps.sh deny
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"
deny=${KEYWARD_CARGO_DENY:?scripts/deps.sh deny did not set KEYWARD_CARGO_DENY}

cargo_home=${CARGO_HOME:-$HOME/.cargo}
snapshots=${KEYWARD_ADVISORY_SNAPSHOTS:-$(cd "$repo/.." && pwd)/shared/advisory-db}
# cargo-deny keeps the default database (https://github.com/RustSec/advisory-db) in
# <db-path>/advisory-db-<hash of that URL>; this is the name cargo-deny 0.20 gives it.
db_dir=advisory-db-3157b0e258782691

# cargo-deny reads crate manifests and licenses from Cargo's cache, for every platform in the
# lockfile; clippy only downloads the host's. --locked: never rewrite Cargo.lock.
cargo fetch --locked --quiet || log "cargo fetch failed; checking with the crates already in Cargo's cache"

days_since() { echo $(( ($(date -u +%s) - $(date -u -d "$1" +%s)) / 86400 )); }

unset KEYWARD_ADVISORY_DBS_SUBDIR   # the upstream database's place; set below only for a snapshot
fetch_rc=skipped
fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
if [ "${KEYWARD_DENY_OFFLINE:-0}" != 1 ]; then
  fetch_rc=0
  GIT_TERMINAL_PROMPT=0 timeout "${KEYWARD_DENY_FETCH_TIMEOUT:-120}" "$deny" --locked fetch db 2>"$fetch_log" || fetch_rc=$?
fi
if [ "$fetch_rc" = 0 ]; then
  # The database cargo-deny just cloned or fetched: the newest git repository in its directory
  # (advisory-db-3157b0e258782691 for the default upstream).
  # shellcheck disable=SC2012  # our own directory names; ls -t orders by modification time
  db=$(ls -1dt "$cargo_home"/advisory-dbs/*/.git 2>/dev/null | head -1 || true)
  [ -n "$db" ] || die "cargo-deny fetched the advisory database but there is none in $cargo_home/advisory-dbs"
  db=${db%/.git}
  commit=$(git -C "$db" log -1 --format='%h, committed %cs')
  source_desc="advisory database fetched just now from $(git -C "$db" remote get-url origin 2>/dev/null || echo upstream) (commit $commit), in $db"
else
  case $fetch_rc in
    skipped) log "KEYWARD_DENY_OFFLINE=1: not fetching the advisory database" ;;
    124) log "fetching the advisory database timed out after ${KEYWARD_DENY_FETCH_TIMEOUT:-120} s" ;;
    *) log "cannot fetch the advisory database: $(grep -v '^\s*$' "$fetch_log" | tail -1 | cut -c1-240)" ;;
  esac
  # advisory-db-YYYY-MM-DD-SHORTSHA.tar.gz; the newest by date wins.
  tarballs=("$snapshots"/advisory-db-*.tar.gz)   # bash sorts the matches: the last is the newest
  tarball=${tarballs[-1]}
  [ -f "$tarball" ] || tarball=
  [ -n "$tarball" ] || die "no advisory database: none fetched, and no snapshot (advisory-db-DATE-COMMIT.tar.gz) in $snapshots"
  name=$(basename "$tarball" .tar.gz)
  snap_date=$(sed -E 's/^advisory-db-([0-9]{4}-[0-9]{2}-[0-9]{2})-.*/\1/' <<<"$name")
  snap_commit=${name##*-}
  date -u -d "$snap_date" +%s >/dev/null 2>&1 || die "$tarball: expected advisory-db-YYYY-MM-DD-COMMIT.tar.gz"
  # A directory per snapshot, so a newer tarball unpacks beside the old one and the switch is one
  # rename. deny.toml's db-path appends KEYWARD_ADVISORY_DBS_SUBDIR to $CARGO_HOME/advisory-dbs.
  export KEYWARD_ADVISORY_DBS_SUBDIR=/keyward-offline/$name
  root="$cargo_home/advisory-dbs$KEYWARD_ADVISORY_DBS_SUBDIR"
  db="$root/$db_dir"
  if [ ! -f "$root/.unpacked" ]; then
    log "unpacking $name into $root"
    tmp="$root.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/$db_dir"
    tar xzf "$tarball" -C "$tmp/$db_dir" --strip-components=1
    git -C "$tmp/$db_dir" init -q
    git -C "$tmp/$db_dir" add -A
    GIT_AUTHOR_DATE="${snap_date}T00:00:00Z" GIT_COMMITTER_DATE="${snap_date}T00:00:00Z" \
      git -C "$tmp/$db_dir" -c user.name=snapshot -c user.email=snapshot@localhost \
      -c commit.gpgsign=false commit -qm "RustSec advisory-db $snap_commit ($snap_date)"
    # cargo-deny dates a database by .git/FETCH_HEAD, else the newer of HEAD's commit and the
    # .git/HEAD file's mtime. Give HEAD the snapshot's date, or the unpacking would count as a
    # fresh fetch and the staleness limit in deny.toml would never apply.
    touch -d "${snap_date}T00:00:00Z" "$tmp/$db_dir/.git/HEAD"
    touch "$tmp/.unpacked"
    rm -rf "$root"; mv "$tmp" "$root"
  fi
  age=$(days_since "$snap_date")
  source_desc="OFFLINE SNAPSHOT of the RustSec advisory database, upstream commit $snap_commit of $snap_date ($age days old; advisories published since then are not checked), from $tarball, unpacked in $db"
fi
log "advisory database: $source_desc"

status=0
"$deny" --locked --offline check --show-stats "$@" || status=$?
log "advisory database used: $source_desc"
if [ "$status" -ne 0 ]; then
  log "cargo deny check failed (exit $status): see the errors above; docs/supply-chain.md says how to handle each kind"
fi
exit "$status"
