//! Configured behaviours that had no test of their own (docs/configuration.md, docs/audit.md,
//! docs/proxy.md, docs/socket-api.md): `revoke_on_shutdown: false` leaves the lease and the
//! token valid in Vault after SIGTERM; `audit.hmac_key_file` keys the `lease_hmac` and
//! `accessor_hmac` of every broker that names it; `audit.fsync: true` syncs each record (counted
//! with strace) and keeps a complete log that verifies; the proxy refuses inbound connections
//! while its audit log cannot be written (fail closed) and recovers; a secret's `allow_uids`
//! admits by uid only, never by a gid of the same number. Each runs the real `keyward` binary
//! against a real OpenBao (and PostgreSQL for a renewable lease). Runs as root: it mounts a
//! tmpfs, runs clients under other uids/gids (setpriv) and attaches strace.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::broker::BrokerProc;
use support::disk::SmallDisk;
use support::pg::Postgres;
use support::pki::{raw_mtls, Sidecar, SidecarSpec};
use support::TestVault;

const DB: &str = "secrets:\n  - {name: db, path: database/creds/app}\n";

fn records(audit: &Path) -> Vec<Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
        .collect()
}

#[track_caller]
fn assert_verifies(audit: &Path) {
    let out = std::process::Command::new(support::broker::KEYWARD)
        .args(["audit", "verify"])
        .arg(audit)
        .output()
        .expect("keyward audit verify");
    assert!(
        out.status.success(),
        "keyward audit verify {}: {}{}",
        audit.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn revoke_on_shutdown_false_leaves_lease_and_token_valid_in_vault_after_sigterm() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "1h", "2h").await;
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!("{DB}revoke_on_shutdown: false\n"),
        &[],
    );
    b.wait_ready().await;
    let a = b.get("/v1/secrets/db/username").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let user = a.body.clone();

    let tokens = support::live_tokens(&v.bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "the broker's one login token: {tokens:?}");
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "the broker's one lease: {leases:?}");

    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());

    // The token still works: found by its accessor, as root...
    assert!(
        support::token_alive(&v.bao, &tokens[0]).await,
        "revoke_on_shutdown: false, yet the broker's token was revoked on SIGTERM\n{}",
        b.log()
    );
    // ...and the lease is still held by Vault, its PostgreSQL role still there.
    assert_eq!(
        support::live_leases(&v.bao, "database/creds/app/").await,
        leases,
        "revoke_on_shutdown: false, yet the lease was revoked on SIGTERM\n{}",
        b.log()
    );
    let (status, lease) = v
        .bao
        .api_status(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": leases[0] })),
        )
        .await;
    assert_eq!(status, 200, "lease lookup: {lease}");
    assert!(
        lease["data"]["ttl"].as_i64().is_some_and(|t| t > 0),
        "the lease still has time left: {lease}"
    );
    assert!(
        pg.vault_roles().contains(&user),
        "the PostgreSQL role {user} was dropped"
    );
    // Nothing revoked, so nothing audited as revoked.
    assert_eq!(b.audit_count("vault.revoke", "ok"), 0);
    assert_eq!(b.audit_count("vault.revoke_token", "ok"), 0);
    assert_verifies(&b.audit);
    support::assert_no_panic("the broker", &b.log());
}

/// Runs one broker with `audit.hmac_key_file: key` writing to `audit`, fetches the lease,
/// and returns (lease id, token accessor) as Vault holds them (read as root) before the
/// broker is stopped (its shutdown revokes both, so the next broker's are its own).
async fn one_broker(v: &TestVault, audit: &Path, key: &Path) -> (String, String) {
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "{DB}audit: {{file: {}, hmac_key_file: {}}}\n",
            audit.display(),
            key.display()
        ),
        &[],
    );
    b.wait_ready().await;
    let a = b.get("/v1/secrets/db").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let tokens = support::live_tokens(&v.bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "one login token: {tokens:?}");
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "one lease: {leases:?}");
    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());
    support::assert_no_panic("the broker", &b.log());
    (leases[0].clone(), tokens[0].clone())
}

/// The (lease_hmac, accessor_hmac) values a log holds, each checked to be the only one.
fn hmacs(audit: &Path) -> (String, String) {
    let recs = records(audit);
    let one = |field: &str| {
        let mut seen: Vec<String> = recs
            .iter()
            .filter_map(|r| r[field].as_str().map(str::to_owned))
            .collect();
        seen.dedup();
        assert_eq!(
            seen.len(),
            1,
            "one {field} value expected in {}: {recs:#?}",
            audit.display()
        );
        seen.remove(0)
    };
    (one("lease_hmac"), one("accessor_hmac"))
}

#[tokio::test]
async fn hmac_key_file_keys_lease_and_accessor_hmacs_in_every_broker_and_raw_ids_never_logged() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "1h", "2h").await;
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, b"claims-behaviours-shared-hmac-key").expect("key");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, b"a-different-key").expect("key");

    // Two brokers with the same key file, one with another key.
    let mut runs = Vec::new();
    for (name, k) in [("a", &key), ("b", &key), ("c", &other_key)] {
        let audit = dir.path().join(format!("audit-{name}.log"));
        let (lease, accessor) = one_broker(&v, &audit, k).await;
        let (lease_hmac, accessor_hmac) = hmacs(&audit);
        let text = std::fs::read_to_string(&audit).expect("audit");
        assert!(
            !text.contains(&lease) && !text.contains("database/creds/app/"),
            "the raw lease id reached the audit log {}",
            audit.display()
        );
        assert!(
            !text.contains(&accessor),
            "the raw token accessor reached the audit log {}",
            audit.display()
        );
        assert_verifies(&audit);
        runs.push((lease, accessor, lease_hmac, accessor_hmac, k.clone()));
    }
    let shared = std::fs::read(&key).expect("key");
    let other = std::fs::read(&other_key).expect("key");
    // Each broker's HMACs are HMAC-SHA256 under the key file's key: the same identifier gives
    // the same value in any broker naming that file (a random per-process key would not).
    for (lease, accessor, lease_hmac, accessor_hmac, k) in &runs {
        let k = std::fs::read(k).expect("key");
        assert_eq!(*lease_hmac, keyward_audit::hmac_hex(&k, lease));
        assert_eq!(*accessor_hmac, keyward_audit::hmac_hex(&k, accessor));
    }
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    // Brokers a and b (same key) agree on each other's identifiers; c's key gives others.
    for (lease, accessor) in [(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1)] {
        assert_ne!(
            keyward_audit::hmac_hex(&shared, lease),
            keyward_audit::hmac_hex(&other, lease),
            "a different key gives a different lease_hmac"
        );
        assert_ne!(
            keyward_audit::hmac_hex(&shared, accessor),
            keyward_audit::hmac_hex(&other, accessor)
        );
    }
    assert_ne!(c.2, keyward_audit::hmac_hex(&shared, &c.0));
    assert_ne!(c.3, keyward_audit::hmac_hex(&shared, &c.1));
}

/// The fsync/fdatasync calls a process makes while `during` runs: strace attached to all its
/// threads (and detached after), the calls counted from its output.
async fn syncs_during<F: std::future::Future<Output = ()>>(pid: u32, during: F) -> usize {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("strace.out");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace (the fsync test needs it installed)");
    // strace reports on stderr once it is attached; only then does anything start.
    let mut first = String::new();
    std::io::BufReader::new(strace.stderr.take().expect("stderr"))
        .read_line(&mut first)
        .expect("strace stderr");
    assert!(first.contains("attached"), "strace did not attach: {first}");
    during.await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop strace");
    strace.wait().expect("wait strace");
    std::fs::read_to_string(&out)
        .expect("strace output")
        .lines()
        .filter(|l| l.contains("fsync(") || l.contains("fdatasync("))
        .count()
}

#[tokio::test]
async fn audit_fsync_true_syncs_every_record_and_the_log_is_complete_and_verifies() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"password": "fsync-canary"}))
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    const READS: usize = 25;
    let reads = |recs: &[Value]| {
        recs.iter()
            .filter(|r| r["action"] == "secret.read" && r["decision"] == "allow")
            .count()
    };
    for fsync in [true, false] {
        let audit = dir.path().join(format!("audit-{fsync}.log"));
        let mut b = BrokerProc::start(
            &v.bao.addr(),
            &v.token("shop", "orders"),
            &format!(
                "secrets:\n  - {{name: app, path: secret/data/app}}\naudit: {{file: {}, fsync: {fsync}}}\n",
                audit.display()
            ),
            &[],
        );
        b.wait_ready().await;
        let syncs = syncs_during(b.pid(), async {
            for _ in 0..READS {
                let a = b.get("/v1/secrets/app/password").await;
                assert_eq!((a.status, a.body.as_str()), (200, "fsync-canary"));
            }
        })
        .await;
        if fsync {
            assert!(
                syncs >= READS,
                "audit.fsync: true, yet {syncs} fsync/fdatasync calls for {READS} audited reads"
            );
        } else {
            assert_eq!(syncs, 0, "audit.fsync: false, yet the broker synced");
        }
        // Every served read is in the file by the time its answer arrived.
        assert_eq!(reads(&records(&audit)), READS);
        let status = b.terminate();
        assert!(status.success(), "broker exit: {status}\n{}", b.log());
        let recs = records(&audit);
        assert_eq!(reads(&recs), READS);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r["seq"], i as u64 + 1, "sequence without a gap: {r}");
        }
        assert!(recs.iter().any(|r| r["action"] == "vault.login"));
        assert!(!std::fs::read_to_string(&audit)
            .expect("audit")
            .contains("fsync-canary"));
        assert_verifies(&audit);
        support::assert_no_panic("the broker", &b.log());
    }
}

/// An echo app that counts the connections it accepted and the bytes it received.
#[derive(Clone, Default)]
struct CountingApp {
    accepted: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl CountingApp {
    async fn start() -> (CountingApp, std::net::SocketAddr) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = CountingApp::default();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let a = app.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.accepted.fetch_add(1, Ordering::SeqCst);
                let bytes = a.bytes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                bytes.fetch_add(n, Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        (app, addr)
    }

    fn seen(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// One mTLS connection to `inbound`: sends `ping`, half-closes, returns what came back (empty
/// when the connection was refused at any stage).
async fn ping(inbound: std::net::SocketAddr, chain: &str, key: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = raw_mtls(inbound, Some((chain, key))).await else {
        return Vec::new();
    };
    if s.write_all(b"ping").await.is_err() || s.shutdown().await.is_err() {
        return Vec::new();
    }
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut back)).await;
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuses_inbound_connections_while_audit_cannot_be_written_then_recovers() {
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    let (vault, pki) = support::pki::shop_vault().await;
    let (app, app_addr) = CountingApp::start().await;
    let inbound = support::pki::loopback_addr();
    let disk = SmallDisk::mount("256k");
    let audit = disk.dir.path().join("audit.log");
    let audit_env = audit.display().to_string();
    let mut s = Sidecar::start_with_env(
        &vault.bao.addr(),
        SidecarSpec {
            policy: Some(format!(
                "inbound:\n  - port: {}\n    allow: [\"{FRONTEND}\"]\n",
                inbound.port()
            )),
            inbound: format!("[{{listen: \"{inbound}\", forward: \"{app_addr}\"}}]"),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
        &[("KEYWARD_AUDIT_FILE", &audit_env)],
    );
    s.wait_ready().await;
    let (chain, key) = pki.issue(&vault.bao, FRONTEND, "1h").await;

    assert_eq!(ping(inbound, &chain, &key).await, b"ping", "served before");
    assert_eq!(app.seen(), (1, 4));

    disk.fill();
    // The audit file's last page may still take a record or two: those connections are served
    // (and recorded); then the disk is really full.
    let mut refused = false;
    for _ in 0..50 {
        if ping(inbound, &chain, &key).await != b"ping" {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "still served with the audit disk full\n{}",
        s.log()
    );
    let before = app.seen();
    for i in 0..3 {
        let back = ping(inbound, &chain, &key).await;
        assert!(back.is_empty(), "refused connection {i} got {back:?}");
    }
    assert_eq!(
        app.seen(),
        before,
        "no connection and no byte reached the app while the audit log could not be written"
    );
    assert!(s.log().contains("Cannot write audit record"), "{}", s.log());
    let in_file = records(&audit).len();

    disk.free();
    support::eventually(
        Duration::from_secs(20),
        "an inbound connection served once the audit log is writable",
        || async { (ping(inbound, &chain, &key).await == b"ping").then_some(()) },
    )
    .await;
    assert!(app.seen().0 > before.0, "the app is reached again");
    assert!(
        records(&audit).len() > in_file,
        "the allow record is written"
    );
    // No partial line was left behind: the chain verifies.
    assert_verifies(&audit);
    support::assert_no_panic("the sidecar", &s.log());
    let _ = s.terminate().await;
}

/// `GET path` on the broker's socket from a process running as `uid`/`gid` with the
/// supplementary groups `groups` (curl through `setpriv`): (status, body).
fn get_as(socket: &Path, path: &str, uid: u32, gid: u32, groups: &[u32]) -> (u16, String) {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(format!("--groups={}", groups.join(",")))
        .args(["--", "curl", "-sS", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://keyward{path}"))
        .output()
        .expect("setpriv curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl as {uid}:{gid}: no status in {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, body.to_owned())
}

#[tokio::test]
async fn uid_allow_list_admits_by_uid_only_never_by_a_gid_of_the_same_number() {
    // Numbers no account on the machine uses: the caller's uid, its (different) primary gid,
    // and the socket's group, held as a supplementary group.
    const UID: u32 = 54321;
    const GID: u32 = 54320;
    const SOCKET_GROUP: u32 = 54300;
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "uid-canary"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: by_uid, path: secret/data/app, allow_uids: [{UID}]}}\n  - {{name: gid_number, path: secret/data/app, allow_uids: [{GID}]}}\n"
        ),
        &[("KEYWARD_SOCKET_GROUP", &SOCKET_GROUP.to_string())],
    );
    b.wait_ready().await;
    // The other users reach the socket through its directory and its group only.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(b.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let meta = std::fs::metadata(&b.socket).expect("socket");
    assert_eq!(meta.gid(), SOCKET_GROUP, "the socket's group");
    assert_eq!(meta.mode() & 0o007, 0, "no access for others");

    // Allowed by its uid, whatever its gid.
    let (status, body) = get_as(
        &b.socket,
        "/v1/secrets/by_uid/password",
        UID,
        GID,
        &[SOCKET_GROUP],
    );
    assert_eq!((status, body.as_str()), (200, "uid-canary"));
    // Its gid is in the allow list of `gid_number`, as a number: not a uid, no access.
    let (status, body) = get_as(
        &b.socket,
        "/v1/secrets/gid_number/password",
        UID,
        GID,
        &[SOCKET_GROUP],
    );
    assert_eq!(
        status, 403,
        "a gid equal to an allowed uid number granted access: {body}"
    );
    assert!(!body.contains("uid-canary"));
    // Another uid whose primary gid has the allowed uid's number: denied.
    let (status, body) = get_as(
        &b.socket,
        "/v1/secrets/by_uid/password",
        UID + 1,
        UID,
        &[SOCKET_GROUP],
    );
    assert_eq!(
        status, 403,
        "gid {UID} granted what allow_uids [{UID}] allows: {body}"
    );
    assert!(!body.contains("uid-canary"));
    // The list shows each caller only its own.
    let (status, body) = get_as(&b.socket, "/v1/secrets", UID + 1, UID, &[SOCKET_GROUP]);
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("by_uid"),
        "listed to a gid, not the uid: {body}"
    );

    // The records name the caller's real uid and gid.
    let reads: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.read")
        .collect();
    assert_eq!(reads.len(), 3, "{reads:#?}");
    let who = |r: &Value| {
        (
            r["secret"].as_str().unwrap_or_default().to_owned(),
            r["decision"].as_str().unwrap_or_default().to_owned(),
            r["caller"]["uid"].as_u64(),
            r["caller"]["gid"].as_u64(),
        )
    };
    let (uid, gid) = (u64::from(UID), u64::from(GID));
    assert_eq!(
        reads.iter().map(who).collect::<Vec<_>>(),
        vec![
            ("by_uid".into(), "allow".into(), Some(uid), Some(gid)),
            ("gid_number".into(), "deny".into(), Some(uid), Some(gid)),
            ("by_uid".into(), "deny".into(), Some(uid + 1), Some(uid)),
        ]
    );
    support::assert_no_panic("the broker", &b.log());
}
