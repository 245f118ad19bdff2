#!/usr/bin/env bash
# A one-node Kubernetes control plane on loopback, for tests: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, built by `scripts/deps.sh cluster`. No kubelet
# runs: pods are admitted, stored and scheduled; they run once a node agent registers a Node
# (keyward_e2e::node with Cluster::node_credentials, docs/cluster.md).
#
#   scripts/cluster.sh up DIR     start everything, state and logs in DIR (created; must not exist
#                                 or be empty); prints the env lines of `env`
#   scripts/cluster.sh env DIR    print `export KUBECONFIG=DIR/kubeconfig` and friends
#   scripts/cluster.sh down DIR   stop what `up` started and remove DIR (KEYWARD_CLUSTER_KEEP=1
#                                 keeps DIR, for its logs)
#
# KEYWARD_CLUSTER_PORTS="ETCD ETCD_PEER API KCM SCHEDULER": fixed ports instead of free ones.
# KEYWARD_CLUSTER_OWNER=PID: `down` runs by itself once that process exits (a test that dies
# before its cleanup leaves nothing running). Every address used is on 127.0.0.1; the service
# CIDR only names cluster IPs, nothing ever connects to one (webhooks must use clientConfig.url).
set -euo pipefail

KUBE_VERSION=v1.37.2
KEYWARD_CACHE=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
BIN=${KEYWARD_KUBE_BIN:-$KEYWARD_CACHE/kube/$KUBE_VERSION/bin}
READY_TIMEOUT=${KEYWARD_CLUSTER_TIMEOUT:-180}   # seconds; a safety net, readiness is polled
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { echo "usage: $0 up|down|env DIR" >&2; exit 2; }

[ $# -eq 2 ] || usage
cmd=$1
DIR=$2

# Free TCP ports on 127.0.0.1, from below the kernel's ephemeral range (as tests/support does),
# so outgoing connections never take one between this check and the server's bind.
free_ports() {
  python3 - "$1" <<'EOF'
import random, socket, sys
n, got = int(sys.argv[1]), []
while len(got) < n:
    p = random.randrange(20000, 32000)
    if p in got:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); got.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
EOF
}

# cert NAME CN [O] [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=${3:-} san=${4:-} subj
  subj="/CN=$cn"; [ -z "$org" ] || subj="/O=$org$subj"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$P/$name.key" -out "$P/$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi
  } > "$P/$name.ext"
  openssl x509 -req -in "$P/$name.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$P/$name.ext" -out "$P/$name.crt" 2>/dev/null
  rm -f "$P/$name.csr" "$P/$name.ext"
}

kubeconfig() { # kubeconfig FILE CERTNAME
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: keyward-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $P/ca.crt
users:
- name: $2
  user:
    client-certificate: $P/$2.crt
    client-key: $P/$2.key
contexts:
- name: keyward-test
  context: {cluster: keyward-test, user: $2}
current-context: keyward-test
EOF
}

start() { # start NAME ARGS...: runs in its own session, output to DIR/logs/NAME.log
  local name=$1; shift
  setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo "$!" > "$DIR/pids/$name"
}

# wait_for NAME WHAT CMD...: polls CMD until it succeeds; fails when NAME's process exits or
# the deadline passes, showing the end of its log.
wait_for() {
  local name=$1 what=$2; shift 2
  local pid deadline=$((SECONDS + READY_TIMEOUT))
  pid=$(cat "$DIR/pids/$name")
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$DIR/logs/$name.log" >&2 || true
      die "$name exited before $what (log: $DIR/logs/$name.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$DIR/logs/$name.log" >&2 || true
      die "timed out after ${READY_TIMEOUT}s waiting for $what (log: $DIR/logs/$name.log)"
    fi
    sleep 0.2
  done
}

https_ok() { # https_ok URL: 200 with body "ok", as the cluster admin
  [ "$(curl -sS --max-time 5 --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "$1")" = ok ]
}
api_get() { # api_get PATH: 200
  curl -sSf --max-time 5 --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" \
    -o /dev/null "https://127.0.0.1:$API_PORT$1"
}

print_env() {
  # shellcheck disable=SC1091
  source "$DIR/ports"
  echo "export KUBECONFIG=$DIR/kubeconfig"
  echo "export KEYWARD_CLUSTER_SERVER=https://127.0.0.1:$API_PORT"
  echo "export KEYWARD_CLUSTER_CA=$DIR/pki/ca.crt"
  echo "export KEYWARD_CLUSTER_DIR=$DIR"
}

up() {
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$BIN/$b" ] || die "$BIN/$b not found: build the control plane with \`scripts/deps.sh cluster\`"
  done
  for t in openssl curl python3 setsid; do command -v $t >/dev/null || die "$t not found"; done
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then die "$DIR exists and is not empty"; fi
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  P=$DIR/pki
  mkdir -p "$P" "$DIR/logs" "$DIR/pids" "$DIR/etcd"
  chmod 700 "$DIR"
  UP_OK=0
  trap 'if [ "$UP_OK" != 1 ]; then log "up failed; stopping what started (logs kept in $DIR)"; KEYWARD_CLUSTER_KEEP=1 "$SELF" down "$DIR" || true; fi' EXIT

  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT <<<"${KEYWARD_CLUSTER_PORTS:-$(free_ports 5)}"
  [ -n "$SCHED_PORT" ] || die "KEYWARD_CLUSTER_PORTS needs five ports"
  printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\nSCHED_PORT=%s\n' \
    "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT" "$SCHED_PORT" > "$DIR/ports"

  if [ -n "${KEYWARD_CLUSTER_OWNER:-}" ]; then
    # Reaper: `down` once the owner exits. tail --pid waits for the process without a loop here.
    # shellcheck disable=SC2016 # $1..$3 expand in the reaper shell
    setsid bash -c 'tail --pid="$1" -f /dev/null; exec "$2" down "$3"' reaper \
      "$KEYWARD_CLUSTER_OWNER" "$SELF" "$DIR" </dev/null >/dev/null 2>&1 &
    echo "$!" > "$DIR/reaper.pid"
  fi

  # PKI: one CA for serving and client certificates, and the service-account signing key.
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 2 \
    -subj "/CN=keyward-test-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  local local_san="IP:127.0.0.1,DNS:localhost"
  cert apiserver kube-apiserver "" "$local_san,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1"
  cert kcm-serving kube-controller-manager "" "$local_san"
  cert scheduler-serving kube-scheduler "" "$local_san"
  cert admin kube-admin system:masters
  cert kcm system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  chmod 600 "$P"/*.key
  kubeconfig "$DIR/kubeconfig" admin
  kubeconfig "$DIR/kcm.kubeconfig" kcm
  kubeconfig "$DIR/scheduler.kubeconfig" scheduler

  # etcd: plain HTTP on loopback; no fsync (test data, thrown away at `down`).
  start etcd "$BIN/etcd" --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  wait_for etcd "etcd /health" sh -c "curl -sS --max-time 5 http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"

  local issuer=https://kubernetes.default.svc.cluster.local
  # Cluster traffic (webhooks and aggregated APIs behind Services, resolved to their endpoints
  # by --enable-aggregator-routing) goes through HTTP CONNECT on DIR/egress.sock, which a node
  # agent serves from the node's network (konnectivity's role); the control plane's own
  # traffic (etcd, URL webhooks on loopback) is dialled directly.
  cat > "$DIR/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $DIR/egress.sock
EOF
  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota,Priority \
    --service-account-issuer="$issuer" --api-audiences="$issuer" \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
    --enable-aggregator-routing=true --egress-selector-config-file="$DIR/egress.yaml" \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver "kube-apiserver /readyz" https_ok "https://127.0.0.1:$API_PORT/readyz"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kcm.kubeconfig" --authentication-kubeconfig="$DIR/kcm.kubeconfig" \
    --authorization-kubeconfig="$DIR/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --tls-cert-file="$P/kcm-serving.crt" --tls-private-key-file="$P/kcm-serving.key" \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --service-cluster-ip-range=10.0.0.0/24 --leader-elect=false --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$DIR/scheduler.kubeconfig" --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --tls-cert-file="$P/scheduler-serving.crt" --tls-private-key-file="$P/scheduler-serving.key" \
    --leader-elect=false --profiling=false
  wait_for kube-controller-manager "kube-controller-manager /healthz" https_ok "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler "kube-scheduler /readyz" https_ok "https://127.0.0.1:$SCHED_PORT/readyz"
  # The controllers work: the default service account and the root CA ConfigMap exist.
  wait_for kube-controller-manager "the default ServiceAccount" api_get /api/v1/namespaces/default/serviceaccounts/default
  wait_for kube-controller-manager "the kube-root-ca.crt ConfigMap" api_get /api/v1/namespaces/default/configmaps/kube-root-ca.crt
  UP_OK=1
  log "control plane $KUBE_VERSION ready on https://127.0.0.1:$API_PORT (state and logs in $DIR)"
  print_env
}

down() {
  [ -d "$DIR" ] || return 0
  DIR=$(cd "$DIR" && pwd)
  local name pid deadline
  # Reverse start order: the controllers first, etcd last.
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$DIR/pids/$name" ] || continue
    pid=$(cat "$DIR/pids/$name")
    # Only a process we started: its command line is the binary under $BIN.
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "/$name "; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored SIGTERM for 20 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$DIR/pids/$name"
  done
  if [ -f "$DIR/reaper.pid" ]; then
    pid=$(cat "$DIR/reaper.pid")
    # Not when the reaper itself is running this `down`.
    if [ "$pid" != "$PPID" ] && [ "$pid" != "$$" ]; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
    rm -f "$DIR/reaper.pid"
  fi
  if [ "${KEYWARD_CLUSTER_KEEP:-0}" = 1 ]; then
    log "stopped; kept $DIR"
  else
    rm -rf "$DIR"
    log "stopped; removed $DIR"
  fi
}

case "$cmd" in
  up) up ;;
  down) down ;;
  env) [ -f "$DIR/ports" ] || die "$DIR: no cluster state (run \`$0 up $DIR\` first)"; DIR=$(cd "$DIR" && pwd); print_env ;;
  *) usage ;;
esac
