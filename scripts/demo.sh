#!/usr/bin/env bash
# The main job on an embedded default, end to end as a user would run it: a two-service shop
# (examples/shop: frontend and orders in namespace shop, a client in namespace other) goes
# through `keyward inject`, and the injected pods run for real, each in its own network
# namespace (e2e/: the podrun pod runner), against a local OpenBao dev server (jwt auth, KV,
# database engine, PKI) and PostgreSQL on a "node" namespace. Shows the secrets delivered,
# frontend -> orders allowed over mTLS, other -> orders denied, a KV update reaching the app
# without a restart, a dynamic credential renewed and revoked, then the audit trail.
# Leaves no process, namespace, mount or socket behind. Needs root (network and mount
# namespaces); about 90 s, most of it waiting for the broker's 60 s KV re-read.
set -euo pipefail
cd "$(dirname "$0")/.."

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
scripts/deps.sh core >&2
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh runs pods in their own network and mount namespaces: run it as root." >&2
  exit 1
fi

say "building keyward and the podrun pod runner"
cargo build --quiet --locked -p keyward -p keyward-e2e --bins
KEYWARD=$CARGO_TARGET_DIR/debug/keyward
PODRUN=$CARGO_TARGET_DIR/debug/podrun

say "the manifests: examples/shop/*.yaml (what the pods ask for)"
grep -h 'keyward.io/' examples/shop/*.yaml | grep -v 'inject:' | sed 's/^ */  /'

say "keyward inject: the native sidecar the injector adds to orders (its KEYWARD_CONFIG)"
for f in examples/shop/*.yaml; do echo '---'; cat "$f"; done \
  | "$KEYWARD" inject --config examples/injector-config.yaml -f - \
  | awk '/kind: Deployment/{d++} d==1 && /name: KEYWARD_CONFIG/{p=1; n=match($0,/[^ ]/)-1}
         p && /name: KEYWARD_SOCKET/{exit} p{print "  " substr($0, n+1)}' | head -40

say "running the shop (podrun shop: the injected spec is the only source of how the sidecar starts)"
"$PODRUN" shop --keyward "$KEYWARD" --examples examples
