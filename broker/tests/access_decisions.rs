//! The broker's access decisions (`broker/src/access.rs`) that its other in-memory tests left
//! unchecked (scripts/mutants.sh `access` scope): the record of a read of a key the secret does
//! not have, the record of a listing, who gets the workload identity, and which containers'
//! sockets read a secret with `allow_containers` (a certificate). In-memory sources and
//! connections, a real audit log.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keyward_audit::Caller;
use keyward_broker::config::Config;
use keyward_broker::Broker;

use keyward_broker::{IdentitySource, SvidPem};
use serde_json::json;
use support::memory::MemorySource;
use support::{fixture, get, records};
use tokio_util::sync::CancellationToken;

/// Runs the broker's loops (no socket) until the returned token is cancelled.
fn start(f: &support::Fixture) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let broker = f.broker.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move { broker.run_without_socket(s).await });
    (stop, task)
}

/// (decision, uid, reason) of each record of `action`.
fn decisions(f: &support::Fixture, action: &str) -> Vec<(String, u64, String)> {
    records(f, action)
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default().to_owned(),
                r["caller"]["uid"].as_u64().unwrap_or(u64::MAX),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_read_of_a_key_the_secret_lacks_is_refused_and_audited_as_unknown_key() {
    let app = MemorySource::new(json!({"password": "s3cret"}));
    let f = fixture(
        &["{name: app, path: memory/app}"],
        &[("app", app.dyn_source())],
    );
    let (stop, task) = start(&f);
    let first = get(&f.broker, 1000, "/v1/secrets/app?index=0&wait=20s").await;
    assert_eq!(first.status, 200, "{first:?}");
    let before = records(&f, "secret.read").len();

    let a = get(&f.broker, 1000, "/v1/secrets/app/username").await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(!a.body.contains("s3cret"), "{a:?}");
    let after: Vec<_> = decisions(&f, "secret.read").split_off(before);
    assert_eq!(
        after,
        vec![("deny".to_owned(), 1000, "unknown key".to_owned())],
        "exactly one deny record for the unknown key"
    );
    stop.cancel();
    task.await.expect("join");
}

#[tokio::test]
async fn a_listing_is_audited_with_its_caller() {
    let f = fixture(
        &["{name: app, path: memory/app, required: false}"],
        &[("app", MemorySource::new(json!({"k": "v"})).dyn_source())],
    );
    assert!(records(&f, "secret.list").is_empty());
    let a = get(&f.broker, 1234, "/v1/secrets").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("app"), "{a:?}");
    assert_eq!(
        decisions(&f, "secret.list"),
        vec![("allow".to_owned(), 1234, String::new())]
    );
}

/// A workload identity held in memory (None: not issued yet).
struct Held(Mutex<Option<SvidPem>>);

impl IdentitySource for Held {
    fn current(&self) -> Option<SvidPem> {
        self.0.lock().ok()?.as_ref().map(|s| SvidPem {
            spiffe_id: s.spiffe_id.clone(),
            chain_pem: s.chain_pem.clone(),
            key_pem: s.key_pem.clone(),
            bundle_pem: s.bundle_pem.clone(),
            expires_at: s.expires_at.clone(),
        })
    }
}

const ID: &str = "spiffe://td/ns/shop/sa/orders";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nkey-canary\n-----END PRIVATE KEY-----\n";

#[tokio::test]
async fn the_identity_goes_only_to_its_allowed_uids_and_each_outcome_is_audited() {
    let f = fixture(
        &["{name: app, path: memory/app, required: false}"],
        &[("app", MemorySource::new(json!({"k": "v"})).dyn_source())],
    );
    let held = Arc::new(Held(Mutex::new(None)));
    f.broker.set_identity_source(held.clone(), vec![1000]);

    // Not issued yet: refused (503) even to an allowed uid, and audited.
    let a = get(&f.broker, 1000, "/v1/identity").await;
    assert_eq!(a.status, 503, "{a:?}");

    *held.0.lock().expect("lock") = Some(SvidPem {
        spiffe_id: ID.into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nchain\n-----END CERTIFICATE-----\n".into(),
        key_pem: KEY.to_owned().into(),
        bundle_pem: "-----BEGIN CERTIFICATE-----\nbundle\n-----END CERTIFICATE-----\n".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
    });
    let allowed = get(&f.broker, 1000, "/v1/identity").await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.json()["private_key_pem"], KEY);
    let refused = get(&f.broker, 2000, "/v1/identity").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(!refused.body.contains("key-canary"), "{refused:?}");

    assert_eq!(
        decisions(&f, "identity.read"),
        vec![
            (
                "deny".to_owned(),
                1000,
                "certificate not issued yet".to_owned()
            ),
            ("allow".to_owned(), 1000, ID.to_owned()),
            (
                "deny".to_owned(),
                2000,
                "uid 2000 is not in identity.allow_uids (keyward.io/identity-uids)".to_owned()
            ),
        ]
    );
}

/// A broker with the sockets of the containers `app` and `web` and the secret `web` that only
/// `web`'s socket reads (as the injector writes a certificate), `db` that every socket reads.
fn per_container() -> (Broker, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let d = dir.path().display();
    let yaml = format!(
        "vault: {{addr: \"http://127.0.0.1:9\", allow_insecure_http: true}}\n\
         auth: {{role: r, token_file: {d}/token}}\n\
         secrets:\n  - {{name: web, path: memory/web, allow_containers: [web]}}\n  - {{name: db, path: memory/db}}\n\
         socket: {{path: {d}/shared.sock, containers: [{{name: app, path: {d}/app.sock}}, {{name: web, path: {d}/web.sock}}]}}\n\
         audit: {{file: {}}}\n",
        audit.display()
    );
    let config = Config::from_yaml(&yaml, &BTreeMap::<String, String>::new()).expect("config");
    let sources = [
        (
            "web",
            MemorySource::new(json!({"private_key": "key-canary"})),
        ),
        ("db", MemorySource::new(json!({"password": "pw"}))),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), s.dyn_source()))
    .collect();
    let broker = Broker::with_sources(config, sources).expect("broker");
    (broker, audit, dir)
}

/// `GET path` from uid 1000 on `container`'s socket (empty: the shared socket).
async fn get_on(broker: &Broker, container: &str, path: &str) -> support::Answer {
    let caller = Caller::from_peer(4242, 1000, 1000, "app".into(), container);
    support::get_as(broker, caller, path).await
}

#[tokio::test]
async fn a_secret_with_allowed_containers_is_served_only_on_their_sockets_and_refusals_are_audited()
{
    let (broker, audit, _dir) = per_container();
    let stop = CancellationToken::new();
    let b = broker.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move { b.run_without_socket(s).await });

    let own = get_on(&broker, "web", "/v1/secrets/web?index=0&wait=20s").await;
    assert_eq!(own.status, 200, "{own:?}");
    assert!(own.body.contains("key-canary"), "{own:?}");
    for other in ["app", ""] {
        for path in ["/v1/secrets/web", "/v1/secrets/web/private_key"] {
            let a = get_on(&broker, other, path).await;
            assert_eq!(a.status, 403, "{other:?} {path}: {a:?}");
            assert!(!a.body.contains("key-canary"), "{a:?}");
        }
        let db = get_on(&broker, other, "/v1/secrets/db?index=0&wait=20s").await;
        assert_eq!(db.status, 200, "{other:?}: {db:?}");
        let list = get_on(&broker, other, "/v1/secrets").await;
        assert!(!list.body.contains("\"web\""), "{other:?}: {list:?}");
        assert!(list.body.contains("\"db\""), "{other:?}: {list:?}");
    }
    let web_list = get_on(&broker, "web", "/v1/secrets").await;
    assert!(web_list.body.contains("\"web\""), "{web_list:?}");

    let reads: Vec<(String, String, String)> = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|r| r["action"] == "secret.read" && r["secret"] == "web")
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default().to_owned(),
                r["caller"]["container"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let app = "container app is not in the secret's allow_containers";
    let shared = "the secret is read only on its containers' sockets, not the pod's shared socket";
    assert_eq!(
        reads,
        vec![
            ("allow".to_owned(), "web".to_owned(), String::new()),
            ("deny".to_owned(), "app".to_owned(), app.to_owned()),
            ("deny".to_owned(), "app".to_owned(), app.to_owned()),
            ("deny".to_owned(), String::new(), shared.to_owned()),
            ("deny".to_owned(), String::new(), shared.to_owned()),
        ]
    );
    stop.cancel();
    task.await.expect("join");
}
