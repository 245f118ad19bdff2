//! Claim: every access through the socket is audited, whatever the path it takes (docs/audit.md,
//! docs/threat-model.md). Each request below is checked against exactly the access records
//! (`secret.*`, `identity.*`) it added to the log: one record, of its action, secret, decision
//! and reason. Background records (`vault.*`, `svid.*`) are not access records, so no other
//! traffic can stand in for a missing one.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::broker::{get, parse, Answer};
use support::pki::{Pki, Sidecar, SidecarSpec};
use support::TestVault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRETS: &str = "secrets:
  - {name: plain, path: secret/data/app}
  - {name: raw, path: secret/data/app}
  - {name: polled, path: secret/data/app}
  - {name: locked, path: secret/data/app, allow_uids: [4242]}
  - {name: missing, path: secret/data/missing, required: false}
kv_refresh: 1s
";

/// One expected access record: action, secret, decision, and a text its reason contains
/// (None: no reason).
type Want = (
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

fn access_records(s: &Sidecar) -> Vec<Value> {
    s.audit_records()
        .into_iter()
        .filter(|r| {
            let a = r["action"].as_str().unwrap_or_default();
            a.starts_with("secret.") || a.starts_with("identity.")
        })
        .collect()
}

/// Asserts that the access records after the first `before` are exactly `want`, in order;
/// returns them.
#[track_caller]
fn assert_new_records(s: &Sidecar, before: usize, what: &str, want: &[Want]) -> Vec<Value> {
    let all = access_records(s);
    let new = all[before.min(all.len())..].to_vec();
    assert_eq!(
        new.len(),
        want.len(),
        "{what}: {} new access records, expected {}: {new:#?}",
        new.len(),
        want.len()
    );
    for (r, (action, secret, decision, reason)) in new.iter().zip(want) {
        assert_eq!(r["action"], *action, "{what}: {r}");
        assert_eq!(r["secret"].as_str(), *secret, "{what}: {r}");
        assert_eq!(r["decision"], *decision, "{what}: {r}");
        match reason {
            None => assert!(r["reason"].is_null(), "{what}: no reason expected: {r}"),
            Some(text) => assert!(
                r["reason"].as_str().is_some_and(|got| got.contains(text)),
                "{what}: reason should contain {text:?}: {r}"
            ),
        }
        assert_eq!(
            r["caller"]["uid"],
            nix::unistd::getuid().as_raw(),
            "{what}: the caller is recorded: {r}"
        );
    }
    new
}

/// GETs `path`, checks its status and that it added exactly `want` to the log.
async fn request(s: &Sidecar, path: &str, status: u16, want: &[Want]) -> (Answer, Vec<Value>) {
    let before = access_records(s).len();
    let a = get(&s.socket, path).await;
    assert_eq!(a.status, status, "{path}: {}", a.body);
    let new = assert_new_records(s, before, path, want);
    (a, new)
}

async fn sidecar(v: &TestVault, identity_uids: &str) -> Sidecar {
    let mut s = Sidecar::start(
        &v.bao.addr(),
        SidecarSpec {
            identity_uids,
            extra: SECRETS,
            ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
        },
    );
    s.wait_ready().await;
    s
}

#[tokio::test]
async fn every_socket_access_path_leaves_exactly_its_own_audit_record() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    v.bao.kv_put("app", json!({"password": "v1"})).await;
    let me = format!("[{}]", nix::unistd::getuid().as_raw());
    let s = sidecar(&v, &me).await;

    // Served: a JSON read, a raw key read, the list, the identity.
    let (a, r) = request(
        &s,
        "/v1/secrets/plain",
        200,
        &[("secret.read", Some("plain"), "allow", None)],
    )
    .await;
    assert_eq!(a.json()["version"], r[0]["version"]);
    request(
        &s,
        "/v1/secrets/raw/password",
        200,
        &[("secret.read", Some("raw"), "allow", Some("key password"))],
    )
    .await;
    request(
        &s,
        "/v1/secrets",
        200,
        &[("secret.list", None, "allow", None)],
    )
    .await;
    request(
        &s,
        "/v1/identity",
        200,
        &[(
            "identity.read",
            None,
            "allow",
            Some("spiffe://cluster.local/ns/shop/sa/orders"),
        )],
    )
    .await;

    // Long-polls: answered at once (the version is past the index), at the wait's end (it is
    // not), and woken by a new version while parked.
    request(
        &s,
        "/v1/secrets/polled?index=0&wait=30s",
        200,
        &[("secret.read", Some("polled"), "allow", None)],
    )
    .await;
    request(
        &s,
        "/v1/secrets/polled?index=1&wait=200ms",
        200,
        &[("secret.read", Some("polled"), "allow", None)],
    )
    .await;
    let before = access_records(&s).len();
    // The request is on the socket before the new version is written.
    let mut parked = tokio::net::UnixStream::connect(&s.socket)
        .await
        .expect("connect");
    parked
        .write_all(b"GET /v1/secrets/polled?index=1&wait=60s HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the long-poll");
    v.bao.kv_put("app", json!({"password": "v2"})).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), parked.read_to_end(&mut buf))
        .await
        .expect("the long-poll woke within 30 s")
        .expect("read the long-poll's answer");
    let a = parse(&buf);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["version"], 2, "woken by version 2: {}", a.body);
    let r = assert_new_records(
        &s,
        before,
        "the woken long-poll",
        &[("secret.read", Some("polled"), "allow", None)],
    );
    assert_eq!(r[0]["version"], 2);

    // Denied, each with its record: another uid's secret (JSON, raw key, long-poll), an
    // unknown secret, an unknown key, a secret not fetched.
    for path in [
        "/v1/secrets/locked",
        "/v1/secrets/locked/password",
        "/v1/secrets/locked?index=0&wait=1s",
    ] {
        request(
            &s,
            path,
            403,
            &[("secret.read", Some("locked"), "deny", Some("allow list"))],
        )
        .await;
    }
    request(
        &s,
        "/v1/secrets/nope",
        404,
        &[("secret.read", Some("nope"), "deny", Some("unknown secret"))],
    )
    .await;
    request(
        &s,
        "/v1/secrets/plain/nokey",
        404,
        &[("secret.read", Some("plain"), "deny", Some("unknown key"))],
    )
    .await;
    for path in [
        "/v1/secrets/missing",
        "/v1/secrets/missing/password",
        "/v1/secrets/missing?index=0&wait=1s",
    ] {
        request(
            &s,
            path,
            503,
            &[("secret.read", Some("missing"), "deny", Some("not fetched"))],
        )
        .await;
    }
    // Refused before any secret is looked up (not an access): no record.
    request(&s, "/v1/secrets/..%2fetc", 400, &[]).await;
    support::assert_no_panic("the sidecar", &s.log());

    // The identity denied to a uid not in identity.allow_uids.
    let other = sidecar(&v, "[4242]").await;
    let (a, _) = request(
        &other,
        "/v1/identity",
        403,
        &[("identity.read", None, "deny", Some("identity.allow_uids"))],
    )
    .await;
    assert!(!a.body.contains("PRIVATE KEY"), "{}", a.body);
    support::assert_no_panic("the sidecar", &other.log());
}
