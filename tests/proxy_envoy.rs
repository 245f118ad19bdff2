//! Interop with Envoy (BoringSSL), a peer nobody here wrote: Envoy as mTLS client of our
//! inbound, Envoy as mTLS server behind our outbound, all SVIDs from the same OpenBao; and
//! Envoy's SAN check refusing our certificate when it expects another ID.

mod support;

use std::time::Duration;

use support::envoy::{
    cluster, cluster_envoy_default_tls, mtls_listener, tcp_listener, Envoy, TlsFiles,
};
use support::pki::{echo_app, Sidecar, SidecarSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const EDGE: &str = "spiffe://cluster.local/ns/edge/sa/envoy";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

async fn roundtrip(addr: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_both_directions_and_san_mismatch() {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let inbound = support::free_port();
    let outbound = support::free_port();
    let (env_client, env_client_wrong, env_server) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );

    // orders: inbound mTLS → echo, allowing Envoy's identity.
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            inbound: format!(
                "[{{listen: \"127.0.0.1:{inbound}\", forward: \"{app}\", allow: [\"{EDGE}\"]}}]"
            ),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    // frontend: outbound → Envoy's mTLS listener, which must present PAYMENTS.
    let mut frontend = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            outbound: format!(
                "[{{listen: \"127.0.0.1:{outbound}\", upstream: \"127.0.0.1:{env_server}\", expect: [\"{PAYMENTS}\"]}}]"
            ),
            ..SidecarSpec::new("shop", "frontend", vault.token("shop", "frontend"))
        },
    );
    orders.wait_ready().await;
    frontend.wait_ready().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (c_chain, c_key) = pki.issue(&vault.bao, EDGE, "1h").await;
    let (s_chain, s_key) = pki.issue(&vault.bao, PAYMENTS, "1h").await;
    let client_tls = TlsFiles::write(dir.path(), "client", &c_chain, &c_key, &pki.root_pem);
    let server_tls = TlsFiles::write(dir.path(), "server", &s_chain, &s_key, &pki.root_pem);
    let envoy = Envoy::start(
        &[
            tcp_listener("client_good", env_client, "orders_good"),
            tcp_listener("client_wrong", env_client_wrong, "orders_wrong"),
            mtls_listener("server", env_server, "app", &server_tls, FRONTEND),
        ],
        &[
            cluster("orders_good", inbound, Some((&client_tls, ORDERS))),
            cluster(
                "orders_wrong",
                inbound,
                Some((&client_tls, "spiffe://cluster.local/ns/shop/sa/other")),
            ),
            cluster("app", app.port(), None),
        ],
    );
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();

    // Envoy (client) → our inbound → echo.
    let back = roundtrip(([127, 0, 0, 1], env_client).into(), &data)
        .await
        .expect("via envoy client");
    assert_eq!(back.len(), data.len() + 3, "{}", envoy.log());
    assert!(back[..data.len()] == data[..]);
    let allowed = orders.audit_records().into_iter().any(|r| {
        r["action"] == "conn.inbound" && r["decision"] == "allow" && r["peer"]["spiffe_id"] == EDGE
    });
    assert!(allowed, "{:#?}", orders.audit_records());

    // Our outbound → Envoy (server, checking our SAN) → echo.
    let back = roundtrip(([127, 0, 0, 1], outbound).into(), &data)
        .await
        .expect("via envoy server");
    assert_eq!(back.len(), data.len() + 3, "{}", envoy.log());
    assert!(back[..data.len()] == data[..]);
    let allowed = frontend.audit_records().into_iter().any(|r| {
        r["action"] == "conn.outbound"
            && r["decision"] == "allow"
            && r["peer"]["spiffe_id"] == PAYMENTS
    });
    assert!(allowed, "{:#?}", frontend.audit_records());

    // Envoy expecting another ID refuses our certificate: nothing reaches the app.
    let back = roundtrip(([127, 0, 0, 1], env_client_wrong).into(), b"hello")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    support::eventually(
        Duration::from_secs(5),
        "envoy counts the SAN failure",
        || async { (envoy.stat("cluster.orders_wrong.ssl.fail_verify_san") >= 1).then_some(()) },
    )
    .await;
    assert_eq!(envoy.stat("cluster.orders_good.ssl.fail_verify_san"), 0);
}

/// Envoy's upstream TLS default is TLS 1.2 at most; keyward's inbound is TLS 1.3 only. The
/// refusal's audit record must say what was offered and which setting to change on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_default_tls12_client_is_refused_naming_versions_and_settings() {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let inbound = support::free_port();
    let env_client = support::free_port();
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            inbound: format!(
                "[{{listen: \"127.0.0.1:{inbound}\", forward: \"{app}\", allow: [\"{EDGE}\"]}}]"
            ),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    orders.wait_ready().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (c_chain, c_key) = pki.issue(&vault.bao, EDGE, "1h").await;
    let client_tls = TlsFiles::write(dir.path(), "client", &c_chain, &c_key, &pki.root_pem);
    let envoy = Envoy::start(
        &[tcp_listener("client_default", env_client, "orders_default")],
        &[cluster_envoy_default_tls(
            "orders_default",
            inbound,
            &client_tls,
            ORDERS,
        )],
    );

    let back = roundtrip(([127, 0, 0, 1], env_client).into(), b"hello")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    let deny = support::eventually(
        Duration::from_secs(10),
        "a conn.inbound deny record",
        || async {
            orders
                .audit_records()
                .into_iter()
                .find(|r| r["action"] == "conn.inbound" && r["decision"] == "deny")
        },
    )
    .await;
    let reason = deny["reason"].as_str().unwrap_or_default();
    for needle in [
        "TLS 1.2 at most",
        "TLS 1.3 only",
        "proxy.allow_tls12: true",
        "tls_maximum_protocol_version: TLSv1_3",
    ] {
        assert!(
            reason.contains(needle),
            "{needle:?} not in {reason:?}\n{}",
            envoy.log()
        );
    }
    assert!(
        orders
            .metric("keyward_proxy_handshake_failures_total{direction=\"inbound\"")
            .await
            >= 1.0
    );
    let tls_version_failures = orders
        .metric(&format!(
            "keyward_proxy_handshake_failures_total{{direction=\"inbound\",port=\"{inbound}\",reason=\"tls_version\"}}"
        ))
        .await;
    assert!(tls_version_failures >= 1.0, "{tls_version_failures}");
}
