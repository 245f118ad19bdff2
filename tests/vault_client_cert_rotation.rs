//! A renewed Vault client certificate reaches a running broker: against a real OpenBao listener
//! with `tls_require_and_verify_client_cert`, a broker started with a certificate the listener
//! does not trust is refused, and once the mounted Secret is renewed the way kubelet does it (a
//! new timestamped directory, the `..data` symlink swapped) its next login succeeds, same
//! process, no restart. The reload logic itself (rename, swap, unusable files) is unit-tested in
//! `broker/src/vault_tls.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_testkit::testpki::{Leaf, Minted, TestCa};
use serde_json::json;
use support::bao::Bao;
use support::broker::BrokerProc;
use support::{eventually, TestVault};

const SECRETS: &str = "secrets:\n  - {name: app, path: secret/data/app}\n";
const WAIT: Duration = Duration::from_secs(30);
const VAULT_NAME: &str = "vault.test";

/// A Secret volume as kubelet lays it out: `tls.crt -> ..data/tls.crt`, `..data -> ..<ts>/`.
struct Projected {
    dir: PathBuf,
    version: u32,
}

impl Projected {
    fn new(dir: &Path, m: &Minted) -> Self {
        std::fs::create_dir(dir).expect("mkdir");
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).expect("symlink");
        }
        let mut p = Projected {
            dir: dir.to_owned(),
            version: 0,
        };
        p.update(m);
        p
    }
    /// Writes `m` into a new timestamped directory and swaps `..data` to it atomically.
    fn update(&mut self, m: &Minted) {
        self.version += 1;
        let name = format!("..2026_12_02_08_00_{:02}.4242", self.version);
        let ts = self.dir.join(&name);
        std::fs::create_dir(&ts).expect("mkdir");
        std::fs::write(ts.join("tls.crt"), &m.chain_pem).expect("write");
        std::fs::write(ts.join("tls.key"), &m.key_pem).expect("write");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove old");
        }
    }
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_renewed_in_the_mounted_secret_is_used_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let vault_ca = TestCa::new("vault");
    let client_ca = TestCa::new("clients");
    let server = vault_ca.leaf(Leaf::new("spiffe://unused/x").no_uri().dns(VAULT_NAME));
    let cert = write("vault.crt", &server.chain_pem);
    let key = write("vault.key", &server.key_pem);
    let client_ca_file = write("client-ca.crt", &client_ca.cert_pem);
    let bao = Bao::start_with_listeners(Box::new(move |port| {
        format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{mtls}\"\n  tls_cert_file = \"{cert}\"\n  \
             tls_key_file = \"{key}\"\n  tls_client_ca_file = \"{client_ca_file}\"\n  \
             tls_require_and_verify_client_cert = true\n}}\n",
            mtls = port + 2,
        )
    }));
    let v = TestVault::with_bao(bao, "shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"password": "rotation-canary"}))
        .await;
    let ca = write("vault-ca.crt", &vault_ca.cert_pem);

    // Start with a certificate of a CA the listener does not trust (an expired or revoked one
    // would be refused the same way).
    let stranger = TestCa::new("stranger").leaf(Leaf::new("spiffe://cluster.local/ns/x/sa/y"));
    let mut secret = Projected::new(&dir.path().join("vault-client"), &stranger);
    let (client_cert, client_key) = (secret.path("tls.crt"), secret.path("tls.key"));
    let b = BrokerProc::start(
        &format!("https://127.0.0.1:{}", v.bao.extra_port(0)),
        &v.token("shop", "orders"),
        SECRETS,
        &[
            ("KEYWARD_VAULT_CACERT", ca.as_str()),
            ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
            ("KEYWARD_VAULT_CLIENT_CERT", client_cert.as_str()),
            ("KEYWARD_VAULT_CLIENT_KEY", client_key.as_str()),
        ],
    );
    let pid = b.pid();
    let refused = eventually(WAIT, "a failed vault.login", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "vault.login")
    })
    .await;
    assert_eq!(refused["decision"], "error", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("alert"),
        "the listener refused it: {reason}"
    );

    // cert-manager renews the Secret with a certificate of the trusted CA; kubelet swaps it in.
    secret.update(&client_ca.leaf(Leaf::new("spiffe://cluster.local/ns/shop/sa/orders")));
    eventually(WAIT, "a vault.login that succeeds", || async {
        (b.audit_count("vault.login", "ok") > 0).then_some(())
    })
    .await;
    b.wait_ready().await;
    let app = b.get("/v1/secrets/app/password").await;
    assert_eq!(app.status, 200, "{}", app.body);
    assert_eq!(app.body, "rotation-canary");
    assert_eq!(b.pid(), pid, "the same broker process");
    assert!(
        b.log().contains("vault.client_cert_file changed"),
        "the reload is logged"
    );
}
