#!/usr/bin/env bash
# Builds keyward's release: a reproducible release binary (cargo auditable, remapped paths,
# stripped), its CycloneDX SBOM, and a minimal OCI image layout (keyward-oci, tools/oci) holding
# the binary, CA certificates and a passwd/group entry for 65532. No container daemon.
# Everything is built from a clean clone of one commit, so uncommitted edits never leak in.
# docs/release.md describes the image, how to verify it and how to mirror it.
#
# Usage:
#   scripts/release.sh [--rev REV] [--out DIR]     build; prints the image digest
#   scripts/release.sh --pin                         build HEAD, pin the chart's image digest to it
#                                                    and record the inputs in release/image.json
#   scripts/release.sh --pinned [--out DIR]          rebuild the commit release/image.json records
#                                                    and check the digest equals the chart's
#   scripts/release.sh --check-reproducible          build twice, from two fresh clones into two
#                                                    fresh target dirs, and compare (slow: cold)
#   scripts/release.sh sign --layout DIR --key cosign.key --pub cosign.pub [--out DIR] [--signature-dir DIR]
#                                                    sign the image in a loopback registry with
#                                                    cosign, verify, and save image + signature
#                                                    into an OCI layout (COSIGN_PASSWORD)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
SOURCE_URL=${KEYWARD_SOURCE_URL:-https://github.com/keyward/keyward}
TRIPLE=x86_64-unknown-linux-gnu
log() { printf '[release] %s\n' "$*" >&2; }
# The same build whoever calls: drop what cargo, rustup or a test runner put into the
# environment (CARGO, CARGO_PKG_*, RUSTC*, RUSTUP_TOOLCHAIN, a toolchain's bin in PATH), which
# would otherwise make cargo rebuild everything between a shell and a test.
for v in $(compgen -e | grep -E '^(CARGO|RUSTC|RUSTDOC|RUSTFLAGS|RUSTUP_TOOLCHAIN|CARGO_ENCODED_RUSTFLAGS)' \
           | grep -v -x -E 'CARGO_HOME|CARGO_TERM_COLOR'); do unset "$v"; done
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/toolchains/[^/]*/bin$' | paste -sd: -)
die() { log "error: $*"; exit 1; }

tools() {
  mkdir -p "$KEYWARD_CACHE/release"
  # deps.sh rewrites env.sh: one at a time (tests run release.sh in parallel).
  flock "$KEYWARD_CACHE/release/.deps-lock" "$repo/scripts/deps.sh" release >&2
  # shellcheck disable=SC1091
  source "$KEYWARD_CACHE/env.sh"
  export PATH="$KEYWARD_RELEASE_BIN:$PATH"
}

# build_release SRC TARGET OUT: the binary, SBOM and image of the commit checked out in SRC.
build_release() {
  local src=$1 target=$2 out=$3 t0=$SECONDS
  local cargo_home=${CARGO_HOME:-$HOME/.cargo}
  local rev epoch version
  rev=$(git -C "$src" rev-parse HEAD)
  epoch=$(git -C "$src" log -1 --format=%ct HEAD)
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/Cargo.toml" | head -1)
  [ -n "$version" ] || die "no package version in $src/Cargo.toml"
  mkdir -p "$out"
  rm -rf "$out/image" "$out/keyward" "$out/keyward.cdx.json" "$out/digest"
  log "building keyward $version at $rev (SOURCE_DATE_EPOCH=$epoch) in $src, target $target"
  env | grep -E '^(CARGO|RUST|PATH=)' | sort > "$KEYWARD_CACHE/release/last-build-env.txt" || true
  # Reproducibility: paths of the checkout, cargo's home and the target dir are remapped, no
  # incremental state, symbols stripped (no debug info), the commit time as SOURCE_DATE_EPOCH.
  # Statically linked (glibc, +crt-static): the image has no libc. An explicit --target keeps
  # these flags off build scripts and proc macros.
  ( cd "$src" && SOURCE_DATE_EPOCH=$epoch CARGO_TARGET_DIR=$target CARGO_INCREMENTAL=0 \
      CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
      RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$src=/keyward --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target" \
      nice -n 5 cargo auditable build --release --locked --target "$TRIPLE" -p keyward --bin keyward ) \
    || die "cargo auditable build failed"
  cp "$target/$TRIPLE/release/keyward" "$out/keyward"
  log "binary built after $((SECONDS - t0)) s: sha256 $(sha256sum "$out/keyward" | cut -c1-64)"

  local oci=${KEYWARD_OCI:-}
  if [ -z "$oci" ]; then
    ( cd "$src" && CARGO_TARGET_DIR=$target nice -n 5 cargo build --quiet --release --locked -p keyward-oci ) \
      || die "building keyward-oci failed"
    oci="$target/release/keyward-oci"
  fi

  # cargo-auditable's dependency list must be readable from the binary.
  objcopy --dump-section ".dep-v0=$out/dep-v0" "$out/keyward" /dev/null 2>/dev/null \
    || die "no .dep-v0 section in the binary (cargo auditable did not embed the dependency list)"
  local deps; deps=$("$oci" audit-info --section "$out/dep-v0" | wc -l)
  rm -f "$out/dep-v0"
  log "cargo-auditable data: $deps packages"

  # CycloneDX SBOM of the keyward package (normal dependencies, Linux x86_64).
  local sbomdir; sbomdir=$(mktemp -d)
  ( cd "$src" && SOURCE_DATE_EPOCH=$epoch cargo cyclonedx --quiet --format json --spec-version 1.5 \
      --target "$TRIPLE" --no-build-deps --override-filename keyward.cdx ) || die "cargo cyclonedx failed"
  [ -f "$src/keyward.cdx.json" ] || die "cargo cyclonedx wrote no $src/keyward.cdx.json"
  mv "$src/keyward.cdx.json" "$sbomdir/raw.json"
  find "$src" -name 'keyward.cdx.json' -delete
  "$oci" normalize-sbom --input "$sbomdir/raw.json" --output "$out/keyward.cdx.json" \
    --source-date-epoch "$epoch" --strip "$src" --strip "$cargo_home" --strip "$target"
  rm -rf "$sbomdir"

  local digest
  digest=$("$oci" build --binary "$out/keyward" --version "$version" --revision "$rev" \
    --source "$SOURCE_URL" --source-date-epoch "$epoch" --sbom "$out/keyward.cdx.json" --out "$out/image")
  echo "$digest" > "$out/digest"
  log "image $digest in $out/image (OCI layout, ref $version) after $((SECONDS - t0)) s"
  RELEASE_REV=$rev RELEASE_EPOCH=$epoch RELEASE_VERSION=$version RELEASE_DIGEST=$digest
}

# clone_at DIR REV: DIR holds a clean checkout of REV (kept when it already does, so cargo's
# fingerprints, which use file times, stay fresh).
clone_at() {
  local dir=$1 rev=$2 want
  want=$(git -C "$repo" rev-parse --verify "$rev^{commit}") || die "no commit $rev in $repo"
  if [ -d "$dir/.git" ] && [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" = "$want" ] \
     && [ -z "$(git -C "$dir" status --porcelain --untracked-files=all)" ]; then
    return 0
  fi
  log "fresh clone of $want in $dir"
  rm -rf "$dir"
  git clone -q --no-checkout "$repo" "$dir"
  git -C "$dir" -c advice.detachedHead=false checkout -q "$want"
}

pin() { # pin DIGEST: the chart's image digest line, release/image.json, and every other tracked
  # mention of the previous pin (the injector's built-in default image, its goldens); release/
  # signature/ is rewritten by `release.sh sign`, never edited
  local d=$1 vals="$repo/charts/keyward/values.yaml" old f
  grep -q '^  digest: "sha256:[0-9a-f]\{64\}"$' "$vals" || die "no image digest line in $vals"
  old=$(sed -n 's/^  digest: "\(sha256:[0-9a-f]\{64\}\)"$/\1/p' "$vals" | head -1)
  sed -i "s|^  digest: \"sha256:[0-9a-f]\{64\}\"$|  digest: \"$d\"|" "$vals"
  if [ "$old" != "$d" ]; then
    git -C "$repo" grep -l -F "$old" -- . ':!release' | while read -r f; do
      sed -i "s|$old|$d|g" "$repo/$f"
      log "re-pinned $f"
    done
  fi
  mkdir -p "$repo/release"
  # The pin before this one: tests/chart_upgrade.rs upgrades from its chart.
  if [ "$old" != "$d" ] && [ -f "$repo/release/image.json" ]; then
    cp "$repo/release/image.json" "$repo/release/previous.json"
  fi
  cat > "$repo/release/image.json" <<EOF
{
  "version": "$RELEASE_VERSION",
  "revision": "$RELEASE_REV",
  "source_date_epoch": $RELEASE_EPOCH,
  "source": "$SOURCE_URL",
  "digest": "$d"
}
EOF
  log "pinned $d (revision $RELEASE_REV) in charts/keyward/values.yaml and release/image.json"
}

sign() {
  local layout="" key="" pub="" out="" sigdir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --layout) layout=$2; shift 2 ;; --key) key=$2; shift 2 ;;
      --pub) pub=$2; shift 2 ;; --out) out=$2; shift 2 ;;
      --signature-dir) sigdir=$2; shift 2 ;;
      *) die "sign: unknown argument $1" ;;
    esac
  done
  if [ -z "$layout" ] || [ -z "$key" ] || [ -z "$pub" ]; then die "sign needs --layout, --key and --pub"; fi
  [ -n "$out" ] || out="$layout.signed"
  if ! command -v cosign >/dev/null || ! command -v registry >/dev/null; then tools; fi
  local version; version=$(python3 -c 'import json,sys; print([m["annotations"]["org.opencontainers.image.ref.name"] for m in json.load(open(sys.argv[1]))["manifests"] if "annotations" in m][0])' "$layout/index.json")
  local digest; digest=$(python3 -c 'import json,sys; print([m["digest"] for m in json.load(open(sys.argv[1]))["manifests"] if "annotations" in m][0])' "$layout/index.json")
  local work; work=$(mktemp -d)
  cat > "$work/config.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $work/data}, delete: {enabled: true}}
http: {addr: "127.0.0.1:0"}
EOF
  OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    registry serve "$work/config.yml" > "$work/registry.log" 2>&1 &
  local rpid=$!
  # shellcheck disable=SC2064
  trap "kill $rpid 2>/dev/null || true; wait $rpid 2>/dev/null || true; rm -rf '$work'" EXIT
  # The registry logs its address once it listens: read its log as it grows (deadline 30 s).
  local addr="" line fd tpid
  exec {fd}< <(exec timeout 30 tail -n +1 -F "$work/registry.log" 2>/dev/null)
  tpid=$!
  while IFS= read -r -u "$fd" line; do
    if [[ $line =~ listening\ on\ (127\.0\.0\.1:[0-9]+) ]]; then addr=${BASH_REMATCH[1]}; break; fi
  done
  kill "$tpid" 2>/dev/null || true
  exec {fd}<&-
  [ -n "$addr" ] || { cat "$work/registry.log" >&2; die "the registry did not report its address"; }
  local ref="$addr/keyward"
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$layout:$version" "docker://$ref:$version" \
    || die "skopeo copy to the loopback registry failed"
  export COSIGN_YES=true
  local sigout=()
  [ -z "$sigdir" ] || { mkdir -p "$sigdir"; sigout=(--output-signature "$sigdir/image.sig" --output-payload "$sigdir/image.payload.json"); }
  cosign sign --key "$key" --tlog-upload=false --allow-http-registry --allow-insecure-registry "${sigout[@]}" "$ref@$digest" >&2 \
    || die "cosign sign failed"
  cosign verify --key "$pub" --insecure-ignore-tlog=true --allow-http-registry --allow-insecure-registry "$ref@$digest" >/dev/null \
    || die "cosign verify failed right after signing"
  rm -rf "$out"
  cosign save --dir "$out" --allow-http-registry --allow-insecure-registry "$ref@$digest" || die "cosign save failed"
  cosign verify --key "$pub" --insecure-ignore-tlog=true --local-image "$out" >/dev/null \
    || die "cosign verify --local-image $out failed"
  log "signed $digest; image and signature saved in $out (cosign verify --local-image)"
}

mode=build rev=HEAD out=""
if [ "${1:-}" = sign ]; then
  shift
  # cosign looks for Sigstore's TUF root online even with a key and no transparency log: sign
  # in a network namespace of our own where only loopback (the registry) exists.
  if [ -z "${KEYWARD_RELEASE_NETNS:-}" ]; then
    userns=(); [ "$(id -u)" = 0 ] || userns=(--map-root-user)
    exec unshare --net "${userns[@]}" env KEYWARD_RELEASE_NETNS=1 "$0" sign "$@"
  fi
  ip link set lo up || die "cannot bring up loopback in the signing network namespace"
  sign "$@"; exit 0
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --rev) rev=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --pin) mode=pin; shift ;;
    --pinned) mode=pinned; shift ;;
    --check-reproducible) mode=repro; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (--help)" ;;
  esac
done
tools
cd "$repo"
# One release build at a time per cache (tests build in parallel; the clone and target are shared).
mkdir -p "$KEYWARD_CACHE/release"
exec 9>"$KEYWARD_CACHE/release/.lock"
[ "$mode" = repro ] || flock 9
case "$mode" in
  build|pin|pinned)
    if [ "$mode" = pinned ]; then
      rev=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["revision"])' "$repo/release/image.json") \
        || die "no revision in release/image.json"
      git -C "$repo" cat-file -e "$rev^{commit}" 2>/dev/null \
        || die "release/image.json names commit $rev, which this clone lacks (a shallow clone? git fetch --unshallow)"
    fi
    clone_at "$KEYWARD_CACHE/release/src" "$rev"
    [ -n "$out" ] || out="$KEYWARD_CACHE/release/out"
    build_release "$KEYWARD_CACHE/release/src" "$KEYWARD_CACHE/release/target" "$out"
    case "$mode" in
      pin) pin "$RELEASE_DIGEST" ;;
      pinned)
        chart=$(sed -n 's/^  digest: "\(sha256:[0-9a-f]*\)"$/\1/p' "$repo/charts/keyward/values.yaml" | head -1)
        [ "$chart" = "$RELEASE_DIGEST" ] || die "the chart pins $chart but the release build of $rev gives $RELEASE_DIGEST"
        log "the chart's image digest is the release build of $rev: $RELEASE_DIGEST" ;;
    esac
    echo "$RELEASE_DIGEST" ;;
  repro)
    base=$(mktemp -d "${TMPDIR:-/tmp}/keyward-repro.XXXXXX")
    want=$(git -C "$repo" rev-parse --verify "$rev^{commit}")
    declare -A got
    for side in a b; do
      git clone -q --no-checkout "$repo" "$base/$side/src"
      git -C "$base/$side/src" -c advice.detachedHead=false checkout -q "$want"
      t=$SECONDS
      build_release "$base/$side/src" "$base/$side/target" "$base/$side/out"
      log "build $side: $((SECONDS - t)) s"
      got[$side]=$RELEASE_DIGEST
    done
    a=$(sha256sum "$base/a/out/keyward" | cut -c1-64) b=$(sha256sum "$base/b/out/keyward" | cut -c1-64)
    log "binary a $a, b $b"
    log "image  a ${got[a]}, b ${got[b]}"
    if [ "$a" = "$b" ] && [ "${got[a]}" = "${got[b]}" ] \
       && cmp -s "$base/a/out/keyward.cdx.json" "$base/b/out/keyward.cdx.json"; then
      log "REPRODUCIBLE: two clean builds of $want give image ${got[a]}"
      rm -rf "$base"
    else
      die "NOT reproducible: outputs kept in $base (diffoscope them)"
    fi ;;
esac
