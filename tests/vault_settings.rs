//! The Vault connection settings a platform team needs, against a real OpenBao serving TLS on
//! loopback with a private CA (issue 15 §3): a pinned CA set (`vault.ca_file`), the name
//! Vault's certificate is checked against (`vault.tls_server_name`), a client certificate
//! (`vault.client_cert_file`/`client_key_file`, a listener with
//! `tls_require_and_verify_client_cert`), and the namespace (`vault.namespace`,
//! `X-Vault-Namespace`: OpenBao 2.7 has namespaces). Each wrong setting fails the login with a
//! reason naming the setting to look at.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_testkit::testpki::{Leaf, TestCa};
use serde_json::json;
use support::bao::Bao;
use support::broker::BrokerProc;
use support::{eventually, jwt, TestVault, APP_POLICY};

const SECRETS: &str = "secrets:\n  - {name: app, path: secret/data/app}\n";
const WAIT: Duration = Duration::from_secs(30);
/// The only name Vault's certificate carries (no IP address: `https://127.0.0.1` does not
/// match it).
const VAULT_NAME: &str = "vault.test";

/// Certificates and keys in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write PEM");
        p.display().to_string()
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An OpenBao dev server that also serves TLS with `server` on P+2 and, requiring a client
/// certificate signed by `client_ca`, on P+3; jwt auth and the `app` role as [`TestVault`].
async fn tls_vault(files: &Files, vault_ca: &TestCa, client_ca: &TestCa) -> TestVault {
    let server = vault_ca.leaf(Leaf::new("spiffe://unused/x").no_uri().dns(VAULT_NAME));
    let cert = files.write("vault.crt", &server.chain_pem);
    let key = files.write("vault.key", &server.key_pem);
    let client_ca_file = files.write("client-ca.crt", &client_ca.cert_pem);
    let bao = Bao::start_with_listeners(Box::new(move |port| {
        format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls}\"\n  tls_cert_file = \"{cert}\"\n  \
             tls_key_file = \"{key}\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{mtls}\"\n  tls_cert_file = \"{cert}\"\n  \
             tls_key_file = \"{key}\"\n  tls_client_ca_file = \"{client_ca_file}\"\n  \
             tls_require_and_verify_client_cert = true\n}}\n",
            tls = port + 2,
            mtls = port + 3,
        )
    }));
    let v = TestVault::with_bao(bao, "shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "tls-canary"})).await;
    v
}

/// The first `vault.login` audit record of `b`.
async fn first_login(b: &BrokerProc) -> serde_json::Value {
    eventually(WAIT, "a vault.login audit record", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "vault.login")
    })
    .await
}

/// A broker reading [`SECRETS`] from `addr` with `token` and the settings `env` never logs in:
/// its first login fails with a reason containing every one of `needles`, `/v1/health/ready`
/// says so, and no secret is served.
async fn refused(addr: &str, token: &str, env: &[(&str, &str)], what: &str, needles: &[&str]) {
    let b = BrokerProc::start(addr, token, SECRETS, env);
    let login = first_login(&b).await;
    assert_eq!(login["decision"], "error", "{what}: {login}");
    let reason = login["reason"].as_str().unwrap_or_default();
    for n in needles {
        assert!(
            reason.contains(n),
            "{what}: the login error names {n:?}: {reason}"
        );
    }
    let ready = b.get("/v1/health/ready").await;
    assert_eq!(ready.status, 503, "{what}");
    assert!(ready.body.contains(needles[0]), "{what}: {}", ready.body);
    let app = b.get("/v1/secrets/app/password").await;
    assert_ne!(app.status, 200, "{what}");
    assert!(!app.body.contains("tls-canary"), "{what}");
    assert_eq!(b.audit_count("vault.login", "ok"), 0, "{what}");
}

/// A broker reading [`SECRETS`] from `addr` with `token` and the settings `env` becomes ready and
/// serves the secret.
async fn serves(addr: &str, token: &str, env: &[(&str, &str)], what: &str) {
    let b = BrokerProc::start(addr, token, SECRETS, env);
    b.wait_ready().await;
    let app = b.get("/v1/secrets/app/password").await;
    assert_eq!(app.status, 200, "{what}: {}", app.body);
    assert_eq!(app.body, "tls-canary", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_is_reached_only_with_the_pinned_ca_and_the_right_server_name() {
    let files = Files::new();
    let vault_ca = TestCa::new("vault");
    let other_ca = TestCa::new("other");
    let v = tls_vault(&files, &vault_ca, &TestCa::new("clients")).await;
    let addr = format!("https://127.0.0.1:{}", v.bao.extra_port(0));
    let token = v.token("shop", "orders");
    let ca = files.write("vault-ca.crt", &vault_ca.cert_pem);
    let other = files.write("other-ca.crt", &other_ca.cert_pem);
    // A pinned set of several CAs (a rotation: the old and the new one) trusts each.
    let both = files.write(
        "both.crt",
        &format!("{}{}", other_ca.cert_pem, vault_ca.cert_pem),
    );

    for (what, ca_file) in [("the CA", &ca), ("a bundle holding the CA", &both)] {
        let env = [
            ("KEYWARD_VAULT_CACERT", ca_file.as_str()),
            ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
        ];
        serves(&addr, &token, &env, what).await;
    }

    // Each setting wrong in turn; the reason names the setting that decides.
    refused(
        &addr,
        &token,
        &[
            ("KEYWARD_VAULT_CACERT", other.as_str()),
            ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
        ],
        "another CA pinned",
        &["certificate", "UnknownIssuer", "vault.ca_file"],
    )
    .await;
    refused(
        &addr,
        &token,
        &[("KEYWARD_VAULT_CACERT", ca.as_str())],
        "no server name (the address is an IP the certificate does not carry)",
        &[
            "certificate",
            "not valid for name",
            "vault.tls_server_name unset",
        ],
    )
    .await;
    refused(
        &addr,
        &token,
        &[
            ("KEYWARD_VAULT_CACERT", ca.as_str()),
            ("KEYWARD_VAULT_TLS_SERVER_NAME", "vault.other.test"),
        ],
        "another server name",
        &["certificate", "not valid for name", "vault.tls_server_name"],
    )
    .await;
    // No pinned CA: the built-in public roots, which never signed this private CA.
    refused(
        &addr,
        &token,
        &[("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME)],
        "the built-in roots",
        &["certificate", "UnknownIssuer", "vault.ca_file unset"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_requiring_a_client_certificate_accepts_the_sidecar_with_its_certificate_and_refuses_it_without(
) {
    let files = Files::new();
    let vault_ca = TestCa::new("vault");
    let client_ca = TestCa::new("clients");
    let v = tls_vault(&files, &vault_ca, &client_ca).await;
    let addr = format!("https://127.0.0.1:{}", v.bao.extra_port(1));
    let token = v.token("shop", "orders");
    let ca = files.write("vault-ca.crt", &vault_ca.cert_pem);
    let client = client_ca.leaf(Leaf::new("spiffe://cluster.local/ns/shop/sa/orders"));
    let cert = files.write("client.crt", &client.chain_pem);
    let key = files.write("client.key", &client.key_pem);
    // Signed by a CA the listener does not trust.
    let stranger = TestCa::new("stranger").leaf(Leaf::new("spiffe://cluster.local/ns/x/sa/y"));
    let stranger_cert = files.write("stranger.crt", &stranger.chain_pem);
    let stranger_key = files.write("stranger.key", &stranger.key_pem);
    let tls = [
        ("KEYWARD_VAULT_CACERT", ca.as_str()),
        ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
    ];

    let with_cert = [
        tls[0],
        tls[1],
        ("KEYWARD_VAULT_CLIENT_CERT", cert.as_str()),
        ("KEYWARD_VAULT_CLIENT_KEY", key.as_str()),
    ];
    serves(&addr, &token, &with_cert, "with the client certificate").await;

    refused(
        &addr,
        &token,
        &tls,
        "without a client certificate",
        &["alert", "vault.client_cert_file unset"],
    )
    .await;
    refused(
        &addr,
        &token,
        &[
            tls[0],
            tls[1],
            ("KEYWARD_VAULT_CLIENT_CERT", stranger_cert.as_str()),
            ("KEYWARD_VAULT_CLIENT_KEY", stranger_key.as_str()),
        ],
        "a client certificate of another CA",
        &["alert", "vault.client_cert_file"],
    )
    .await;
    // The same certificate on the listener that asks for none is simply not asked for.
    serves(
        &format!("https://127.0.0.1:{}", v.bao.extra_port(0)),
        &token,
        &with_cert,
        "client certificate, listener not asking",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tls_setting_is_refused_at_start_naming_the_setting() {
    let files = Files::new();
    let ca = TestCa::new("clients");
    let client = ca.leaf(Leaf::new("spiffe://cluster.local/ns/shop/sa/orders"));
    let cert = files.write("client.crt", &client.chain_pem);
    let not_a_key = files.write("not-a-key.pem", &client.chain_pem);
    let missing = files.path().join("missing.crt").display().to_string();
    let token = files.write("token", "x.y.z");
    let cases: Vec<(String, &str)> = vec![
        (format!("client_cert_file: {cert}"), "vault.client_key_file"),
        (
            format!("client_cert_file: {cert}, client_key_file: {not_a_key}"),
            "vault.client_key_file",
        ),
        (
            "tls_server_name: \"not a name\"".into(),
            "vault.tls_server_name",
        ),
        (format!("ca_file: {missing}"), "vault.ca_file"),
        ("namespace: \"../root\"".into(), "vault.namespace"),
    ];
    for (i, (vault, needle)) in cases.iter().enumerate() {
        let config = files.write(
            &format!("config-{i}.yaml"),
            &format!(
                "vault: {{addr: \"https://127.0.0.1:1\", {vault}}}\nauth: {{token_file: {token}}}\n\
                 socket: {{path: {dir}/{i}.sock}}\naudit: {{file: {dir}/{i}.audit}}\n{SECRETS}",
                dir = files.path().display(),
            ),
        );
        let run = tokio::process::Command::new(support::broker::KEYWARD)
            .args(["broker", "--config", &config])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("{vault}: the broker started instead of refusing"))
            .expect("run keyward broker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{vault}: {stderr}");
        assert!(stderr.contains(needle), "{vault}: names {needle}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vault_namespace_the_sidecar_logs_in_and_reads_inside_that_namespace() {
    // The root namespace and namespace `team` both have jwt auth, the `app` role and a KV
    // secret `app`, with different values: which one the broker reads shows where it went.
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "root-value"})).await;
    let b = &v.bao;
    b.api("POST", "sys/namespaces/team", Some(json!({}))).await;
    b.api("POST", "team/sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await;
    b.api(
        "POST",
        "team/auth/jwt/config",
        Some(json!({"jwt_validation_pubkeys": [v.issuer.public_pem], "bound_issuer": jwt::ISSUER})),
    )
    .await;
    b.api(
        "PUT",
        "team/sys/policies/acl/app",
        Some(json!({"policy": APP_POLICY})),
    )
    .await;
    b.api(
        "POST",
        "team/auth/jwt/role/orders",
        Some(jwt::role_body("shop", "orders", "1h", "2h", &["app"])),
    )
    .await;
    b.kv2("team/", "secret").await;
    b.api(
        "POST",
        "team/secret/data/app",
        Some(json!({"data": {"password": "team-value"}})),
    )
    .await;
    let token = v.token("shop", "orders");

    let in_team = BrokerProc::start(
        &b.addr(),
        &token,
        SECRETS,
        &[("KEYWARD_VAULT_NAMESPACE", "team")],
    );
    in_team.wait_ready().await;
    assert_eq!(
        in_team.get("/v1/secrets/app/password").await.body,
        "team-value"
    );
    let at_root = BrokerProc::start(&b.addr(), &token, SECRETS, &[]);
    at_root.wait_ready().await;
    assert_eq!(
        at_root.get("/v1/secrets/app/password").await.body,
        "root-value"
    );
    // A namespace without the auth method: the login is refused there, not silently done at
    // the root.
    b.api("POST", "sys/namespaces/empty", Some(json!({}))).await;
    let elsewhere = BrokerProc::start(
        &b.addr(),
        &token,
        SECRETS,
        &[("KEYWARD_VAULT_NAMESPACE", "empty")],
    );
    let login = first_login(&elsewhere).await;
    assert_eq!(login["decision"], "error", "{login}");
    assert_eq!(elsewhere.audit_count("vault.login", "ok"), 0);
}
