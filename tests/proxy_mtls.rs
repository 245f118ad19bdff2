//! `keyward sidecar` against a real OpenBao PKI: two workloads with different service
//! accounts talking through outbound → inbound, denials of every broken certificate, policy
//! revocation, and rotation of 30 s certificates under traffic.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::pki::{echo_app, raw_mtls, Pki, Sidecar, SidecarSpec, TD};
use support::testpki::{Leaf, TestCa};
use support::TestVault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";

struct Mesh {
    vault: TestVault,
    pki: Pki,
    app: SocketAddr,
    orders: Sidecar,
    frontend: Sidecar,
    inbound: SocketAddr,
    outbound: SocketAddr,
    /// An rcgen CA that the orders sidecar also trusts, to mint broken certificates with.
    test_ca: TestCa,
}

fn policy(allow: &[&str], port: u16) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "inbound:\n  - port: {port}\n    allow: [{}]\n",
        list.join(", ")
    )
}

async fn mesh(ttl: &str) -> Mesh {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let test_ca = TestCa::new("rogue");
    let inbound: SocketAddr = support::pki::loopback_addr();
    let outbound: SocketAddr = support::pki::loopback_addr();
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            ttl,
            bundle: Some(format!("{}\n{}", pki.root_pem, test_ca.cert_pem)),
            policy: Some(policy(&[FRONTEND], inbound.port())),
            inbound: format!("[{{listen: \"{inbound}\", forward: \"{app}\"}}]"),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    let mut frontend = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            ttl,
            outbound: format!(
                "[{{listen: \"{outbound}\", upstream: \"localhost:{}\", expect: [\"{ORDERS}\"]}}]",
                inbound.port()
            ),
            ..SidecarSpec::new("shop", "frontend", vault.token("shop", "frontend"))
        },
    );
    orders.wait_ready().await;
    frontend.wait_ready().await;
    Mesh {
        vault,
        pki,
        app,
        orders,
        frontend,
        inbound,
        outbound,
        test_ca,
    }
}

/// Writes `data`, half-closes, reads everything back.
async fn roundtrip<S>(s: S, data: Vec<u8>) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut back = Vec::with_capacity(1 << 20);
    r.read_to_end(&mut back).await?;
    writer.await.expect("join")?;
    Ok(back)
}

/// Polls the audit log of `s` until a record satisfies `f`.
async fn wait_audit(
    s: &Sidecar,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    support::eventually(Duration::from_secs(10), what, || {
        let found = s.audit_records().into_iter().find(|r| f(r));
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workloads_byte_exact_and_every_bad_caller_denied() {
    let m = mesh("1h").await;
    let _ = &m.app;

    // Both sidecars hold an SVID for the identity in their token, issued by OpenBao.
    for (s, id) in [(&m.orders, ORDERS), (&m.frontend, FRONTEND)] {
        let r = wait_audit(s, "svid.issue", |r| r["action"] == "svid.issue").await;
        assert_eq!(r["decision"], "ok");
        assert_eq!(r["path"], "pki_int/sign/spiffe");
        assert!(
            r["reason"].as_str().unwrap_or_default().starts_with(id),
            "{r}"
        );
        assert!(s.metric("keyward_svid_expiry_timestamp_seconds").await > 1e9);
    }

    // 64 MiB through frontend's outbound → orders' inbound → echo, and back, byte-exact,
    // with the client's half-close passed through and the app's reply after it.
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let s = TcpStream::connect(m.outbound)
        .await
        .expect("connect outbound");
    let start = Instant::now();
    let back = roundtrip(s, data.clone()).await.expect("64 MiB roundtrip");
    eprintln!("64 MiB echoed in {:?}", start.elapsed());
    assert_eq!(back.len(), data.len() + 3);
    assert!(back[..data.len()] == data[..], "payload differs");
    assert_eq!(&back[data.len()..], b"bye");
    let r = wait_audit(&m.orders, "inbound allow", |r| {
        r["action"] == "conn.inbound" && r["decision"] == "allow"
    })
    .await;
    assert_eq!(r["peer"]["spiffe_id"], FRONTEND);
    assert_eq!(r["port"], m.inbound.port());
    let r = wait_audit(&m.frontend, "outbound allow", |r| {
        r["action"] == "conn.outbound" && r["decision"] == "allow"
    })
    .await;
    assert_eq!(r["peer"]["spiffe_id"], ORDERS);

    // A caller with a valid OpenBao SVID that is not on the list.
    let intruder = "spiffe://cluster.local/ns/shop/sa/intruder";
    let (chain, key) = m.pki.issue(&m.vault.bao, intruder, "1h").await;
    let s = raw_mtls(m.inbound, Some((&chain, &key)))
        .await
        .expect("handshake");
    let err = roundtrip(s, b"hello".to_vec()).await.expect_err("denied");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let r = wait_audit(&m.orders, "intruder denied", |r| {
        r["peer"]["spiffe_id"] == intruder
    })
    .await;
    assert_eq!(r["decision"], "deny");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not allowed"),
        "{r}"
    );

    // Certificates breaking the SVID rules, minted with rcgen by a CA the sidecar trusts.
    let unknown = TestCa::new("unknown");
    let cases: Vec<(&str, support::testpki::Minted, &str)> = vec![
        (
            "two URI SANs",
            m.test_ca.leaf(Leaf::new(FRONTEND).extra_uri(ORDERS)),
            "exactly one URI SAN, found 2",
        ),
        (
            "CA:true leaf",
            m.test_ca.leaf(Leaf::new(FRONTEND).ca()),
            "is a CA",
        ),
        (
            "other trust domain",
            m.test_ca
                .leaf(Leaf::new("spiffe://evil.local/ns/shop/sa/frontend")),
            "not in trust domain cluster.local",
        ),
        (
            "expired",
            m.test_ca.leaf(Leaf::new(FRONTEND).expired()),
            "expired",
        ),
        (
            "unknown CA",
            unknown.leaf(Leaf::new(FRONTEND)),
            "unknown CA",
        ),
    ];
    for (what, cert, reason) in &cases {
        let before = m.orders.audit_records().len();
        let outcome = match raw_mtls(m.inbound, Some((&cert.chain_pem, &cert.key_pem))).await {
            Ok(s) => roundtrip(s, b"hello".to_vec()).await,
            Err(e) => Err(e),
        };
        assert!(outcome.is_err(), "{what}: not refused: {outcome:?}");
        let r = wait_audit(&m.orders, what, |r| {
            r["seq"].as_u64().unwrap_or(0) as usize > before && r["action"] == "conn.inbound"
        })
        .await;
        assert_eq!(r["decision"], "deny", "{what}");
        let got = r["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{what}: want {reason:?} in {got:?}");
    }

    // No client certificate, and plain TCP.
    let before = m.orders.audit_records().len();
    let outcome = match raw_mtls(m.inbound, None).await {
        Ok(s) => roundtrip(s, b"hello".to_vec()).await,
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "no cert: {outcome:?}");
    let r = wait_audit(&m.orders, "no cert", |r| {
        r["seq"].as_u64().unwrap_or(0) as usize > before
    })
    .await;
    assert_eq!(r["decision"], "deny");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no client certificate"),
        "{r}"
    );

    let before = m.orders.audit_records().len();
    let mut tcp = TcpStream::connect(m.inbound).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "app reached in plaintext"
    );
    let r = wait_audit(&m.orders, "plain TCP", |r| {
        r["seq"].as_u64().unwrap_or(0) as usize > before
    })
    .await;
    assert_eq!(r["decision"], "deny");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a TLS"),
        "{r}"
    );

    // Metrics count it all.
    assert!(
        m.orders
            .metric("keyward_proxy_authz_total{direction=\"inbound\"")
            .await
            >= 2.0
    );
    assert!(
        m.orders
            .metric("keyward_proxy_handshake_failures_total")
            .await
            >= 6.0
    );
    assert!(m.orders.metric("keyward_proxy_bytes_total").await >= (128u64 << 20) as f64);
    assert!(m.orders.metric("keyward_vault_logged_in").await >= 1.0);

    // The audit log is an intact chain.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["audit", "verify"])
        .arg(&m.orders.audit)
        .output()
        .expect("keyward audit verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_revoke_closes_connection_and_invalid_policy_keeps_the_old() {
    let mut m = mesh("1h").await;
    let s = TcpStream::connect(m.outbound).await.expect("connect");
    let (mut r, mut w) = tokio::io::split(s);
    let mut b = [0u8; 4];
    w.write_all(b"ping").await.expect("write");
    r.read_exact(&mut b).await.expect("echo");

    // An invalid file is refused, counted, and changes nothing.
    m.orders
        .set_policy("inbound: [{port: 1, allow: [\"spiffe://other/x\"]}]");
    support::eventually(Duration::from_secs(5), "policy error counted", || async {
        (m.orders.metric("keyward_proxy_policy_errors_total").await >= 1.0).then_some(())
    })
    .await;
    w.write_all(b"pong").await.expect("write");
    r.read_exact(&mut b).await.expect("still allowed");
    let s2 = TcpStream::connect(m.outbound).await.expect("connect");
    assert_eq!(
        roundtrip(s2, b"new".to_vec())
            .await
            .expect("new conn allowed"),
        b"newbye"
    );
    assert!(
        m.orders.log().contains("Invalid policy file"),
        "{}",
        m.orders.log()
    );

    // Removing frontend closes the open connection within a second.
    let start = Instant::now();
    m.orders.set_policy(&policy(
        &["spiffe://cluster.local/ns/ops/*"],
        m.inbound.port(),
    ));
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), r.read(&mut buf))
        .await
        .expect("connection closed within 1 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    eprintln!("revoked connection closed after {:?}", start.elapsed());
    wait_audit(&m.orders, "revocation", |r| {
        r["decision"] == "deny"
            && r["peer"]["spiffe_id"] == FRONTEND
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("no longer allowed")
    })
    .await;
    assert_eq!(
        m.orders
            .metric("keyward_proxy_connections_revoked_total")
            .await,
        1.0
    );

    // SIGTERM drains and exits cleanly.
    let status = m.orders.terminate().await;
    assert!(status.success(), "{status}: {}", m.orders.log());
    assert!(
        m.orders.log().contains("Proxy drained"),
        "{}",
        m.orders.log()
    );
    let status = m.frontend.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_of_30s_certificates_drops_no_connection() {
    let m = mesh("30s").await;
    let issued = |s: &Sidecar| {
        s.audit_records()
            .iter()
            .filter(|r| r["action"] == "svid.issue" && r["decision"] == "ok")
            .count()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    // Long-lived connections exchanging data all along, and a stream of new connections.
    for k in 0..4u8 {
        let addr = m.outbound;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut n = 0u64;
            let msg = [k; 1024];
            let mut back = [0u8; 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.write_all(&msg)
                    .await
                    .map_err(|e| format!("write after {n}: {e}"))?;
                s.read_exact(&mut back)
                    .await
                    .map_err(|e| format!("read after {n}: {e}"))?;
                if back != msg {
                    return Err(format!("corrupt echo after {n}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<u64, String>(n)
        }));
    }
    let addr = m.outbound;
    let stop2 = stop.clone();
    let churn = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {n}: {e}"))?;
            let back = roundtrip(s, b"short".to_vec())
                .await
                .map_err(|e| format!("short connection {n}: {e}"))?;
            if back != b"shortbye" {
                return Err(format!("short connection {n} got {back:?}"));
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<u64, String>(n)
    });
    // Three rotations on both sides (the first issuance plus three renewals).
    support::eventually(
        Duration::from_secs(120),
        "three rotations on both sidecars",
        || async { (issued(&m.orders) >= 4 && issued(&m.frontend) >= 4).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let n = w
            .await
            .expect("join")
            .expect("long-lived connection survived rotations");
        assert!(n > 100, "{n}");
    }
    let n = churn
        .await
        .expect("join")
        .expect("new connections across rotations");
    assert!(n > 50, "{n}");
    assert!(m.orders.log().contains("Workload certificate issued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "vault: {{addr: \"http://127.0.0.1:1\", allow_insecure_http: true}}\nidentity: {{trust_domain: {TD}}}\nproxy: {{outbound: [{{listen: \"127.0.0.1:1\", upstream: \"x:1\", expect: []}}]}}\n"
        ),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["sidecar", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.outbound[0].expect"), "{err}");
}
