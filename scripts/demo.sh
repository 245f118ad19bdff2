#!/usr/bin/env bash
# The main job on an embedded default, end to end as a user would run it: a two-service shop
# (examples/shop: frontend and orders in namespace shop, a client in namespace other, a
# secrets-only Deployment and a Job).
#
# Default (the cluster mode): a real Kubernetes control plane on loopback (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler built from their Go modules by
# `scripts/deps.sh cluster`, docs/cluster.md), the node agent running the pods it schedules
# (a network namespace per pod, a PID namespace per container, TokenRequest tokens), `keyward
# injector` behind the chart's webhook, and `kubectl apply -f examples/shop` into namespaces
# that enforce PodSecurity restricted. Prints `kubectl get pods`, the secrets, the mTLS
# decisions (frontend -> orders allowed, other -> orders denied) and the audit trail. The first
# run builds the control plane once: 10-18 min on a 2-core machine (the build's own log says
# so); later runs take about a minute.
#
# `scripts/demo.sh --local`: the same shop without a control plane: `keyward inject` on the
# manifests and the podrun pod runner (e2e/), also a KV update reaching the app without a
# restart and a dynamic credential renewed and revoked; about 90 s. The cluster mode falls
# back to it, saying so, when the control plane cannot be built on this machine.
#
# Both run against a local OpenBao dev server (jwt auth, KV, database engine, PKI) and
# PostgreSQL on a "node" namespace, need root (network and mount namespaces) and leave no
# process, namespace, mount or socket behind.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=cluster
case "${1:-}" in
  --local) mode=local ;;
  --cluster | "") ;;
  -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: scripts/demo.sh [--local | --cluster]" >&2; exit 2 ;;
esac

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

if [ "$mode" = cluster ]; then
  if [ -x "$KEYWARD_CACHE/kube/v1.37.2/bin/kube-apiserver" ]; then
    say "the test cluster's control plane: already built in $KEYWARD_CACHE/kube"
  else
    say "building the test cluster's control plane from its Go modules (first run only: 10-18 min on 2 cores)"
  fi
  t0=$SECONDS
  if scripts/deps.sh cluster >&2; then
    [ $((SECONDS - t0)) -lt 5 ] || say "control plane built in $((SECONDS - t0)) s (kept in $KEYWARD_CACHE/kube)"
    # shellcheck disable=SC1091
    source "$KEYWARD_CACHE/env.sh"
  else
    say "the control plane could not be built here (above: why); running the local mode instead (scripts/demo.sh --local)"
    mode=local
  fi
fi

if [ "$mode" = cluster ]; then
  say "building keyward and the kubeshop demo"
  cargo build --quiet --locked -p keyward -p keyward-e2e --bins
  KEYWARD=$CARGO_TARGET_DIR/debug/keyward
  say "the manifests: examples/shop/*.yaml (what the pods ask for)"
  grep -h 'keyward.io/' examples/shop/*.yaml | sed 's/^ */  /'
  exec "$CARGO_TARGET_DIR/debug/kubeshop" --keyward "$KEYWARD" --examples examples
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
