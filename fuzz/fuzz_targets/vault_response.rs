//! Vault's answers: `keyward_broker::fuzzing` runs the broker's own decoding (the bounded body,
//! the status, the JSON envelope, then the KV v2 or leased read, the login, or the renewal) on
//! arbitrary bytes. Vault is a remote peer: a compromised, misconfigured or impersonated one
//! (or one behind a broken proxy) must not crash the broker or make it leak a secret.
//!
//! Input: byte 0 picks the call (KV v2 read of `secret/data/app`, leased read of
//! `database/creds/app`, KV v1 read of `kv/app`, login, renewal), byte 1 the HTTP status, the
//! rest is the body.
//!
//! Oracle:
//! - never panics, and a TTL the broker keeps can be added to the clocks it is added to
//!   (`SystemTime::now() + ttl` for a lease, `TokenState::expires_at` for a token);
//! - bounded memory: a body over the limit is refused as `TooLarge` before it is parsed;
//! - an answer that is accepted has the fields the body holds (re-read here with
//!   `serde_json::Value`): the KV v2 inner `data` and `metadata.version`, or the whole `data`;
//!   the lease id, renewable flag and TTL; the login's token, accessor and TTL; an error status
//!   is never accepted, a success with no usable data never served;
//! - no secret in errors or `Debug`: when the body is JSON, every string under `data`, the
//!   `lease_id` and `auth.client_token` are replaced by a canary and the answer is decoded
//!   again; the canary must appear in no error's `Display`/`Debug` and in no `Debug` of what
//!   was accepted.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use keyward_broker::fuzzing::{self, MAX_LEASE_DURATION};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CANARY: &str = "kwCanary-6f1d0e9a";
/// `vault.max_response_bytes`' smallest value: the fuzzer reaches the limit easily.
const LIMIT: usize = 4 << 10;

const STATUSES: [u16; 12] = [200, 204, 400, 403, 404, 412, 429, 500, 503, 307, 299, 42];

#[derive(Clone, Copy, Debug)]
enum Call {
    Read(&'static str, bool),
    Login,
    Renewal,
}

fn call_of(b: u8) -> Call {
    match b % 5 {
        0 => Call::Read("secret/data/app", true),
        1 => Call::Read("database/creds/app", false),
        2 => Call::Read("kv/app", false),
        3 => Call::Login,
        _ => Call::Renewal,
    }
}

/// What the broker keeps of a granted TTL.
fn expected_ttl(seconds: Option<u64>) -> Duration {
    Duration::from_secs(seconds.unwrap_or(0)).min(MAX_LEASE_DURATION)
}

/// Runs one call; returns the texts (errors' `Display`/`Debug`, accepted values' `Debug`) for
/// the canary check.
fn run(call: Call, status: u16, body: &[u8]) -> Vec<String> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let success = (200..300).contains(&status) && reqwest_status_ok(status);
    let mut texts = Vec::new();
    match call {
        Call::Read(path, kv) => match fuzzing::read_answer(path, status, body, LIMIT) {
            Err(e) => {
                texts.push(e.to_string());
                texts.push(format!("{e:?}"));
                assert!(!e.to_string().is_empty());
            }
            Ok(fetched) => {
                assert!(success, "status {status} accepted for a read");
                assert!(body.len() <= LIMIT, "a body over the limit was accepted");
                texts.push(format!("{fetched:?}"));
                if let Some(l) = &fetched.lease {
                    // What the broker does with it (refresh.rs): the lease's end.
                    assert!(
                        SystemTime::now().checked_add(l.ttl).is_some(),
                        "a lease of {:?} cannot be added to the clock",
                        l.ttl
                    );
                }
                // serde skips ignored members without checking their escapes: a body that
                // `Value` refuses can still be accepted; the cross-check needs valid JSON.
                let Some(v) = json else { return texts };
                let data = &v["data"];
                let kv_shaped = data.get("data").is_some() && data["metadata"].is_object();
                let (want, version) = if kv && kv_shaped {
                    (&data["data"], data["metadata"]["version"].as_u64())
                } else {
                    (data, None)
                };
                assert_eq!(
                    Some(fetched.data()),
                    want.as_object(),
                    "{path}: served data is not the answer's"
                );
                assert_eq!(fetched.version, version, "{path}: version");
                assert_eq!(
                    fetched.request_id,
                    v["request_id"].as_str().unwrap_or(""),
                    "request_id"
                );
                let lease_id = v["lease_id"].as_str().filter(|s| !s.is_empty());
                match (&fetched.lease, lease_id) {
                    (None, None) => {}
                    (Some(l), Some(id)) => {
                        assert_eq!(l.id.expose(), id, "lease id");
                        let (ttl, renewable) = match v.get("auth").filter(|a| !a.is_null()) {
                            Some(a) => (a["lease_duration"].as_u64(), a["renewable"].as_bool()),
                            None => (v["lease_duration"].as_u64(), v["renewable"].as_bool()),
                        };
                        assert_eq!(l.ttl, expected_ttl(ttl), "lease ttl");
                        assert_eq!(l.renewable, renewable.unwrap_or(false), "renewable");
                    }
                    (l, id) => panic!("lease {l:?} for lease_id {id:?}"),
                }
            }
        },
        Call::Login => match fuzzing::login_answer(status, body, LIMIT) {
            Err(e) => {
                texts.push(e.to_string());
                texts.push(format!("{e:?}"));
            }
            Ok((token, accessor)) => {
                assert!(success, "status {status} accepted for a login");
                texts.push(format!("{token:?}"));
                // What the auth loop does with it (refresh.rs).
                let _ = token.expires_at().saturating_duration_since(Instant::now());
                let Some(v) = json else { return texts };
                let auth = &v["auth"];
                let client_token = auth["client_token"].as_str().expect("a client_token");
                assert!(!client_token.is_empty(), "an empty token was accepted");
                assert_eq!(fuzzing::token_bytes(&token), client_token.as_bytes());
                assert_eq!(accessor, auth["accessor"].as_str().unwrap_or(""));
                assert_eq!(token.accessor, accessor);
                assert_eq!(
                    token.ttl,
                    expected_ttl(auth["lease_duration"].as_u64()).max(Duration::from_secs(1))
                );
                assert_eq!(
                    token.renewable,
                    auth["renewable"].as_bool().unwrap_or(false)
                );
            }
        },
        Call::Renewal => match fuzzing::renewal_answer(status, body, LIMIT) {
            Err(e) => {
                texts.push(e.to_string());
                texts.push(format!("{e:?}"));
            }
            Ok(resp) => {
                assert!(success, "status {status} accepted for a renewal");
                texts.push(format!("{resp:?}"));
                assert!(SystemTime::now().checked_add(resp.lease_duration).is_some());
                assert!(Instant::now().checked_add(resp.lease_duration).is_some());
                if body.is_empty() {
                    assert_eq!(resp.lease_duration, Duration::ZERO);
                } else {
                    let Some(v) = json else { return texts };
                    let secs = match v.get("auth").filter(|a| !a.is_null()) {
                        Some(a) => a["lease_duration"].as_u64(),
                        None => v["lease_duration"].as_u64(),
                    };
                    assert_eq!(resp.lease_duration, expected_ttl(secs));
                }
            }
        },
    }
    texts
}

/// Whether hyper would hand the broker this status at all.
fn reqwest_status_ok(status: u16) -> bool {
    (100..=999).contains(&status)
}

/// Every string under `v` becomes the canary.
fn plant(v: &mut Value) {
    match v {
        Value::String(s) => *s = CANARY.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(plant),
        Value::Object(o) => o.values_mut().for_each(plant),
        _ => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let [c, s, body @ ..] = input else {
        return;
    };
    let call = call_of(*c);
    let status = STATUSES[usize::from(*s) % STATUSES.len()];
    run(call, status, body);

    // The same answer with a canary in every secret place.
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    if body.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()) {
        return;
    }
    if let Some(d) = top.get_mut("data") {
        plant(d);
    }
    if let Some(Value::String(id)) = top.get_mut("lease_id") {
        *id = CANARY.to_owned();
    }
    if let Some(Value::String(t)) = top.get_mut("auth").and_then(|a| a.get_mut("client_token")) {
        *t = CANARY.to_owned();
    }
    let planted = serde_json::to_vec(&Value::Object(top)).expect("a Value serializes");
    for text in run(call, status, &planted) {
        assert!(
            !text.contains(CANARY),
            "{call:?} {status}: a secret value appears in: {text}"
        );
    }
});
