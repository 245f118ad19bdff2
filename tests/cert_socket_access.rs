//! A certificate for the app's own TLS (docs/delivery.md "Certificates") is its container's
//! alone on the socket too: the real `keyward broker` against a real OpenBao PKI engine, with
//! one socket per container as the injector writes it, serves the certificate's secret
//! (`allow_containers: [web]`) only on `web`'s socket. Another container's socket and the shared
//! one get 403 with an audit deny record naming the caller's container and no key material;
//! `keyward exec --on-change web=signal:HUP` in `web` watches it and is signalled at the
//! re-issue, and in another container it is refused before the app starts.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::broker::{get, BrokerProc, KEYWARD};
use support::{eventually, TestVault};

const LONG: Duration = Duration::from_secs(60);

/// `keyward exec --on-change web=signal:HUP` on `socket`, running an app that notes each start
/// and each SIGHUP in its directory.
struct Wrapper {
    child: Child,
    dir: tempfile::TempDir,
}

const APP: &str = r#"
trap 'echo hup >> "$D/hups"' HUP
echo started >> "$D/starts"
while :; do sleep 1000 & S=$!; wait $S; kill $S 2>/dev/null; done
"#;

impl Wrapper {
    fn start(socket: &Path) -> Wrapper {
        let dir = tempfile::Builder::new()
            .prefix("keyward-exec")
            .tempdir()
            .expect("tempdir");
        let err = std::fs::File::create(dir.path().join("wrapper.log")).expect("log");
        let child = Command::new(KEYWARD)
            .args(["exec", "--on-change", "web=signal:HUP", "--"])
            .args(["/bin/sh", "-c", APP])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("D", dir.path())
            .env("KEYWARD_SOCKET", socket)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start keyward exec");
        Wrapper { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("wrapper.log")).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Wrapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `secret.read` records of the secret `web`: (decision, caller container, reason).
fn web_reads(b: &BrokerProc) -> Vec<(String, String, String)> {
    b.audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.read" && r["secret"] == "web")
        .map(|r: Value| {
            (
                r["decision"].as_str().unwrap_or_default().to_owned(),
                r["caller"]["container"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_certificate_is_served_only_on_its_containers_socket_and_keyward_exec_there_watches_it() {
    let v = TestVault::with_web_pki().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let web = tmp.path().join("c/web/broker.sock");
    let app = tmp.path().join("c/app/broker.sock");
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - name: web\n    path: pki_web/issue/web\n    allow_containers: [web]\n    issue: {{common_name: web.shop.svc, ttl: 15s}}\nsocket:\n  containers:\n  - {{name: app, path: {}}}\n  - {{name: web, path: {}}}\n",
            app.display(),
            web.display()
        ),
        &[],
    );
    b.wait_ready().await;

    // The certificate's own container reads it, key included.
    let own = get(&web, "/v1/secrets/web").await;
    assert_eq!(own.status, 200, "{}", own.body);
    let key = own.json()["data"]["private_key"]
        .as_str()
        .expect("private_key")
        .to_owned();
    assert!(key.contains("PRIVATE KEY"), "a PEM key");

    // Another container's socket and the shared socket: 403, no key material.
    for path in ["/v1/secrets/web", "/v1/secrets/web/private_key"] {
        for a in [get(&app, path).await, b.get(path).await] {
            assert_eq!(a.status, 403, "{path}: {}", a.body);
            assert!(!a.body.contains("PRIVATE KEY"), "{path}: {}", a.body);
        }
    }
    let listed = get(&app, "/v1/secrets").await;
    assert!(!listed.body.contains("\"web\""), "{}", listed.body);

    let reads = web_reads(&b);
    let app_deny = (
        "deny".to_owned(),
        "app".to_owned(),
        "container app is not in the secret's allow_containers".to_owned(),
    );
    assert_eq!(reads.len(), 5, "{reads:#?}");
    assert_eq!((reads[0].0.as_str(), reads[0].1.as_str()), ("allow", "web"));
    assert_eq!(reads[1], app_deny);
    assert_eq!((reads[2].0.as_str(), reads[2].1.as_str()), ("deny", ""));
    assert_eq!(reads[3], app_deny);

    // keyward exec in another container is refused before its app starts.
    let mut refused = Wrapper::start(&app);
    let child = &mut refused.child;
    let status = eventually(LONG, "keyward exec on app's socket to exit", || {
        let r = child.try_wait().expect("try_wait");
        async move { r }
    })
    .await;
    assert_eq!(status.code(), Some(2), "log:\n{}", refused.log());
    assert!(refused.log().contains("secret web"), "{}", refused.log());
    assert!(!refused.path("starts").exists(), "the app must not start");

    // In the certificate's container it watches it: the app starts, and is signalled when the
    // certificate is issued again (at about 2/3 of its 15 s).
    let w = Wrapper::start(&web);
    eventually(
        LONG,
        "the app under keyward exec in web started",
        || async { (w.lines("starts") == 1).then_some(()) },
    )
    .await;
    eventually(LONG, "a SIGHUP at the re-issue", || async {
        (w.lines("hups") >= 1).then_some(())
    })
    .await;
    assert_eq!(w.lines("starts"), 1, "signalled, not restarted");
    drop(w);

    // Every allowed read of the certificate came in on web's socket.
    let reads = web_reads(&b);
    assert!(
        reads
            .iter()
            .filter(|r| r.0 == "allow")
            .all(|r| r.1 == "web"),
        "{reads:#?}"
    );
    assert!(b.terminate().success());
    let logs = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(&b.audit).expect("audit"),
        b.log(),
        b.stdout()
    );
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        assert!(
            !logs.contains(line),
            "key material in the audit log or logs"
        );
    }
}
