#!/usr/bin/env bash
# The main job on an embedded default: a local OpenBao dev server, jwt auth trusting a local
# service-account token issuer, a KV secret, and the keyward broker serving it on a Unix
# socket, with the audit trail at the end. Leaves no process, socket or file behind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KEYWARD_CACHE/target}
scripts/deps.sh core >&2
# shellcheck disable=SC1091
source "$KEYWARD_CACHE/env.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say "building keyward"
cargo build --quiet --locked --bin keyward
KEYWARD=$CARGO_TARGET_DIR/debug/keyward

WORK=$(mktemp -d -t keyward-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
export BAO_ADDR=http://127.0.0.1:$PORT BAO_TOKEN=root
say "starting OpenBao dev server on $BAO_ADDR"
HOME=$WORK "$KEYWARD_BAO" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$PORT" >"$WORK/bao.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "$KEYWARD_BAO" status >/dev/null 2>&1 && break; sleep 0.1; done
"$KEYWARD_BAO" status >/dev/null

say "a local service-account token issuer (stands in for the Kubernetes API server)"
openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
mint() { # mint NAMESPACE SERVICEACCOUNT POD
  local now exp header payload
  now=$(date +%s); exp=$((now + 3600))
  header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:%s:%s","aud":["vault"],"iat":%d,"nbf":%d,"exp":%d,"kubernetes.io":{"namespace":"%s","pod":{"name":"%s","uid":"demo-%s"},"serviceaccount":{"name":"%s","uid":"demo-sa-%s"}}}' \
    "$1" "$2" "$now" "$now" "$exp" "$1" "$3" "$3" "$2" "$2" | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$WORK/sa.key" -binary | b64url)"
}

say "configuring OpenBao: jwt auth, a policy, a role bound to namespace shop / service account orders"
"$KEYWARD_BAO" auth enable jwt >/dev/null
"$KEYWARD_BAO" write auth/jwt/config jwt_validation_pubkeys=@"$WORK/sa.pub" bound_issuer=https://kubernetes.default.svc.cluster.local >/dev/null
"$KEYWARD_BAO" policy write orders - >/dev/null <<'HCL'
path "secret/data/orders/*" { capabilities = ["read"] }
HCL
cat >"$WORK/role.json" <<'JSON'
{"role_type":"jwt","bound_audiences":["vault"],"user_claim":"sub","bound_claims_type":"string",
 "bound_claims":{"/kubernetes.io/namespace":"shop","/kubernetes.io/serviceaccount/name":"orders"},
 "claim_mappings":{"/kubernetes.io/namespace":"namespace","/kubernetes.io/serviceaccount/name":"service_account_name","/kubernetes.io/pod/name":"pod_name"},
 "token_ttl":"2m","token_max_ttl":"10m","token_policies":["orders"]}
JSON
"$KEYWARD_BAO" write auth/jwt/role/orders @"$WORK/role.json" >/dev/null
"$KEYWARD_BAO" kv put -mount=secret orders/db password=demo-password-v1 username=orders >/dev/null

say "starting the broker as pod shop/orders-7d9f (token minted by the local issuer)"
mint shop orders orders-7d9f >"$WORK/token"
cat >"$WORK/keyward.yaml" <<YAML
vault: {addr: "$BAO_ADDR"}
auth: {method: jwt, token_file: $WORK/token}
secrets:
  - {name: db, path: secret/data/orders/db}
kv_refresh: 2s
socket: {path: $WORK/run/broker.sock}
audit: {file: $WORK/run/audit.log}
YAML
cat "$WORK/keyward.yaml"
KEYWARD_LOG=warn "$KEYWARD" broker --config "$WORK/keyward.yaml" &
BROKER=$!
PIDS+=($BROKER)
SOCK=$WORK/run/broker.sock
for _ in $(seq 100); do "$KEYWARD" probe --socket "$SOCK" 2>/dev/null && break; sleep 0.1; done
"$KEYWARD" probe --socket "$SOCK"
echo "ready: keyward probe exits 0"

say "the app reads its secret over the socket"
echo "\$ curl --unix-socket \$SOCK http://keyward/v1/secrets/db"
curl -s --unix-socket "$SOCK" http://keyward/v1/secrets/db; echo
echo "\$ curl --unix-socket \$SOCK http://keyward/v1/secrets/db/password"
curl -s --unix-socket "$SOCK" http://keyward/v1/secrets/db/password; echo

say "a new version reaches the app without a restart (long-poll wakes up)"
curl -s --unix-socket "$SOCK" "http://keyward/v1/secrets/db?index=1&wait=30s" >"$WORK/poll.json" &
POLL=$!
"$KEYWARD_BAO" kv put -mount=secret orders/db password=demo-password-v2 username=orders >/dev/null
wait $POLL
cat "$WORK/poll.json"; echo

say "a caller asking for a secret that is not declared"
curl -s --unix-socket "$SOCK" http://keyward/v1/secrets/payments; echo

say "SIGTERM: the broker revokes its token and removes its socket"
kill -TERM "$BROKER"; wait "$BROKER" || true
[ ! -e "$SOCK" ] && echo "socket removed"

say "what the security team sees: keyward audit query"
"$KEYWARD" audit query "$WORK/run/audit.log"
say "keyward audit verify"
"$KEYWARD" audit verify "$WORK/run/audit.log"
