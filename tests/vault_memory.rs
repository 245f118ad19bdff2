//! What the sidecar's memory holds of a secret and of its Vault token, read the way root on
//! the node would read it (`/proc/PID/mem`), after the first fetch and after a refresh cycle
//! (a KV re-read and a token renewal), with no socket reads at all. The bounds asserted here
//! are the ones docs/threat-model.md states.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::broker::BrokerProc;
use support::procmem;
use support::tap::Tap;
use support::{eventually, TestVault};

const WAIT: Duration = Duration::from_secs(30);

/// The HTTP client (hyper) keeps, per connection to Vault, a read buffer holding the raw bytes
/// of the last answer that connection carried and a write buffer holding the head of the last
/// request (with its `X-Vault-Token` header). keyward cannot reach them; they are reused by the
/// next exchange on the connection. The broker here has two loops calling Vault (the token's
/// and the secret's), hence at most two connections.
const CONNECTIONS: usize = 2;
/// Copies of the KV value allowed outside those buffers: none (response bodies, parsed values,
/// sealed JSON and digests are all wiped).
const KV_OWN_COPIES: usize = 0;
/// Copies of the Vault token allowed outside those buffers: the one the broker holds.
const TOKEN_OWN_COPIES: usize = 1;

/// Whether the hit at `address` lies in a raw HTTP message: the text running up to it (printable
/// bytes and line ends, unbroken) is a Vault answer's JSON (`{"request_id":...`, after the
/// status line and headers) or a request head's `x-vault-token: ` header. A buffer the client
/// has freed may have its first bytes overwritten by the allocator's own bookkeeping, cutting
/// `{"request_id":` off the run: the answer envelope's own keys in their order
/// (`","lease_id":"`, then `,"renewable":`, then `,"lease_duration":`) identify it then. A copy
/// keyward made of a value (parsed data, sealed JSON) carries no envelope either way. When the
/// allocator has also split the freed buffer, see below.
fn in_http_message(pid: u32, address: u64) -> bool {
    let before = procmem::read(pid, address.saturating_sub(2048), 2048);
    let start = before
        .iter()
        .rposition(|b| !(b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n')))
        .map_or(0, |i| i + 1);
    let run = &before[start..];
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let envelope = find(run, b"\",\"lease_id\":\"").and_then(|a| {
        let rest = &run[a..];
        let b = find(rest, b",\"renewable\":")?;
        find(&rest[b..], b",\"lease_duration\":")
    });
    if run.windows(14).any(|w| w == b"{\"request_id\":")
        || envelope.is_some()
        || run.ends_with(b"x-vault-token: ")
    {
        return true;
    }
    // A freed buffer that the allocator split keeps a chunk header and list pointers in the
    // middle of the old text: short stretches of non-printable bytes between printable ones.
    // Across such stretches (fewer than 16 non-printable bytes in a row) the answer's start is
    // still there, and the hit is still inside the answer's JSON: right after the KV v2 answer's
    // `"data":{"data":{` or the login answer's `"client_token":"`. A value keyward copied sits
    // after its own chunk header, never after those keys.
    let in_answer_json =
        find(run, b"\"data\":{\"data\":{").is_some() || run.ends_with(b"\"client_token\":\"");
    let mut gapped_start = 0;
    let mut unprintable = 0;
    for (i, b) in before.iter().enumerate() {
        if b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n') {
            unprintable = 0;
        } else {
            unprintable += 1;
            if unprintable >= 16 {
                gapped_start = i + 1;
            }
        }
    }
    let gapped = &before[gapped_start..];
    in_answer_json
        && (find(gapped, b"{\"request_id\":").is_some() || find(gapped, b"\",\"lease_id").is_some())
}

/// Splits hits into (in HTTP messages, elsewhere), describing the latter.
fn classify(pid: u32, hits: &[procmem::Hit]) -> (usize, Vec<String>) {
    let mut http = 0;
    let mut own = Vec::new();
    for h in hits {
        if in_http_message(pid, h.address) {
            http += 1;
        } else {
            own.push(format!(
                "{:#x} {} [{}]",
                h.address,
                h.mapping,
                procmem::printable(&procmem::read(pid, h.address.saturating_sub(96), 160))
            ));
        }
    }
    (http, own)
}

/// The string value of `"key":"..."` at its first occurrence in `text`.
fn json_string_after(text: &str, key: &str) -> String {
    let needle = format!("\"{key}\":\"");
    let start = text
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in what Vault sent"))
        + needle.len();
    text[start..]
        .split('"')
        .next()
        .expect("string value")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_token_plaintext_in_sidecar_memory_stays_within_the_documented_bound() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "reading another process's memory needs root"
    );
    // A short token TTL so that a renewal happens within the test.
    let v = TestVault::start("shop", "orders", "6s", "1h").await;
    let canary = format!("kwcanary-{:032x}", rand::random::<u128>());
    // A value longer than a first allocation, so growing buffers would leave copies behind.
    let value = format!("{canary}{}", "-".repeat(3000));
    v.bao.kv_put("app", json!({"password": value})).await;
    // The real OpenBao, behind a wiretap that shows the test which token it issued.
    let tap = Tap::start(SocketAddr::from(([127, 0, 0, 1], v.bao.port())), None).await;
    let b = BrokerProc::start(
        &tap.http_url(),
        &v.token("shop", "orders"),
        "kv_refresh: 1s\nsecrets:\n  - {name: app, path: secret/data/app}\n",
        &[],
    );
    let fetched = |n: usize| {
        let b = &b;
        async move {
            // Counted in the log: a re-read returning the same version is routine, summarised
            // in the audit log per interval rather than recorded each time.
            eventually(WAIT, &format!("{n} KV fetches"), || async {
                (b.log().matches("Fetched secret").count() >= n).then_some(())
            })
            .await
        }
    };
    fetched(1).await;
    let sent = tap.server_text();
    let token = json_string_after(&sent, "client_token");
    let accessor = json_string_after(&sent, "accessor");
    assert!(sent.contains(&canary), "the tap saw the KV answer");
    let pid = b.pid();

    let check = |when: &str| {
        // Stopped, so the scan and the look at each hit see the same memory.
        let target = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let scan = procmem::scan(
            pid,
            &[canary.as_bytes(), token.as_bytes(), accessor.as_bytes()],
        );
        let (kv_http, kv_own) = classify(pid, &scan.hits[0]);
        let (token_http, token_own) = classify(pid, &scan.hits[1]);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        eprintln!(
            "{when}: read {} MiB; KV value: {kv_http} in HTTP buffers, {} elsewhere {kv_own:?}; \
             token: {token_http} in HTTP buffers, {} elsewhere {token_own:?}; accessor x{}",
            scan.bytes_read >> 20,
            kv_own.len(),
            token_own.len(),
            scan.count(2),
        );
        // The scan sees keyward's own heap: the accessor is held in plaintext by design.
        assert!(
            scan.count(2) >= 1,
            "{when}: the scan must find the accessor the broker holds"
        );
        assert!(
            kv_own.len() == KV_OWN_COPIES,
            "{when}: copies of the KV value outside the HTTP client's buffers: {kv_own:?}"
        );
        assert!(
            kv_http <= CONNECTIONS,
            "{when}: {kv_http} copies of the KV value in HTTP buffers"
        );
        assert!(
            token_own.len() <= TOKEN_OWN_COPIES,
            "{when}: copies of the Vault token outside the HTTP client's buffers: {token_own:?}"
        );
        // Per connection: the last request head sent and the last answer read.
        assert!(
            token_http <= 2 * CONNECTIONS,
            "{when}: {token_http} copies of the Vault token in HTTP buffers"
        );
    };
    check("after the first fetch");

    // A refresh cycle: the token renewed (at about 2/3 of 6s) and the KV value re-read since.
    eventually(WAIT, "a token renewal", || async {
        (b.audit_count("vault.renew", "ok") >= 1).then_some(())
    })
    .await;
    let after_renewal = b.log().matches("Fetched secret").count();
    fetched(after_renewal + 1).await;
    check("after a token renewal and a KV re-read");
    assert_eq!(
        b.audit_count("secret.read", "allow"),
        0,
        "no socket reads happened"
    );
}
