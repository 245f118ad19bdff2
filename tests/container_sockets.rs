//! One socket per app container (issue 12 §5): the real `keyward broker` against a real
//! OpenBao listens on each container's socket, and every audit record of a request names the
//! container whose socket it came in on. (A caller in a PID namespace the sidecar cannot see,
//! pid 0, is in `tests/e2e_shop.rs`, whose pod runner gives each container its own.)

mod support;

use serde_json::{json, Value};
use support::broker::{get, BrokerProc};
use support::TestVault;

fn reads(b: &BrokerProc) -> Vec<Value> {
    b.audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.read")
        .collect()
}

#[tokio::test]
async fn reads_on_each_container_socket_are_audited_naming_that_container() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "pw"})).await;
    let sockets = tempfile::tempdir().expect("tempdir");
    let web = sockets.path().join("c/web/broker.sock");
    let worker = sockets.path().join("c/worker/broker.sock");
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: app, path: secret/data/app}}\nsocket:\n  containers:\n  - {{name: web, path: {}}}\n  - {{name: worker, path: {}}}\n",
            web.display(),
            worker.display()
        ),
        &[],
    );
    b.wait_ready().await;

    for (socket, n) in [(&web, 2), (&worker, 1)] {
        for _ in 0..n {
            let a = get(socket, "/v1/secrets/app/password").await;
            assert_eq!((a.status, a.body.as_str()), (200, "pw"));
        }
    }
    let a = b.get("/v1/secrets/app/password").await;
    assert_eq!(a.status, 200, "the shared socket keeps serving: {}", a.body);
    let records = reads(&b);
    let named = |c: &str| {
        records
            .iter()
            .filter(|r| r["caller"]["container"] == c)
            .count()
    };
    assert_eq!(named("web"), 2, "{records:#?}");
    assert_eq!(named("worker"), 1, "{records:#?}");
    assert_eq!(records.len(), 4, "{records:#?}");
    let shared: Vec<&Value> = records
        .iter()
        .filter(|r| r["caller"].get("container").is_none())
        .collect();
    assert_eq!(
        shared.len(),
        1,
        "the shared socket names no container: {records:#?}"
    );
    // Same PID namespace: the pid is visible, and marked best effort.
    for r in &records {
        assert!(r["caller"]["pid"].as_i64().is_some_and(|p| p > 0), "{r}");
        assert_eq!(
            r["caller"]["process_info"], "best-effort, caller-controlled",
            "{r}"
        );
    }
}
