//! The broker's access decisions (`broker/src/access.rs`) that its other in-memory tests left
//! unchecked (scripts/mutants.sh `access` scope): the record of a read of a key the secret does
//! not have, the record of a listing, and who gets the workload identity. In-memory sources and
//! connections, a real audit log.

mod support;

use std::sync::{Arc, Mutex};

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
