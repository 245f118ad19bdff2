//! The secret lifecycle end to end on in-memory sources (`support::memory`), served over
//! in-memory connections (`Broker::serve_connection` on `tokio::io::duplex`): a successful
//! read, a lease renewal, a new version waking a long-poll, and the revocation at shutdown,
//! each checked in the audit log. No Vault, no socket: the cheap tier below the OpenBao tests
//! in the top-level `tests/`.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;
use support::memory::MemorySource;
use support::{audited, fixture, get, records, rfc3339};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// Runs the broker's loops (no socket) until the returned token is cancelled.
fn start(f: &support::Fixture) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let broker = f.broker.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move { broker.run_without_socket(s).await });
    (stop, task)
}

/// The first value, once fetched: a long-poll on index 0 answers as soon as version 1 is held.
async fn first_value(f: &support::Fixture, name: &str) -> support::Answer {
    let a = get(
        &f.broker,
        1000,
        &format!("/v1/secrets/{name}?index=0&wait=20s"),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    a
}

#[tokio::test]
async fn a_fetched_secret_is_served_as_json_and_as_one_raw_key_and_each_read_is_audited() {
    let app = MemorySource::new(json!({"password": "s3cret", "port": 5432}));
    let f = fixture(
        &["{name: app, path: memory/app}"],
        &[("app", app.dyn_source())],
    );
    let (stop, task) = start(&f);

    let a = first_value(&f, "app").await;
    let j = a.json();
    assert_eq!(j["name"], "app");
    assert_eq!(j["data"], json!({"password": "s3cret", "port": 5432}));
    assert_eq!(j["version"], 1);
    assert_eq!(j["lease_expires_at"], serde_json::Value::Null);
    assert_eq!(a.header("x-keyward-version"), Some("1"));
    assert_eq!(a.header("cache-control"), Some("no-store"));

    let raw = get(&f.broker, 1000, "/v1/secrets/app/password").await;
    assert_eq!((raw.status, raw.body.as_str()), (200, "s3cret"));
    assert!(raw
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let port = get(&f.broker, 1000, "/v1/secrets/app/port").await;
    assert_eq!(
        (port.status, port.body.as_str()),
        (200, "5432"),
        "non-strings as JSON"
    );

    let fetch = &records(&f, "memory.fetch")[0];
    assert_eq!(
        (&fetch["decision"], &fetch["secret"], &fetch["version"]),
        (&json!("ok"), &json!("app"), &json!(1))
    );
    assert_eq!(fetch["path"], "memory/app");
    let reads = records(&f, "secret.read");
    let summary: Vec<_> = reads
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default(),
                r["caller"]["uid"].as_u64().unwrap_or_default(),
                r["version"].as_u64().unwrap_or_default(),
                r["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("allow", 1000, 1, ""),
            ("allow", 1000, 1, "key password"),
            ("allow", 1000, 1, "key port"),
        ],
        "{reads:#?}"
    );
    let text = std::fs::read_to_string(&f.audit).expect("audit log");
    assert!(
        !text.contains("s3cret"),
        "the audit log never holds a value"
    );

    stop.cancel();
    task.await.expect("the broker stops");
}

#[tokio::test]
async fn a_lease_is_renewed_before_it_ends_and_the_renewed_ttl_runs_from_the_renewal() {
    let ttl = Duration::from_secs(3);
    let creds =
        MemorySource::new(json!({"username": "u1", "password": "p1"})).with_lease(ttl, true);
    let f = fixture(
        &["{name: creds, path: memory/creds}"],
        &[("creds", creds.dyn_source())],
    );
    let (stop, task) = start(&f);

    let first = first_value(&f, "creds").await;
    assert_eq!(first.json()["renewable"], true);
    let first_end = rfc3339(
        first.json()["lease_expires_at"]
            .as_str()
            .expect("a lease end"),
    );

    // The lifecycle renews at about 2/3 of the 3 s: the record is written once the cache holds
    // the renewed lease.
    let rec = audited(&f, "memory.lease_renew", DEADLINE, |r| {
        r["decision"] == "ok"
    })
    .await;
    assert_eq!(
        (&rec["secret"], &rec["version"]),
        (&json!("creds"), &json!(1))
    );
    let renewal = creds.read(|s| s.renewals[0].clone());
    assert_eq!(renewal.lease_id, "memory/lease/1");
    assert_eq!(
        renewal.asked, ttl,
        "each renewal asks for the lease's duration"
    );
    assert!(
        renewal.at < first_end,
        "renewed before the lease ended: {renewal:?}"
    );
    let fetch = &records(&f, "memory.fetch")[0];
    assert_eq!(
        rec["lease_hmac"], fetch["lease_hmac"],
        "the same lease, by its HMAC"
    );
    assert!(rec["lease_hmac"]
        .as_str()
        .is_some_and(|h| !h.contains("memory/lease")));

    let now = get(&f.broker, 1000, "/v1/secrets/creds").await;
    let j = now.json();
    assert_eq!(j["version"], 1, "a renewal is not a new version");
    assert_eq!(j["data"]["password"], "p1");
    let renewed_end = rfc3339(j["lease_expires_at"].as_str().expect("a lease end"));
    assert!(
        renewed_end > first_end,
        "{renewed_end:?} after {first_end:?}"
    );
    // The new end is the grant counted from when the renewal was answered (a later renewal
    // may already have moved it on by the time it is read).
    let latest = creds.read(|s| s.renewals.last().cloned().expect("a renewal"));
    let expected = latest.at + latest.granted;
    let off = renewed_end
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_millis(500),
        "lease end {renewed_end:?}, expected {expected:?}"
    );
    assert_eq!(creds.read(|s| s.fetches), 1, "renewed, not fetched again");

    stop.cancel();
    task.await.expect("the broker stops");
}

#[tokio::test]
async fn a_new_version_wakes_a_long_poll_on_the_previous_one() {
    let app = MemorySource::new(json!({"password": "v1"}));
    let f = fixture(
        &["{name: app, path: memory/app}"],
        &[("app", app.dyn_source())],
    );
    let (stop, task) = start(&f);
    assert_eq!(first_value(&f, "app").await.json()["version"], 1);

    let broker = f.broker.clone();
    let started = SystemTime::now();
    let poll =
        tokio::spawn(async move { get(&broker, 1000, "/v1/secrets/app?index=1&wait=25s").await });
    // A re-read that finds the same version does not answer the long-poll...
    app.wait_until("a re-read", DEADLINE, |s| s.fetches >= 2)
        .await;
    let reread = audited(&f, "memory.fetch", DEADLINE, |r| {
        r["vault_request_id"] == "memory-2"
    })
    .await;
    assert_eq!(reread["version"], 1);
    assert!(!poll.is_finished(), "answered without a new version");
    // ...a new version does, at the next re-read.
    app.set(json!({"password": "v2"}));
    let a = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("the long-poll answers")
        .expect("no panic");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (&a.json()["version"], &a.json()["data"]["password"]),
        (&json!(2), &json!("v2"))
    );
    assert!(
        started.elapsed().unwrap_or_default() < Duration::from_secs(20),
        "woken, not timed out"
    );

    let reads = records(&f, "secret.read");
    let last = reads.last().expect("a read record");
    assert_eq!(
        (&last["decision"], &last["version"]),
        (&json!("allow"), &json!(2))
    );
    assert!(records(&f, "memory.fetch")
        .iter()
        .any(|r| r["version"] == 2));

    stop.cancel();
    task.await.expect("the broker stops");
}

#[tokio::test]
async fn shutdown_revokes_the_held_lease_through_its_source_and_audits_it() {
    let creds =
        MemorySource::new(json!({"password": "p1"})).with_lease(Duration::from_secs(600), true);
    let app = MemorySource::new(json!({"password": "kv"}));
    let f = fixture(
        &[
            "{name: creds, path: memory/creds}",
            "{name: app, path: memory/app}",
        ],
        &[("creds", creds.dyn_source()), ("app", app.dyn_source())],
    );
    let (stop, task) = start(&f);
    first_value(&f, "creds").await;
    first_value(&f, "app").await;
    assert!(creds.read(|s| s.revoked.is_empty()));

    stop.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the broker stops")
        .expect("no panic");

    assert_eq!(creds.read(|s| s.revoked.clone()), ["memory/lease/1"]);
    assert!(
        app.read(|s| s.revoked.is_empty()),
        "no lease, nothing to revoke"
    );
    let revokes = records(&f, "memory.revoke");
    assert_eq!(revokes.len(), 1, "{revokes:#?}");
    let fetch = &records(&f, "memory.fetch")
        .into_iter()
        .find(|r| r["secret"] == "creds")
        .expect("the fetch of creds");
    assert_eq!(
        (
            &revokes[0]["decision"],
            &revokes[0]["secret"],
            &revokes[0]["lease_hmac"]
        ),
        (&json!("ok"), &json!("creds"), &fetch["lease_hmac"])
    );
    // The lease is gone: the value is no longer served.
    let a = get(&f.broker, 1000, "/v1/secrets/creds").await;
    assert_eq!(a.status, 503, "{a:?}");
}
