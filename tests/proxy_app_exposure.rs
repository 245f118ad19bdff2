//! The app's own port reachable without mTLS: in a pod network namespace of our own, an app
//! listening on 0.0.0.0 is reachable from another namespace and is reported (log, metric,
//! audit record, `/ready`); one listening on 127.0.0.1 is neither.
//!
//! Needs root and iproute2 (network namespaces), like the e2e tests.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyward_audit::{AuditConfig, AuditLog};
use keyward_e2e::net::{Host, NetMode, Network};
use keyward_proxy::config::ExposedAppPort;
use keyward_proxy::exposure::{Exposure, PROC_NET};
use keyward_proxy::metrics::Metrics;

/// Runs `f` on a fresh thread inside `host`'s network namespace (the thread ends with `f`).
fn in_netns<T: Send + 'static>(host: &Host, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = host.netns.clone().expect("a namespace host");
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[tokio::test]
async fn an_app_port_on_the_wildcard_address_is_reported_and_one_on_loopback_is_not() {
    let mut net = Network::create().expect("network");
    assert_eq!(
        net.mode,
        NetMode::Namespaces,
        "this test needs network namespaces (root and iproute2)"
    );
    let pod = net.add_host("pod").expect("pod namespace");
    let peer = net.add_host("peer").expect("peer namespace");
    let (exposed_port, local_port) = (8080u16, 8081u16);

    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.log");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            path: audit_path.clone(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("audit"),
    );
    let metrics = Metrics::default();
    let exposure = Exposure::with(
        BTreeSet::from([exposed_port, local_port]),
        ExposedAppPort::Refuse,
        PathBuf::from(PROC_NET),
        audit,
        metrics.clone(),
    );

    // The apps, bound inside the pod's namespace: one on every address, one on loopback only.
    let (wild, lo) = in_netns(&pod, move || {
        (
            TcpListener::bind(("0.0.0.0", exposed_port)).expect("bind 0.0.0.0"),
            TcpListener::bind(("127.0.0.1", local_port)).expect("bind 127.0.0.1"),
        )
    });

    // What the check is about: from another pod, the wildcard app is reachable, the other not.
    peer.connect(SocketAddr::from((pod.ip, exposed_port)))
        .await
        .expect("the 0.0.0.0 app is reachable from another namespace");
    assert!(
        peer.connect(SocketAddr::from((pod.ip, local_port)))
            .await
            .is_err(),
        "the 127.0.0.1 app is not reachable from another namespace"
    );

    // The sidecar's check, run in the pod's namespace, sees the same.
    let e = exposure.clone();
    let found = in_netns(&pod, move || e.check()).expect("check");
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        vec![exposed_port],
        "{found:?}"
    );
    assert_eq!(metrics.app_port_exposed(exposed_port).get(), 1);
    assert_eq!(metrics.app_port_exposed(local_port).get(), 0);
    let why = exposure.readiness().expect_err("refuse: not ready");
    assert!(why.contains("app port 8080"), "{why}");
    assert!(why.contains("0.0.0.0:8080"), "{why}");
    assert!(!why.contains("8081"), "{why}");
    assert_eq!(exposure.notes().len(), 1);
    let records: Vec<_> = audit_lines(&audit_path)
        .into_iter()
        .filter(|r| r["action"] == "app.exposed")
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["decision"], "deny");
    assert_eq!(records[0]["port"], exposed_port);
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "the record says how to fix it: {}",
        records[0]
    );

    // A second check with nothing changed writes nothing new.
    let e = exposure.clone();
    in_netns(&pod, move || e.check()).expect("check");
    assert_eq!(audit_lines(&audit_path).len(), 1);

    // The app rebinds to loopback: the report clears.
    drop(wild);
    let e = exposure.clone();
    let found = in_netns(&pod, move || e.check()).expect("check");
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(metrics.app_port_exposed(exposed_port).get(), 0);
    exposure.readiness().expect("ready again");
    assert!(exposure.notes().is_empty());
    let last = audit_lines(&audit_path).pop().expect("a record");
    assert_eq!(last["action"], "app.exposed");
    assert_eq!(last["decision"], "ok");
    drop(lo);

    // `run` checks at start without waiting for the interval.
    let wild = in_netns(&pod, move || {
        TcpListener::bind(("0.0.0.0", exposed_port)).expect("bind 0.0.0.0")
    });
    let e = exposure.clone();
    let m = metrics.clone();
    let reported = in_netns(&pod, move || {
        // A runtime whose threads are all in the pod's namespace, like the sidecar's; the
        // monitor stops with it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let seen = async {
                while m.app_port_exposed(exposed_port).get() != 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                () = e.run(Default::default()) => false,
                r = tokio::time::timeout(Duration::from_secs(5), seen) => r.is_ok(),
            }
        })
    });
    assert!(
        reported,
        "run reports at start, well before the {:?} interval",
        keyward_proxy::exposure::CHECK_INTERVAL
    );
    drop(net);
    assert!(
        keyward_e2e::net::own_namespaces().is_empty(),
        "namespaces left behind: {:?}",
        keyward_e2e::net::own_namespaces()
    );
    drop(wild);
}
