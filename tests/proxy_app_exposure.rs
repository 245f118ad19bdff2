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
    let names: Vec<String> = [&pod, &peer]
        .iter()
        .filter_map(|h| h.netns.clone())
        .collect();
    drop(net);
    for n in names {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{n}")).exists(),
            "namespace {n} left behind"
        );
    }
    drop(wild);
}

/// A network namespace of its own with only loopback up, deleted when dropped.
struct PodNs(String);

impl PodNs {
    fn create(tag: &str) -> PodNs {
        // The `kw{pid}-` prefix lets keyward_e2e reap it if this process is killed.
        let name = format!("kw{}-{tag}", std::process::id());
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2; this test needs root)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = PodNs(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn host(&self) -> Host {
        Host {
            name: "pod".into(),
            netns: Some(self.0.clone()),
            ip: std::net::Ipv4Addr::LOCALHOST,
        }
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// GETs `path` from the admin endpoint inside the namespace: the whole response, or None.
fn admin_get(pod: &Host, port: u16, path: &str) -> Option<String> {
    let path = path.to_owned();
    in_netns(pod, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// The sidecar itself, run in the pod's namespace next to an app on 0.0.0.0: the admin
/// endpoint and the audit log report the port from the first check, before Vault is reached.
#[tokio::test]
async fn the_sidecar_reports_an_exposed_app_port_on_ready_metrics_and_audit() {
    let ns = PodNs::create("sidecar");
    let pod = ns.host();
    let app = in_netns(&pod, || {
        TcpListener::bind(("0.0.0.0", 8080)).expect("bind the app on 0.0.0.0")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("token"), "not.a.jwt").expect("token");
    let config = format!(
        "vault: {{addr: \"http://127.0.0.1:1\", allow_insecure_http: true, timeout: 1s}}\n\
         auth: {{token_file: {token}, max_backoff: 1s}}\n\
         audit: {{file: {audit}}}\n\
         socket: {{path: {socket}}}\n\
         identity: {{trust_domain: cluster.local}}\n\
         proxy:\n  admin: \"127.0.0.1:15090\"\n  exposed_app_port: refuse\n  \
         inbound: [{{listen: \"0.0.0.0:15443\", forward: \"127.0.0.1:8080\", allow: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}}]\n",
        token = p("token").display(),
        audit = p("audit.log").display(),
        socket = p("broker.sock").display(),
    );
    std::fs::write(p("config.yaml"), config).expect("config");
    let stderr = std::fs::File::create(p("stderr.log")).expect("log");
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.0))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_keyward"))
        .args(["sidecar", "--config"])
        .arg(p("config.yaml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start keyward sidecar in the namespace");
    let log = || std::fs::read_to_string(p("stderr.log")).unwrap_or_default();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metric = "keyward_proxy_app_port_exposed{port=\"8080\"} 1";
    loop {
        if admin_get(&pod, 15090, "/metrics").is_some_and(|m| m.contains(metric)) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sidecar exited with {status}: {}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {metric}: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = admin_get(&pod, 15090, "/ready").expect("/ready");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("app port 8080 is reachable from outside the pod without mTLS"),
        "{ready}"
    );
    let records: Vec<_> = audit_lines(&p("audit.log"))
        .into_iter()
        .filter(|r| r["action"] == "app.exposed")
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["decision"], "deny", "refuse mode");
    assert_eq!(records[0]["port"], 8080);
    assert!(
        log().contains("app port 8080 is reachable from outside the pod"),
        "{}",
        log()
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(app);
}
