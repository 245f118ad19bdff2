//! The broker logs in to a real OpenBao with tokens the real kube-apiserver minted
//! (scripts/cluster.sh; `kubectl create token` bound to a Pod object, which stays Pending: no
//! node agent runs), both ways docs/vault-setup.md describes:
//!
//! - jwt auth verifying tokens offline against the API server's own JWKS
//!   (`/openid/v1/jwks` over https on loopback, `jwks_ca_pem` = the cluster CA, anonymous
//!   discovery allowed by RBAC) and, the other way that section shows, the `sa.pub` key;
//! - kubernetes auth, where OpenBao asks this API server to review every token (TokenReview
//!   with a `system:auth-delegator` reviewer token), so a deleted pod or service account stops
//!   the next login — after at most the API server's 10 s cache of successful authentications.
//!
//! A token for another audience is refused by both. The API server, OpenBao and the broker
//! are the real binaries; a missing one fails the test naming its install command.

mod support;

use std::time::{Duration, Instant};

use keyward_test_cluster::{Cluster, ISSUER};
use serde_json::{json, Value};
use support::bao::Bao;
use support::broker::{Answer, BrokerProc};
use support::eventually;

/// Safety net for conditions polled on a loaded two-core machine; never slept for.
const WAIT: Duration = Duration::from_secs(90);

const SECRETS: &str = "secrets:\n  - {name: db, path: secret/data/shop/orders/db}\n";

/// docs/vault-setup.md section 2, verbatim.
const SHOP_ORDERS_POLICY: &str = r#"
# Secrets named by the pod's keyward.io/secret-* annotations.
path "database/creds/orders"        { capabilities = ["read"] }
path "secret/data/shop/orders/*"    { capabilities = ["read"] }
# Lease renewal and revocation of its own leases.
path "sys/leases/renew"             { capabilities = ["update"] }
path "sys/leases/revoke"            { capabilities = ["update"] }
# Its workload certificate (only for pods with inbound/outbound ports).
path "pki_int/sign/spiffe"          { capabilities = ["update"] }
"#;

/// OpenBao first (its absence names `scripts/deps.sh core`), then the cluster (its absence
/// names `scripts/deps.sh cluster`): both fail the test, neither skips it.
fn start() -> (Bao, Cluster) {
    let bao = Bao::start();
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    (bao, cluster)
}

/// Namespace `ns` with service account `sa` and a Pod `pod` running as it (Pending forever).
fn workload(cluster: &Cluster, ns: &str, sa: &str, pod: &str) {
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}}}\n\
             spec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: example.invalid/shop/{sa}:1}}]\n"
        ))
        .unwrap_or_else(|e| panic!("creating {ns}/{sa} and pod {pod}: {e}"));
}

/// A TokenRequest token for `ns/sa`, bound to `pod`, for `audience` (None: the API server's).
fn token(cluster: &Cluster, ns: &str, sa: &str, audience: Option<&str>, pod: &str) -> String {
    cluster
        .create_token(ns, sa, audience, Some(pod))
        .unwrap_or_else(|e| panic!("kubectl create token {sa} -n {ns}: {e}"))
}

/// docs/vault-setup.md section 1, "let Vault fetch the keys from the API server": jwt auth at
/// `auth/jwt` with the API server's JWKS URL, its CA, and the discovery document's issuer.
async fn configure_jwt(bao: &Bao, cluster: &Cluster) {
    // The docs' CA: the root CA ConfigMap the controllers publish in every namespace.
    let ca = cluster
        .kubectl(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "default",
            "-o",
            r"jsonpath={.data.ca\.crt}",
        ])
        .expect("kube-root-ca.crt");
    assert_eq!(ca, cluster.ca_pem().expect("CA"));
    // Without credentials the JWKS is refused until RBAC allows it.
    let (status, body) = anonymous_get(cluster, &cluster.jwks_url()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(r#"User \"system:anonymous\" cannot get path"#),
        "{body}"
    );
    cluster
        .allow_anonymous_issuer_discovery()
        .expect("bind system:service-account-issuer-discovery to system:unauthenticated");
    let (status, body) = eventually(WAIT, "the JWKS readable anonymously", || async {
        let (status, body) = anonymous_get(cluster, &cluster.jwks_url()).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert!(body.contains(r#""alg":"RS256""#), "{status} {body}");
    // What the docs' `kubectl get --raw /.well-known/openid-configuration | jq -r .issuer` finds;
    // the API server advertises its JWKS at its own address, not under the issuer.
    let discovery: Value = serde_json::from_str(
        &cluster
            .kubectl(&["get", "--raw", "/.well-known/openid-configuration"])
            .expect("the discovery document"),
    )
    .expect("discovery JSON");
    assert_eq!(discovery["issuer"], ISSUER, "{discovery:#}");
    assert_eq!(discovery["jwks_uri"], cluster.jwks_url(), "{discovery:#}");
    bao.api("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await;
    bao.api(
        "POST",
        "auth/jwt/config",
        Some(json!({
            "jwks_url": cluster.jwks_url(),
            "jwks_ca_pem": ca,
            "bound_issuer": ISSUER,
        })),
    )
    .await;
}

/// docs/vault-setup.md section 3: a jwt role bound to the namespace and service account, one
/// entity alias per pod (the token is bound to its Pod, whose uid is the user claim).
async fn jwt_role(bao: &Bao, mount: &str, name: &str, ns: &str, sa: &str) {
    bao.api(
        "POST",
        &format!("auth/{mount}/role/{name}"),
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "/kubernetes.io/pod/uid",
            "user_claim_json_pointer": true,
            "bound_claims_type": "string",
            "bound_claims": {"/kubernetes.io/namespace": ns,
                             "/kubernetes.io/serviceaccount/name": sa},
            "claim_mappings": {"/kubernetes.io/namespace": "namespace",
                               "/kubernetes.io/serviceaccount/name": "service_account_name",
                               "/kubernetes.io/pod/name": "pod_name"},
            "token_ttl": "15m", "token_max_ttl": "1h",
            "token_policies": ["shop-orders"],
        })),
    )
    .await;
}

/// docs/vault-setup.md section 5, "Vault outside the cluster": kubernetes auth reviewing
/// tokens at this API server with a `system:auth-delegator` reviewer token and its CA.
async fn configure_kubernetes(bao: &Bao, cluster: &Cluster) {
    let reviewer = cluster
        .token_reviewer("vault", "vault")
        .expect("the TokenReview service account");
    bao.api(
        "POST",
        "sys/auth/kubernetes",
        Some(json!({"type": "kubernetes"})),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        Some(json!({
            "kubernetes_host": cluster.server,
            "kubernetes_ca_cert": cluster.ca_pem().expect("CA"),
            "token_reviewer_jwt": reviewer,
        })),
    )
    .await;
}

/// docs/vault-setup.md section 5's role; `ttl`/`max_ttl` as given.
async fn kubernetes_role(bao: &Bao, name: &str, ns: &str, sa: &str, ttl: &str, max_ttl: &str) {
    bao.api(
        "POST",
        &format!("auth/kubernetes/role/{name}"),
        Some(json!({
            "bound_service_account_names": [sa],
            "bound_service_account_namespaces": [ns],
            "audience": "vault",
            "token_policies": ["shop-orders"],
            "token_ttl": ttl, "token_max_ttl": max_ttl,
        })),
    )
    .await;
}

async fn secrets(bao: &Bao) {
    bao.policy("shop-orders", SHOP_ORDERS_POLICY).await;
    bao.kv_put(
        "shop/orders/db",
        json!({"password": "canary-cluster-7d2e", "user": "orders"}),
    )
    .await;
}

/// The real `keyward broker` logging in with `token` at `auth/MOUNT/login` (`method` decides
/// the default mount), role `role`, serving the `db` secret.
fn broker(bao: &Bao, token: &str, method: &str, mount: Option<&str>, role: &str) -> BrokerProc {
    let mut env = vec![("KEYWARD_AUTH_METHOD", method), ("KEYWARD_ROLE", role)];
    if let Some(m) = mount {
        env.push(("KEYWARD_AUTH_MOUNT", m));
    }
    BrokerProc::start(&bao.addr(), token, SECRETS, &env)
}

/// Ready, serving the secret, with a `vault.login` ok record naming the pod from the token.
async fn assert_serves(b: &BrokerProc, ns: &str, sa: &str, pod: &str) {
    b.wait_ready().await;
    let a = b.get("/v1/secrets/db/password").await;
    assert_eq!(a.status, 200, "{}\nlog:\n{}", a.body, b.log());
    assert_eq!(a.body, "canary-cluster-7d2e");
    let login = b
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "vault.login" && r["decision"] == "ok")
        .unwrap_or_else(|| panic!("no vault.login ok record: {:?}", b.audit_records()));
    assert_eq!(login["pod"]["namespace"], ns, "{login}");
    assert_eq!(login["pod"]["service_account"], sa, "{login}");
    assert_eq!(login["pod"]["pod_name"], pod, "{login}");
    support::assert_no_panic("keyward broker", &b.log());
}

/// Waits until `/v1/health/ready` answers 503 naming `why`; returns that answer.
async fn unready_with(b: &BrokerProc, why: &str) -> Answer {
    eventually(
        WAIT,
        &format!("the broker unready with {why:?}"),
        || async {
            // The socket file appears at bind(), a moment before the broker listens: a refused
            // connection then means "not yet", not a failure.
            if !b.socket.exists() || tokio::net::UnixStream::connect(&b.socket).await.is_err() {
                return None;
            }
            let a = b.get("/v1/health/ready").await;
            (a.status == 503 && a.body.contains(why)).then_some(a)
        },
    )
    .await
}

/// A broker that never logged in: unready with Vault's reason in /v1/health/ready, its log
/// and a `vault.login` error record, and no secret served.
async fn assert_refused(b: &BrokerProc, why: &str) {
    let a = unready_with(b, why).await;
    assert!(a.body.contains("not logged in to Vault"), "{}", a.body);
    assert!(b.log().contains(why), "the log names {why:?}:\n{}", b.log());
    let errors: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "vault.login" && r["decision"] == "error")
        .collect();
    assert!(
        errors
            .iter()
            .any(|r| r["reason"].as_str().is_some_and(|s| s.contains(why))),
        "a vault.login error record names {why:?}: {errors:?}"
    );
    assert_eq!(
        b.audit_count("vault.login", "ok"),
        0,
        "{:?}",
        b.audit_records()
    );
    let s = b.get("/v1/secrets/db/password").await;
    assert_eq!(s.status, 503, "{}", s.body);
    assert!(!s.body.contains("canary"), "{}", s.body);
    support::assert_no_panic("keyward broker", &b.log());
}

/// GET `url` without credentials, trusting only the cluster CA.
async fn anonymous_get(cluster: &Cluster, url: &str) -> (u16, String) {
    let ca = reqwest::Certificate::from_pem(cluster.ca_pem().expect("CA").as_bytes())
        .expect("CA certificate");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let resp = client.get(url).send().await.expect("GET the API server");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// `POST auth/MOUNT/login` as the broker sends it; the HTTP status and Vault's errors.
async fn login(bao: &Bao, mount: &str, role: &str, jwt: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/auth/{mount}/login", bao.addr()))
        .json(&json!({"jwt": jwt, "role": role}))
        .send()
        .await
        .expect("login request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn jwt_auth_verifies_api_server_tokens_against_its_jwks_and_the_broker_serves_the_secret() {
    let t0 = Instant::now();
    let (bao, cluster) = start();
    let started = t0.elapsed();
    configure_jwt(&bao, &cluster).await;
    jwt_role(&bao, "jwt", "shop-orders", "shop", "orders").await;
    secrets(&bao).await;
    workload(&cluster, "shop", "orders", "orders-1");
    let jwt = token(&cluster, "shop", "orders", Some("vault"), "orders-1");

    let b = broker(&bao, &jwt, "jwt", None, "shop-orders");
    assert_serves(&b, "shop", "orders", "orders-1").await;
    // OpenBao's token carries the claims the role maps, from the real pod.
    let tokens = support::live_tokens(&bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let (_, t) = bao
        .api_status(
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({"accessor": tokens[0]})),
        )
        .await;
    assert_eq!(t["data"]["meta"]["namespace"], "shop", "{t}");
    assert_eq!(t["data"]["meta"]["pod_name"], "orders-1", "{t}");
    assert_eq!(
        t["data"]["policies"],
        json!(["default", "shop-orders"]),
        "{t}"
    );

    // Discovery from the API server's address fails: the issuer it announces is another URL
    // (docs/vault-setup.md keeps oidc_discovery_url for issuers served at their own URL).
    bao.api("POST", "sys/auth/jwt-oidc", Some(json!({"type": "jwt"})))
        .await;
    let (status, body) = bao
        .api_status(
            "POST",
            "auth/jwt-oidc/config",
            Some(json!({
                "oidc_discovery_url": cluster.server,
                "oidc_discovery_ca_pem": cluster.ca_pem().expect("CA"),
                "bound_issuer": ISSUER,
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("issuer did not match the returned issuer"),
        "{body}"
    );

    // The other way section 1 shows: the signing public key given once (sa.pub).
    bao.api("POST", "sys/auth/jwt-pubkey", Some(json!({"type": "jwt"})))
        .await;
    bao.api(
        "POST",
        "auth/jwt-pubkey/config",
        Some(json!({
            "jwt_validation_pubkeys": [cluster.sa_public_key_pem().expect("sa.pub")],
            "bound_issuer": ISSUER,
        })),
    )
    .await;
    jwt_role(&bao, "jwt-pubkey", "shop-orders", "shop", "orders").await;
    let b2 = broker(&bao, &jwt, "jwt", Some("jwt-pubkey"), "shop-orders");
    assert_serves(&b2, "shop", "orders", "orders-1").await;
    eprintln!(
        "timing: cluster+bao up {started:?}, test total {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn kubernetes_auth_reviews_api_server_tokens_and_the_broker_serves_the_secret() {
    let t0 = Instant::now();
    let (bao, cluster) = start();
    let started = t0.elapsed();
    configure_kubernetes(&bao, &cluster).await;
    kubernetes_role(&bao, "shop-orders", "shop", "orders", "15m", "1h").await;
    secrets(&bao).await;
    workload(&cluster, "shop", "orders", "orders-1");
    let jwt = token(&cluster, "shop", "orders", Some("vault"), "orders-1");

    let b = broker(&bao, &jwt, "kubernetes", None, "shop-orders");
    assert_serves(&b, "shop", "orders", "orders-1").await;
    // The alias metadata come from the API server's TokenReview: the service account's uid
    // is the stored object's.
    let tokens = support::live_tokens(&bao, "auth/kubernetes/login").await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let (_, t) = bao
        .api_status(
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({"accessor": tokens[0]})),
        )
        .await;
    let sa = cluster
        .get_json(&["-n", "shop", "serviceaccount", "orders"])
        .expect("get sa");
    assert_eq!(
        t["data"]["meta"]["service_account_uid"], sa["metadata"]["uid"],
        "{t}"
    );
    assert_eq!(
        t["data"]["meta"]["service_account_namespace"], "shop",
        "{t}"
    );
    eprintln!(
        "timing: cluster+bao up {started:?}, test total {:?}",
        t0.elapsed()
    );
}

/// A running kubernetes-auth broker whose pod or service account was deleted: its next token
/// renewal is refused, its login again too, and it turns unready with Vault's reason, while it
/// still serves the KV value it read before. A new broker with the same token never logs in.
/// Returns how long after `deleted` the running broker turned unready.
async fn assert_cut_off(bao: &Bao, running: &BrokerProc, token: &str, role: &str) -> Duration {
    let deleted = Instant::now();
    let ready = unready_with(running, "permission denied").await;
    let after = deleted.elapsed();
    assert!(
        ready
            .body
            .contains("not logged in to Vault: Vault answered 403: permission denied"),
        "{}",
        ready.body
    );
    let records = running.audit_records();
    let reasons = |action: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["action"] == action && r["decision"] == "error")
            .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // OpenBao re-validates at renewal, even far from the role's max TTL (1 h).
    assert!(
        reasons("vault.renew")
            .iter()
            .any(|r| r.contains("during renewal: permission denied")),
        "a refused renewal: {records:?}"
    );
    assert!(
        reasons("vault.login")
            .iter()
            .any(|r| r == "Vault answered 403: permission denied"),
        "a refused login: {records:?}"
    );
    assert!(
        running.log().contains("permission denied"),
        "{}",
        running.log()
    );
    // A refusal stops new Vault tokens, not what the broker holds: the KV value it read
    // before is still served (KV has no lease to end) while it reports unready.
    let secret = running.get("/v1/secrets/db/password").await;
    assert_eq!(
        (secret.status, secret.body.as_str()),
        (200, "canary-cluster-7d2e")
    );
    // A new broker with the same token (a restarted sidecar) never logs in.
    let fresh = broker(bao, token, "kubernetes", None, role);
    assert_refused(&fresh, "permission denied").await;
    after
}

#[tokio::test]
async fn kubernetes_auth_refuses_renewal_and_login_once_the_pod_or_service_account_is_deleted() {
    let t0 = Instant::now();
    let (bao, cluster) = start();
    let started = t0.elapsed();
    configure_kubernetes(&bao, &cluster).await;
    configure_jwt(&bao, &cluster).await;
    // Short Vault tokens (renewed every 2 s), the docs' max TTL of 1 h.
    kubernetes_role(&bao, "shop-orders", "shop", "orders", "3s", "1h").await;
    kubernetes_role(&bao, "shop-payments", "shop", "payments", "3s", "1h").await;
    jwt_role(&bao, "jwt", "shop-orders", "shop", "orders").await;
    secrets(&bao).await;
    workload(&cluster, "shop", "orders", "orders-1");
    workload(&cluster, "shop", "payments", "payments-1");
    let orders = token(&cluster, "shop", "orders", Some("vault"), "orders-1");
    let payments = token(&cluster, "shop", "payments", Some("vault"), "payments-1");

    let a = broker(&bao, &orders, "kubernetes", None, "shop-orders");
    let b = broker(&bao, &payments, "kubernetes", None, "shop-payments");
    assert_serves(&a, "shop", "orders", "orders-1").await;
    assert_serves(&b, "shop", "payments", "payments-1").await;
    eventually(WAIT, "renewals of the running brokers", || async {
        (a.audit_count("vault.renew", "ok") >= 1 && b.audit_count("vault.renew", "ok") >= 1)
            .then_some(())
    })
    .await;

    // The pod the token is bound to is deleted. Vault says only "permission denied"; the
    // API server's reason shows in a TokenReview.
    cluster
        .kubectl(&["-n", "shop", "delete", "pod", "orders-1"])
        .expect("delete pod");
    let pod_cut_off = assert_cut_off(&bao, &a, &orders, "shop-orders").await;
    let review = cluster
        .token_review(&orders, &["vault"])
        .expect("TokenReview");
    assert_ne!(review["authenticated"], true, "{review}");
    assert!(
        review["error"]
            .as_str()
            .is_some_and(|e| e.contains("service account token has been invalidated")),
        "{review}"
    );
    // jwt auth verifies offline: the same token still logs in there (the trade-off
    // docs/vault-setup.md section 5 names).
    let (status, body) = login(&bao, "jwt", "shop-orders", &orders).await;
    assert_eq!(status, 200, "{body}");
    // The other service account's broker is untouched.
    assert_eq!(b.get("/v1/health/ready").await.status, 200, "{}", b.log());

    // The service account is deleted: the same for its tokens.
    cluster
        .kubectl(&["-n", "shop", "delete", "serviceaccount", "payments"])
        .expect("delete sa");
    let sa_cut_off = assert_cut_off(&bao, &b, &payments, "shop-payments").await;
    let review = cluster
        .token_review(&payments, &["vault"])
        .expect("TokenReview");
    assert!(
        review["error"]
            .as_str()
            .is_some_and(|e| e.contains(r#"serviceaccounts "payments" not found"#)),
        "{review}"
    );
    eprintln!(
        "timing: cluster+bao up {started:?}; running broker unready {pod_cut_off:?} after the \
         pod deletion, {sa_cut_off:?} after the service-account deletion; test total {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_by_jwt_and_kubernetes_auth() {
    let t0 = Instant::now();
    let (bao, cluster) = start();
    let started = t0.elapsed();
    configure_jwt(&bao, &cluster).await;
    configure_kubernetes(&bao, &cluster).await;
    jwt_role(&bao, "jwt", "shop-orders", "shop", "orders").await;
    kubernetes_role(&bao, "shop-orders", "shop", "orders", "15m", "1h").await;
    secrets(&bao).await;
    workload(&cluster, "shop", "orders", "orders-1");
    // Without --audience: the API server's own audience (the issuer), as the pod's default
    // token has; and one for some other service.
    let api_aud = token(&cluster, "shop", "orders", None, "orders-1");
    let other_aud = token(&cluster, "shop", "orders", Some("not-vault"), "orders-1");
    let good = token(&cluster, "shop", "orders", Some("vault"), "orders-1");
    assert_eq!(
        keyward_broker::claims::decode(&api_aud)
            .expect("claims")
            .pod
            .service_account,
        "orders"
    );
    // The same pod's vault-audience token logs in by both methods: only the audience differs.
    for mount in ["jwt", "kubernetes"] {
        let (status, body) = login(&bao, mount, "shop-orders", &good).await;
        assert_eq!(status, 200, "{mount}: {body}");
    }

    let why = "invalid audience (aud) claim";
    let brokers: Vec<(&str, BrokerProc)> = [&api_aud, &other_aud]
        .into_iter()
        .flat_map(|t| {
            ["jwt", "kubernetes"]
                .map(|m| (m, broker(&bao, t, m, None, "shop-orders")))
                .into_iter()
        })
        .collect();
    for (method, b) in &brokers {
        assert_refused(b, why).await;
        let a = b.get("/v1/health/ready").await;
        // jwt answers 400, kubernetes 403; both name the claim.
        let code = if *method == "jwt" { "400" } else { "403" };
        assert!(a.body.contains(code), "{method}: {}", a.body);
    }
    eprintln!(
        "timing: cluster+bao up {started:?}, test total {:?}",
        t0.elapsed()
    );
}
