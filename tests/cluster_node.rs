//! Pods created through the real kube-apiserver (scripts/cluster.sh) run on a node: the node
//! agent (`keyward_e2e::node`) registers a Node with the node's own client certificate, runs
//! the pods the scheduler binds to it with the pod runner, gets their projected tokens from the
//! TokenRequest API, writes their status back and completes their deletion. `kubectl wait`
//! and Job completion then work as in a cluster (docs/cluster.md, "The node agent").
//!
//! Each test starts its own control plane (nextest runs every test in a process of its own).

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_e2e::node::{Node, NodeConfig};
use keyward_test_cluster::{Cluster, Injector, INJECT_LABELS, ISSUER};
use serde_json::Value;

const NODE: &str = "keyward-node";
/// Safety net for conditions on a loaded two-core machine; never slept for.
const WAIT: Duration = Duration::from_secs(120);

fn start_cluster() -> Cluster {
    Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
}

/// kubectl from an async test without starving the node agent's tasks.
fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    tokio::task::block_in_place(|| cluster.kubectl(args).map_err(|e| e.to_string()))
}

fn apply(cluster: &Cluster, manifest: &str) {
    tokio::task::block_in_place(|| cluster.apply(manifest))
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{manifest}"));
}

fn get_json(cluster: &Cluster, args: &[&str]) -> Value {
    tokio::task::block_in_place(|| cluster.get_json(args))
        .unwrap_or_else(|e| panic!("kubectl get {args:?}: {e}"))
}

async fn start_node(cluster: &Cluster, refresh_fraction: f64) -> Node {
    let creds = tokio::task::block_in_place(|| cluster.node_credentials(NODE))
        .unwrap_or_else(|e| panic!("node credentials: {e}"));
    let mut cfg = NodeConfig::new(NODE, &creds.server, &creds.ca, &creds.cert, &creds.key);
    cfg.token_refresh_fraction = refresh_fraction;
    cfg.images = vec![(
        "ghcr.io/keyward/keyward".to_owned(),
        env!("CARGO_BIN_EXE_keyward").into(),
    )];
    cfg.node_names = vec!["vault.vault.svc".to_owned()];
    let node = Node::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("starting the node agent: {e}"));
    kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{NODE}"),
            "--timeout=60s",
        ],
    )
    .unwrap_or_else(|e| panic!("the Node is Ready: {e}"));
    node
}

fn namespace(cluster: &Cluster, ns: &str, labels: &[(&str, &str)]) {
    tokio::task::block_in_place(|| cluster.namespace(ns, labels))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tail("kube-controller-manager", 30)));
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The claims of an API server token, verified (RS256) with the cluster's `sa.pub`.
fn verified_claims(cluster: &Cluster, token: &str, audience: &str) -> Value {
    let key = cluster.sa_public_key_pem().expect("sa.pub");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_rsa_pem(key.as_bytes()).expect("RSA key"),
        &v,
    )
    .unwrap_or_else(|e| panic!("the projected token verifies with sa.pub for {audience}: {e}"))
    .claims
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

const PLAIN: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: kw-node, labels: {app: plain}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
    - name: app
      image: example.invalid/tools:1
      command: ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo started; while :; do sleep 0.2; done"]
      volumeMounts: [{name: vault-token, mountPath: /var/run/secrets/tokens, readOnly: true}]
  volumes:
    - name: vault-token
      projected:
        sources:
          - serviceAccountToken: {audience: vault, expirationSeconds: 600, path: token}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: kw-node}
spec:
  selector: {app: plain}
  ports: [{port: 8080}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_runs_pods_and_jobs_of_the_real_api_server_with_token_request_tokens() {
    let t0 = Instant::now();
    let cluster = start_cluster();
    let t_cluster = t0.elapsed();
    // Tokens are refreshed at 1% of their lifetime here (6 s of 600 s) so the test sees a
    // refresh; the kubelet's 80% is the default (unit test in e2e/src/pod.rs).
    let node = start_node(&cluster, 0.01).await;
    let t_node = t0.elapsed();
    namespace(&cluster, "kw-node", &[]);

    // The node: registered, Ready, untainted, with a Lease the agent renews.
    let n = get_json(&cluster, &["node", NODE]);
    assert!(n["spec"]["taints"].is_null(), "{n:#}");
    let lease = get_json(&cluster, &["-n", "kube-node-lease", "lease", NODE]);
    assert_eq!(lease["spec"]["holderIdentity"], NODE, "{lease:#}");
    let first_renewal = lease["spec"]["renewTime"]
        .as_str()
        .expect("renewTime")
        .to_owned();

    // A plain pod runs and becomes Ready; kubectl shows it Running on the node.
    apply(&cluster, PLAIN);
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-node",
            "wait",
            "--for=condition=Ready",
            "pod/plain",
            "--timeout=90s",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "pod/plain Ready: {e}\n{}",
            node.logs("kw-node", "plain", "app")
        )
    });
    let t_ready = t0.elapsed();
    let listed =
        kubectl(&cluster, &["-n", "kw-node", "get", "pods", "-o", "wide"]).expect("get pods");
    let row = listed
        .lines()
        .find(|l| l.starts_with("plain "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains(" 1/1 ") && row.contains(" Running ") && row.contains(NODE),
        "{listed}"
    );
    let pod = get_json(&cluster, &["-n", "kw-node", "pod", "plain"]);
    let st = &pod["status"];
    let pod_ip = st["podIP"].as_str().unwrap_or_default().to_owned();
    assert!(pod_ip.starts_with("10.200.0."), "{st:#}");
    assert_eq!(st["hostIP"], node.host.ip.to_string(), "{st:#}");
    assert_eq!(st["phase"], "Running", "{st:#}");
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            st["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x["type"] == c && x["status"] == "True")),
            "condition {c}: {st:#}"
        );
    }
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["name"], "app", "{st:#}");
    assert_eq!(cs["ready"], true, "{st:#}");
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{st:#}");
    assert!(node.logs("kw-node", "plain", "app").contains("started"));

    // Its projected token: a TokenRequest token with the spec's audience and expiry, bound to
    // the pod by name and uid (and to the node).
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let token_file = node
        .volume("kw-node", "plain", "vault-token")
        .expect("the token volume")
        .join("token");
    let token1 = read(&token_file);
    let c1 = verified_claims(&cluster, &token1, "vault");
    assert_eq!(c1["aud"], serde_json::json!(["vault"]), "{c1:#}");
    let (iat1, exp1) = (
        c1["iat"].as_u64().expect("iat"),
        c1["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp1 - iat1, 600, "exp from expirationSeconds: {c1:#}");
    assert_eq!(c1["sub"], "system:serviceaccount:kw-node:default", "{c1:#}");
    let k = &c1["kubernetes.io"];
    assert_eq!(k["namespace"], "kw-node", "{c1:#}");
    assert_eq!(k["pod"]["name"], "plain", "{c1:#}");
    assert_eq!(k["pod"]["uid"], uid.as_str(), "{c1:#}");
    assert_eq!(k["node"]["name"], NODE, "{c1:#}");
    assert_eq!(k["serviceaccount"]["name"], "default", "{c1:#}");
    // The API server itself accepts it for that audience, as that pod's service account.
    let review = tokio::task::block_in_place(|| cluster.token_review(&token1, &["vault"]))
        .expect("TokenReview");
    assert_eq!(review["authenticated"], true, "{review:#}");
    assert_eq!(
        review["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
        uid.as_str(),
        "{review:#}"
    );
    // The ServiceAccount admission plugin's kube-api-access volume: a token for the API
    // server's audience, the root CA ConfigMap and the namespace from the downward API.
    let api_access = pod["spec"]["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter().find_map(|v| {
                v["name"]
                    .as_str()
                    .filter(|n| n.starts_with("kube-api-access-"))
            })
        })
        .unwrap_or_else(|| panic!("no kube-api-access volume: {pod:#}"))
        .to_owned();
    let dir = node
        .volume("kw-node", "plain", &api_access)
        .expect("volume");
    assert_eq!(read(&dir.join("namespace")), "kw-node");
    assert_eq!(read(&dir.join("ca.crt")), cluster.ca_pem().expect("CA"));
    let c = verified_claims(&cluster, &read(&dir.join("token")), ISSUER);
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], uid.as_str(), "{c:#}");

    // Refreshed before expiry, from the expiry: not before 1% of the lifetime has passed.
    let token2 = support::eventually(WAIT, "the projected token to be refreshed", || {
        let t = std::fs::read_to_string(&token_file).unwrap_or_default();
        let fresh = !t.is_empty() && t != token1;
        async move { fresh.then_some(t) }
    })
    .await;
    let c2 = verified_claims(&cluster, &token2, "vault");
    let iat2 = c2["iat"].as_u64().expect("iat");
    assert!(
        iat2 >= iat1 + 6,
        "refreshed at iat {iat2}, first issued {iat1}"
    );
    assert_eq!(c2["exp"].as_u64().expect("exp") - iat2, 600, "{c2:#}");
    assert_eq!(c2["kubernetes.io"]["pod"]["uid"], uid.as_str(), "{c2:#}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now < exp1, "refreshed before the first token expired");

    // Services resolve (the agent's kube-proxy stand-in): the EndpointSlice controller lists
    // the Ready pod, and the agent writes its address under the Service's names.
    let want = format!("{pod_ip}\tplain.kw-node.svc plain.kw-node.svc.cluster.local");
    support::eventually(WAIT, "plain.kw-node.svc in the pods' /etc/hosts", || {
        let hosts = node.hosts_file();
        let ok = hosts.lines().any(|l| l == want);
        async move { ok.then_some(()) }
    })
    .await;

    // A Job completes: its pod resolves the Service and exits 0; the Job controller sees the
    // pod Succeeded.
    apply(
        &cluster,
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: resolve, namespace: kw-node}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: example.invalid/tools:1
          command: ["sh", "-c", "getent hosts plain.kw-node.svc && echo resolved"]
"#,
    );
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-node",
            "wait",
            "--for=condition=complete",
            "job/resolve",
            "--timeout=90s",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "job/resolve complete: {e}\n{:#}",
            get_json(
                &cluster,
                &["-n", "kw-node", "pods", "-l", "job-name=resolve"]
            )
        )
    });
    let t_job = t0.elapsed();
    let jp = get_json(
        &cluster,
        &["-n", "kw-node", "pods", "-l", "job-name=resolve"],
    );
    let jp = &jp["items"][0];
    assert_eq!(jp["status"]["phase"], "Succeeded", "{jp:#}");
    let term = &jp["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0, "{jp:#}");
    assert_eq!(term["reason"], "Completed", "{jp:#}");

    // restartPolicy OnFailure, a run-to-completion init container that fills an emptyDir the
    // app then reads: the init container completes first, the Job completes.
    apply(
        &cluster,
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: staged, namespace: kw-node}
spec:
  template:
    spec:
      restartPolicy: OnFailure
      initContainers:
        - name: fetch
          image: example.invalid/tools:1
          command: ["sh", "-c", "echo from-init > /srv/data/input"]
          volumeMounts: [{name: data, mountPath: /srv/data}]
      containers:
        - name: main
          image: example.invalid/tools:1
          command: ["sh", "-c", "grep -qx from-init /srv/data/input"]
          volumeMounts: [{name: data, mountPath: /srv/data}]
      volumes:
        - {name: data, emptyDir: {}}
"#,
    );
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-node",
            "wait",
            "--for=condition=complete",
            "job/staged",
            "--timeout=90s",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "job/staged complete: {e}\n{:#}",
            get_json(
                &cluster,
                &["-n", "kw-node", "pods", "-l", "job-name=staged"]
            )
        )
    });
    let sp = get_json(
        &cluster,
        &["-n", "kw-node", "pods", "-l", "job-name=staged"],
    );
    let init = &sp["items"][0]["status"]["initContainerStatuses"][0];
    assert_eq!(init["name"], "fetch", "{sp:#}");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{sp:#}");
    assert_eq!(init["ready"], true, "{sp:#}");

    // A pod whose container fails: Failed, with the exit code.
    apply(
        &cluster,
        r#"apiVersion: v1
kind: Pod
metadata: {name: fails, namespace: kw-node}
spec:
  restartPolicy: Never
  containers:
    - {name: main, image: "example.invalid/tools:1", command: ["sh", "-c", "exit 3"]}
"#,
    );
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-node",
            "wait",
            "--for=jsonpath={.status.phase}=Failed",
            "pod/fails",
            "--timeout=90s",
        ],
    )
    .expect("pod/fails Failed");
    let f = get_json(&cluster, &["-n", "kw-node", "pod", "fails"]);
    let term = &f["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 3, "{f:#}");
    assert_eq!(term["reason"], "Error", "{f:#}");

    // Deleting the pod stops its processes (SIGTERM, which the app handles) and the deletion
    // completes: the agent deletes the object once they are gone.
    let pids = node.pids("kw-node", "plain");
    assert!(
        !pids.is_empty() && pids.iter().all(|(_, p)| alive(*p)),
        "{pids:?}"
    );
    let log_before = node.logs("kw-node", "plain", "app");
    let del = Instant::now();
    kubectl(
        &cluster,
        &["-n", "kw-node", "delete", "pod", "plain", "--timeout=60s"],
    )
    .expect("kubectl delete pod plain");
    let deleted_in = del.elapsed();
    for (name, pid) in &pids {
        assert!(
            !alive(*pid),
            "container {name} (pid {pid}) still runs after the deletion"
        );
    }
    let gone = kubectl(&cluster, &["-n", "kw-node", "get", "pod", "plain"]).expect_err("deleted");
    assert!(gone.contains("NotFound"), "{gone}");
    assert!(
        deleted_in < Duration::from_secs(5),
        "the app exits on SIGTERM: deletion took {deleted_in:?} (grace 5 s)"
    );
    assert!(log_before.contains("started"), "{log_before}");

    // The agent renews its Lease (every 10 s) while it runs.
    support::eventually(WAIT, "the node's Lease renewed", || {
        let lease = get_json(&cluster, &["-n", "kube-node-lease", "lease", NODE]);
        let renewed = lease["spec"]["renewTime"]
            .as_str()
            .is_some_and(|t| t > first_renewal.as_str());
        async move { renewed.then_some(()) }
    })
    .await;
    let n = get_json(&cluster, &["node", NODE]);
    assert!(n["spec"]["taints"].is_null(), "{n:#}");

    node.stop(Duration::from_secs(5)).await;
    eprintln!(
        "timing: cluster up {t_cluster:?}, node Ready {t_node:?}, pod Ready {t_ready:?}, job complete {t_job:?}, deletion {deleted_in:?}, total {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// §3: keyward on the cluster. The injector behind the chart's MutatingWebhookConfiguration
// mutates a pod `kubectl apply` creates in a labelled namespace; the node agent runs the
// injected pod as stored, with the real keyward sidecar logging in to a real OpenBao (jwt auth
// with the API server's issuer and JWKS) using the projected TokenRequest token.

fn start_injector(config: &Path) -> Injector {
    Injector::start(Path::new(env!("CARGO_BIN_EXE_keyward")), config)
        .unwrap_or_else(|e| panic!("starting keyward injector: {e}"))
}

fn wait_orders_ready(cluster: &Cluster, node: &Node) {
    tokio::task::block_in_place(|| {
        cluster.wait_pod_ready("kw-inject", "orders", Duration::from_secs(90))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nsidecar:\n{}\napp:\n{}",
            node.logs("kw-inject", "orders", "keyward"),
            node.logs("kw-inject", "orders", "app")
        )
    });
}

/// The chart's webhook pointed at `injector`.
fn register_webhook(cluster: &Cluster, injector: &Injector) {
    tokio::task::block_in_place(|| cluster.register_webhook(injector, &[]))
        .unwrap_or_else(|e| panic!("the chart's webhook: {e}"));
}

/// docs/vault-setup.md: jwt auth with the API server's JWKS URL, its CA and issuer; a role
/// for kw-inject/orders reading the KV secret.
async fn configure_bao(bao: &support::bao::Bao, cluster: &Cluster) {
    tokio::task::block_in_place(|| cluster.allow_anonymous_issuer_discovery())
        .expect("bind system:service-account-issuer-discovery to system:unauthenticated");
    let ca = cluster.ca_pem().expect("CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    support::eventually(WAIT, "the JWKS readable anonymously", || {
        let req = client.get(cluster.jwks_url()).send();
        async move { req.await.ok().filter(|r| r.status() == 200).map(drop) }
    })
    .await;
    bao.api(
        "POST",
        "sys/auth/jwt",
        Some(serde_json::json!({"type": "jwt"})),
    )
    .await;
    bao.api(
        "POST",
        "auth/jwt/config",
        Some(serde_json::json!({
            "jwks_url": cluster.jwks_url(), "jwks_ca_pem": ca, "bound_issuer": ISSUER,
        })),
    )
    .await;
    orders_secret(bao).await;
    support::jwt::role(
        bao,
        "orders",
        "kw-inject",
        "orders",
        "15m",
        "1h",
        &["orders"],
    )
    .await;
}

/// The orders policy and its KV secret.
async fn orders_secret(bao: &support::bao::Bao) {
    bao.policy(
        "orders",
        r#"path "secret/data/shop/orders/*" { capabilities = ["read"] }"#,
    )
    .await;
    bao.kv_put(
        "shop/orders/db",
        serde_json::json!({"password": "canary-node-5b1c", "user": "orders"}),
    )
    .await;
}

const ORDERS: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: orders, namespace: kw-inject}
---
apiVersion: v1
kind: Pod
metadata:
  name: orders
  namespace: kw-inject
  annotations:
    keyward.io/secret-db: secret/data/shop/orders/db
spec:
  serviceAccountName: orders
  terminationGracePeriodSeconds: 10
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: app
      image: example.invalid/shop/orders:1
      command:
        - sh
        - -c
        - |
          trap 'exit 0' TERM
          until p=$(curl -sf --unix-socket "$KEYWARD_SOCKET" http://keyward/v1/secrets/db/password); do sleep 0.5; done
          echo "password=$p"
          while :; do sleep 0.2; done
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pod_runs_on_the_node_with_the_real_sidecar_and_gets_its_secret() {
    let t0 = Instant::now();
    let bao = support::bao::Bao::start();
    let cluster = start_cluster();
    let t_cluster = t0.elapsed();
    let node = start_node(&cluster, 0.8).await;
    // Pods reach OpenBao as vault.vault.svc:8200 (examples/injector-config.yaml): a listener
    // on the node host forwarding to the harness's loopback port.
    let _vault =
        keyward_e2e::net::Expose::start(&node.host, 8200, ([127, 0, 0, 1], bao.port()).into())
            .await
            .unwrap_or_else(|e| panic!("exposing OpenBao to the pods: {e}"));
    configure_bao(&bao, &cluster).await;
    let injector = tokio::task::block_in_place(|| {
        start_injector(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/injector-config.yaml"))
    });
    register_webhook(&cluster, &injector);
    namespace(&cluster, "kw-inject", &INJECT_LABELS);

    // kubectl apply: the API server calls the injector, PodSecurity admits the injected pod,
    // the scheduler binds it, the node agent runs it as stored.
    tokio::task::block_in_place(|| cluster.apply(ORDERS))
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\ninjector log:\n{}", injector.log()));
    let stored = get_json(&cluster, &["-n", "kw-inject", "pod", "orders"]);
    assert_eq!(
        stored["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{stored:#}"
    );
    wait_orders_ready(&cluster, &node);
    let t_ready = t0.elapsed();
    let pod = get_json(&cluster, &["-n", "kw-inject", "pod", "orders"]);
    let sidecar = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(sidecar["name"], "keyward", "{pod:#}");
    assert_eq!(sidecar["started"], true, "{pod:#}");
    assert!(sidecar["state"]["running"].is_object(), "{pod:#}");

    // The app reads its secret from the sidecar, which logged in with the projected
    // TokenRequest token (audience vault, bound to this pod).
    let line = support::eventually(WAIT, "the app to print its secret", || {
        let log = node.logs("kw-inject", "orders", "app");
        async move {
            log.lines()
                .find(|l| l.starts_with("password="))
                .map(str::to_owned)
        }
    })
    .await;
    assert_eq!(line, "password=canary-node-5b1c");
    let token_dir = node
        .volume("kw-inject", "orders", "keyward-token")
        .expect("the keyward-token volume");
    let token = read(&token_dir.join("token"));
    let claims = verified_claims(&cluster, &token, "vault");
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"],
        "{claims:#}"
    );
    // The socket volume (emptyDir, medium Memory, sizeLimit 16Mi) is a tmpfs of that size.
    let socket_dir = node
        .volume("kw-inject", "orders", "keyward-socket")
        .expect("the keyward-socket volume");
    let mounts = read(Path::new("/proc/self/mountinfo"));
    let mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*socket_dir.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} is not a mount point:\n{mounts}", socket_dir.display()));
    assert!(
        mount.contains(" - tmpfs ") && mount.contains("size=16384k"),
        "{mount}"
    );
    let sidecar_log = node.logs("kw-inject", "orders", "keyward");
    support::assert_no_panic("keyward sidecar", &sidecar_log);
    assert!(
        !sidecar_log.contains("canary-node-5b1c"),
        "the secret in the sidecar's log"
    );

    // A Job whose pod has the sidecar completes: the app exits, the agent stops the sidecar,
    // the pod Succeeds.
    apply(
        &cluster,
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: kw-inject}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {keyward.io/secret-db: secret/data/shop/orders/db}
    spec:
      serviceAccountName: orders
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: main
          image: example.invalid/shop/report:1
          command: ["sh", "-c", "curl -sf --unix-socket \"$KEYWARD_SOCKET\" http://keyward/v1/secrets/db/user"]
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
"#,
    );
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-inject",
            "wait",
            "--for=condition=complete",
            "job/report",
            "--timeout=90s",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "job/report complete: {e}\n{:#}",
            get_json(
                &cluster,
                &["-n", "kw-inject", "pods", "-l", "job-name=report"]
            )
        )
    });
    let jp = get_json(
        &cluster,
        &["-n", "kw-inject", "pods", "-l", "job-name=report"],
    );
    let jp = &jp["items"][0];
    assert_eq!(jp["status"]["phase"], "Succeeded", "{jp:#}");
    assert_eq!(
        jp["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0,
        "{jp:#}"
    );
    let side = &jp["status"]["initContainerStatuses"][0];
    assert_eq!(side["name"], "keyward", "{jp:#}");
    assert!(
        side["state"]["terminated"].is_object(),
        "the sidecar was stopped: {jp:#}"
    );

    // Deletion: the app, then the sidecar, stop; the object is gone.
    let pids = node.pids("kw-inject", "orders");
    assert_eq!(pids.len(), 2, "{pids:?}");
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-inject",
            "delete",
            "pod",
            "orders",
            "--timeout=60s",
        ],
    )
    .expect("kubectl delete pod orders");
    for (name, pid) in &pids {
        assert!(
            !alive(*pid),
            "container {name} (pid {pid}) still runs after the deletion"
        );
    }
    node.stop(Duration::from_secs(5)).await;
    eprintln!(
        "timing: cluster up {t_cluster:?}, injected pod Ready {t_ready:?}, total {:?}",
        t0.elapsed()
    );
}

/// The other way docs/vault-setup.md describes: kubernetes auth, OpenBao asking this API server
/// to review the projected token (TokenReview). The injector is configured for it
/// (`auth.method: kubernetes`); the agent-run sidecar logs in with the TokenRequest token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pod_logs_in_by_kubernetes_auth_with_its_projected_token() {
    let bao = support::bao::Bao::start();
    let cluster = start_cluster();
    let node = start_node(&cluster, 0.8).await;
    let _vault =
        keyward_e2e::net::Expose::start(&node.host, 8200, ([127, 0, 0, 1], bao.port()).into())
            .await
            .unwrap_or_else(|e| panic!("exposing OpenBao to the pods: {e}"));
    let reviewer = tokio::task::block_in_place(|| cluster.token_reviewer("vault", "vault"))
        .expect("the TokenReview service account");
    bao.api(
        "POST",
        "sys/auth/kubernetes",
        Some(serde_json::json!({"type": "kubernetes"})),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        Some(serde_json::json!({
            "kubernetes_host": cluster.server,
            "kubernetes_ca_cert": cluster.ca_pem().expect("CA"),
            "token_reviewer_jwt": reviewer,
        })),
    )
    .await;
    orders_secret(&bao).await;
    bao.api(
        "POST",
        "auth/kubernetes/role/orders",
        Some(serde_json::json!({
            "bound_service_account_names": ["orders"],
            "bound_service_account_namespaces": ["kw-inject"],
            "audience": "vault",
            "token_policies": ["orders"],
            "token_ttl": "15m", "token_max_ttl": "1h",
        })),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let example =
        read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/injector-config.yaml"));
    assert!(
        example.contains("  method: jwt\n  mount: jwt\n"),
        "{example}"
    );
    let config = dir.path().join("injector-config.yaml");
    std::fs::write(
        &config,
        example.replace(
            "  method: jwt\n  mount: jwt\n",
            "  method: kubernetes\n  mount: kubernetes\n",
        ),
    )
    .expect("write the injector config");
    let injector = tokio::task::block_in_place(|| start_injector(&config));
    register_webhook(&cluster, &injector);
    namespace(&cluster, "kw-inject", &INJECT_LABELS);
    tokio::task::block_in_place(|| cluster.apply(ORDERS))
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\ninjector log:\n{}", injector.log()));
    wait_orders_ready(&cluster, &node);
    let line = support::eventually(WAIT, "the app to print its secret", || {
        let log = node.logs("kw-inject", "orders", "app");
        async move {
            log.lines()
                .find(|l| l.starts_with("password="))
                .map(str::to_owned)
        }
    })
    .await;
    assert_eq!(line, "password=canary-node-5b1c");
    // OpenBao's token came from the kubernetes method, for this service account's uid.
    let sa_uid = get_json(&cluster, &["-n", "kw-inject", "serviceaccount", "orders"])["metadata"]
        ["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    let (status, accessors) = bao.api_status("LIST", "auth/token/accessors", None).await;
    assert_eq!(status, 200, "{accessors}");
    let mut found = Vec::new();
    for a in accessors["data"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let v = bao
            .api(
                "POST",
                "auth/token/lookup-accessor",
                Some(serde_json::json!({"accessor": a})),
            )
            .await;
        found.push(v["data"]["meta"].clone());
    }
    assert!(
        found
            .iter()
            .any(|m| m["service_account_uid"] == sa_uid.as_str()
                && m["service_account_namespace"] == "kw-inject"
                && m["role"] == "orders"),
        "no kubernetes-auth token for kw-inject/orders ({sa_uid}): {found:#?}"
    );
    kubectl(
        &cluster,
        &[
            "-n",
            "kw-inject",
            "delete",
            "pod",
            "orders",
            "--timeout=60s",
        ],
    )
    .expect("kubectl delete pod orders");
    node.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Probes and restarts (the kubelet's prober and restart manager in the node agent).

/// The app appends to `runs` at each start (and clears `dead`); its readiness probe passes
/// once `ready` exists (each probe appends to `probes`), its liveness probe fails while `dead`
/// exists. The test writes those files through the emptyDir's host directory.
const PROBED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: probed, namespace: kw-probe}
spec:
  terminationGracePeriodSeconds: 5
  containers:
    - name: app
      image: example.invalid/tools:1
      command: ["sh", "-c", "trap 'exit 0' TERM; rm -f /srv/d/dead; echo run >> /srv/d/runs; while :; do sleep 0.2; done"]
      volumeMounts: [{name: d, mountPath: /srv/d}]
      readinessProbe:
        exec: {command: ["sh", "-c", "echo x >> /srv/d/probes; test -f /srv/d/ready"]}
        periodSeconds: 1
        failureThreshold: 1
      livenessProbe:
        exec: {command: ["sh", "-c", "test ! -f /srv/d/dead"]}
        periodSeconds: 1
        failureThreshold: 2
  volumes: [{name: d, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: once, namespace: kw-probe}
spec:
  restartPolicy: OnFailure
  containers:
    - name: app
      image: example.invalid/tools:1
      command: ["sh", "-c", "if [ -f /srv/d/once ]; then exit 0; fi; touch /srv/d/once; exit 4"]
      volumeMounts: [{name: d, mountPath: /srv/d}]
  volumes: [{name: d, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: never, namespace: kw-probe}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: example.invalid/tools:1
      command: ["sh", "-c", "while :; do sleep 0.2; done"]
      livenessProbe:
        tcpSocket: {port: 8080}
        periodSeconds: 1
        failureThreshold: 1
"#;

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn condition(pod: &Value, t: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_gate_ready_and_liveness_failures_restart_by_the_restart_policy() {
    let t0 = Instant::now();
    let cluster = start_cluster();
    let node = start_node(&cluster, 0.8).await;
    namespace(&cluster, "kw-probe", &[]);
    apply(&cluster, PROBED);
    let get = |name: &str| get_json(&cluster, &["-n", "kw-probe", "pod", name]);
    let wait = |args: &[&str]| {
        let mut a = vec!["-n", "kw-probe", "wait", "--timeout=90s"];
        a.extend_from_slice(args);
        kubectl(&cluster, &a)
    };

    // Readiness: the container runs and its probe keeps failing, so the pod is not Ready.
    let dir = support::eventually(WAIT, "the probed pod's volume", || {
        let v = node.volume("kw-probe", "probed", "d");
        async move { v.filter(|d| d.join("runs").exists()) }
    })
    .await;
    support::eventually(WAIT, "two readiness probes", || {
        let n = lines(&dir.join("probes"));
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let pod = get("probed");
    let c = &pod["status"]["containerStatuses"][0];
    assert!(c["state"]["running"].is_object(), "{pod:#}");
    assert_eq!(c["started"], true, "{pod:#}");
    assert_eq!(c["ready"], false, "readiness failing, yet ready: {pod:#}");
    assert_eq!(condition(&pod, "Ready"), "False", "{pod:#}");
    // ...and once it passes, Ready.
    std::fs::write(dir.join("ready"), "").expect("ready file");
    wait(&["--for=condition=Ready", "pod/probed"]).unwrap_or_else(|e| panic!("Ready: {e}"));
    let pid = node
        .pids("kw-probe", "probed")
        .first()
        .map(|p| p.1)
        .expect("pid");

    // Liveness: two failures kill the container; restartPolicy Always starts it again at once
    // (the first restart has no back-off), counted in restartCount with its last state.
    std::fs::write(dir.join("dead"), "").expect("dead file");
    wait(&[
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        "pod/probed",
    ])
    .unwrap_or_else(|e| panic!("restartCount 1: {e}\n{:#}", get("probed")["status"]));
    assert_eq!(lines(&dir.join("runs")), 2, "the app ran again");
    wait(&["--for=condition=Ready", "pod/probed"]).unwrap_or_else(|e| panic!("Ready again: {e}"));
    let pod = get("probed");
    let c = &pod["status"]["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1, "{pod:#}");
    assert!(
        c["lastState"]["terminated"]["finishedAt"].is_string(),
        "{pod:#}"
    );
    let new_pid = node.pids("kw-probe", "probed").first().map(|p| p.1);
    assert!(
        new_pid.is_some() && new_pid != Some(pid),
        "{pid} -> {new_pid:?}"
    );

    // OnFailure: exit 4, restarted, exit 0: Succeeded with one restart.
    wait(&["--for=jsonpath={.status.phase}=Succeeded", "pod/once"])
        .unwrap_or_else(|e| panic!("once Succeeded: {e}\n{:#}", get("once")["status"]));
    let once = get("once");
    let c = &once["status"]["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1, "{once:#}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 4, "{once:#}");
    assert_eq!(c["state"]["terminated"]["exitCode"], 0, "{once:#}");

    // Never: a failed liveness probe (nothing listens on 8080) stops the container for good
    // (SIGTERM, which its PID 1 ignores, then SIGKILL after the 1 s grace: exit 137).
    wait(&["--for=jsonpath={.status.phase}=Failed", "pod/never"])
        .unwrap_or_else(|e| panic!("never Failed: {e}\n{:#}", get("never")["status"]));
    let never = get("never");
    let c = &never["status"]["containerStatuses"][0];
    assert_eq!(c["restartCount"], 0, "{never:#}");
    assert_eq!(c["state"]["terminated"]["exitCode"], 137, "{never:#}");

    node.stop(Duration::from_secs(5)).await;
    eprintln!("timing: total {:?}", t0.elapsed());
}
