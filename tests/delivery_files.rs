//! Rendered files (issue 13 §1; docs/delivery.md "Files") through the real `keyward broker`
//! against a real OpenBao: a DSN rendered from a template, re-rendered atomically on every KV
//! version (a reader in a loop never sees a partial file) with one `file.render` audit record
//! per version; a config whose template names an undeclared secret or does not parse is
//! refused naming the setting, with nothing written; and the permissions of a pod: a process
//! of another container (another uid, its own mount namespace with only its own volume, as the
//! kubelet sets it up) cannot read a file it did not declare.

mod delivery_common;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use delivery_common::{app_files, broker_refuses, files_dir};
use serde_json::json;
use support::broker::BrokerProc;
use support::{eventually, TestVault};

const LONG: Duration = Duration::from_secs(30);
/// The group every container of the pod has (the socket's group), given to rendered files.
const POD_GROUP: u32 = 4321;

/// A password long enough that a torn read would show: `p<N>-` then 8 KiB of a filler.
fn password(n: u64) -> String {
    format!("p{n}-{}", "x".repeat(8192))
}

const TEMPLATE: &str =
    "postgres://{{ secrets.db_main.data.user }}:{{ secrets.db_main.data.password }}@db:5432/app?v={{ secrets.db_main.version }}";

/// Parses a rendered DSN: the password's N and the version; `None` for anything else.
fn parse_dsn(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("postgres://orders:p")?;
    let (n, rest) = rest.split_once('-')?;
    let (filler, rest) = rest.split_once("@db:5432/app?v=")?;
    if filler != "x".repeat(8192) {
        return None;
    }
    Some((n.parse().ok()?, rest.parse().ok()?))
}

#[tokio::test]
async fn a_kv_update_re_renders_the_file_atomically_with_one_render_record_per_version() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("db", json!({"user": "orders", "password": password(1)}))
        .await;
    let (_vol, dir) = app_files();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "kv_refresh: 1s\nsocket: {{group: {POD_GROUP}}}\nsecrets:\n  - {{name: db-main, path: secret/data/db}}\nfiles:\n  - name: dsn\n    container: app\n    dir: {}\n    path: dsn\n    template: {}\n",
            dir.display(),
            serde_json::to_string(TEMPLATE).expect("json")
        ),
        &[],
    );
    b.wait_ready().await;
    let file = dir.join("dsn");
    let read = |f: &Path| std::fs::read_to_string(f).ok();
    eventually(LONG, "the first render", || async {
        read(&file).filter(|t| parse_dsn(t) == Some((1, 1)))
    })
    .await;
    let meta = std::fs::metadata(&file).expect("meta");
    assert_eq!(meta.mode() & 0o777, 0o440, "the default mode");
    assert_eq!(meta.gid(), POD_GROUP, "the pod's group");

    // A reader in a loop while the secret changes five times: every read is a whole DSN.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, file) = (stop.clone(), file.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut reads = 0u64;
            // Read once more after the stop: the main thread stops the reader only after it
            // saw the last version, so that last read sees it too.
            loop {
                let last_round = stop.load(Ordering::Acquire);
                let text = std::fs::read_to_string(&file).expect("the file is always there");
                let parsed = parse_dsn(&text).unwrap_or_else(|| {
                    panic!("a read saw a partial or broken file ({} bytes)", text.len())
                });
                if seen.last() != Some(&parsed) {
                    seen.push(parsed);
                }
                reads += 1;
                if last_round {
                    break;
                }
            }
            (reads, seen)
        })
    };
    for n in 2..=6u64 {
        let version = v
            .bao
            .kv_put("db", json!({"user": "orders", "password": password(n)}))
            .await;
        assert_eq!(version, n);
        eventually(LONG, &format!("the render of version {n}"), || async {
            read(&file).filter(|t| parse_dsn(t) == Some((n, n)))
        })
        .await;
    }
    stop.store(true, Ordering::Release);
    let (reads, seen) = reader.join().expect("reader");
    assert!(reads > 10, "the reader read {reads} times");
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "versions only move forward: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&(6, 6)));

    let renders: Vec<serde_json::Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "file.render")
        .collect();
    let versions: Vec<u64> = renders
        .iter()
        .map(|r| {
            assert_eq!(r["decision"], "ok", "{r}");
            assert_eq!(r["secret"], "db-main", "{r}");
            let reason = r["reason"].as_str().expect("reason");
            assert!(reason.contains("file dsn for container app"), "{r}");
            r["version"].as_u64().expect("version")
        })
        .collect();
    assert_eq!(
        versions,
        vec![1, 2, 3, 4, 5, 6],
        "one render record per version"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("dsn")],
        "no temporary file left"
    );
    let all = std::fs::read_to_string(&b.audit).expect("audit");
    assert!(!all.contains("p6-x"), "no value in the audit log");
}

/// `keyward broker` with `files` that break a rule: it refuses to start, naming the setting,
/// and writes nothing.
fn refuses(files: &str, says: &str) {
    broker_refuses(files, says, |dir| {
        format!(
            "secrets:\n  - {{name: db, path: secret/data/db}}\nfiles:\n  - name: dsn\n    container: app\n    dir: {}\n{files}",
            dir.display()
        )
    });
}

/// The app starts when the sidecar is ready: a file that cannot be rendered yet (its template
/// needs a key the secret does not have) holds readiness, naming the file, and nothing is
/// written; once the secret has the key the file is rendered and the sidecar becomes ready.
#[tokio::test]
async fn the_sidecar_is_ready_only_once_its_files_are_rendered() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("db", json!({"user": "orders"})).await;
    let (_vol, dir) = app_files();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "kv_refresh: 1s\nsecrets:\n  - {{name: db, path: secret/data/db}}\nfiles:\n  - {{name: dsn, container: app, dir: {}, path: dsn, template: '{{{{ secrets.db.data.password }}}}'}}\n",
            dir.display()
        ),
        &[],
    );
    let why = eventually(LONG, "a render error", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "file.render" && r["decision"] == "error")
    })
    .await;
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("file dsn for container app")),
        "{why}"
    );
    let ready = b.get("/v1/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready
            .body
            .contains("file dsn for container app not rendered yet"),
        "{}",
        ready.body
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "nothing half-written"
    );
    v.bao
        .kv_put("db", json!({"user": "orders", "password": "pw2"}))
        .await;
    b.wait_ready().await;
    assert_eq!(
        std::fs::read_to_string(dir.join("dsn")).expect("rendered"),
        "pw2"
    );
}

#[test]
fn bad_files_are_refused_by_the_sidecar_naming_the_setting_with_nothing_written() {
    refuses(
        "    path: dsn\n    template: '{{ secrets.nope.data.password }}'\n",
        "files[0].template: secrets.nope is not a declared secret",
    );
    refuses(
        "    path: dsn\n    template: '{{ secrets.db.data.password '\n",
        "files[0].template: the template does not parse",
    );
    refuses("    path: ../dsn\n    secret: db\n", "files[0].path");
    refuses("    path: /etc/dsn\n    secret: db\n", "files[0].path");
}

/// Runs `cat PATH` as `uid` with supplementary `groups`, in a mount namespace of its own where
/// only `volume` is mounted at `mount` (a container of the pod: the kubelet bind-mounts each
/// container's volumes into its own root; the pod's volumes live under a root-only directory).
fn cat_as(
    uid: u32,
    groups: &str,
    volume: &Path,
    mount: &Path,
    path: &Path,
) -> Result<String, String> {
    let script = format!(
        "mount --bind '{}' '{}' && exec setpriv --reuid={uid} --regid={uid} --groups={groups} -- cat '{}'",
        volume.display(),
        mount.display(),
        path.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux; scripts/deps.sh installs it)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn a_container_of_another_uid_cannot_read_a_file_it_did_not_declare() {
    assert_eq!(
        nix::unistd::getuid().as_raw(),
        0,
        "this test sets up mounts and uids: run it as root"
    );
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("a", json!({"token": "token-of-a"})).await;
    v.bao.kv_put("b", json!({"token": "token-of-b"})).await;
    // The pod's volumes, under a directory only root may enter (like /var/lib/kubelet/pods).
    let pod = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(pod.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let vol_a = files_dir(pod.path(), "files-a");
    let vol_b = files_dir(pod.path(), "files-b");
    // Where a container sees its files (/keyward/files): traversable by everyone.
    let mnt = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(mnt.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "socket: {{group: {POD_GROUP}}}\nsecrets:\n  - {{name: a, path: secret/data/a, key: token}}\n  - {{name: b, path: secret/data/b, key: token}}\nfiles:\n  - {{name: a, container: a, dir: {}, path: token, secret: a}}\n  - {{name: b, container: b, dir: {}, path: token, secret: b}}\n",
            vol_a.display(),
            vol_b.display()
        ),
        &[],
    );
    b.wait_ready().await;
    for vol in [&vol_a, &vol_b] {
        let f = vol.join("token");
        eventually(LONG, "both files rendered", || async {
            f.exists().then_some(())
        })
        .await;
    }
    let groups = POD_GROUP.to_string();
    let in_mnt = mnt.path().join("token");
    // Container a (uid 1001) reads its own file.
    assert_eq!(
        cat_as(1001, &groups, &vol_a, mnt.path(), &in_mnt),
        Ok("token-of-a".to_owned())
    );
    // Container b (uid 1002, the same pod group) reads its own and not a's: a's volume is not
    // mounted in it, and the pod's directory is closed to it.
    assert_eq!(
        cat_as(1002, &groups, &vol_b, mnt.path(), &in_mnt),
        Ok("token-of-b".to_owned())
    );
    let e = cat_as(1002, &groups, &vol_b, mnt.path(), &vol_a.join("token"))
        .expect_err("a's file from b");
    assert!(e.contains("Permission denied"), "{e}");
    // A process in a's container under another uid without the pod's group: mode 0440.
    let e = cat_as(1003, "1003", &vol_a, mnt.path(), &in_mnt).expect_err("no group");
    assert!(e.contains("Permission denied"), "{e}");
    // And the control: as root (like the kubelet) the file is there.
    assert_eq!(
        std::fs::read_to_string(vol_a.join("token")).expect("read"),
        "token-of-a"
    );
}
