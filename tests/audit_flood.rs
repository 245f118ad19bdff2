//! The audit log under a sustained flood on a 1 MiB socket volume (issue 12, section 1): socket
//! reads, unknown-secret requests and plain TCP connects to the inbound port, until the
//! records written are many times the volume. The sidecar keeps serving, never reports a full
//! volume, keeps the log within its budget (half the volume) and its chain verifies.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::broker::{get, KEYWARD};
use support::disk::SmallDisk;
use support::pki::{loopback_addr, shop_vault, Sidecar, SidecarSpec};
use tokio::io::AsyncWriteExt;

const CANARY: &str = "canary-flood-81c2";

/// Bytes the audit log's files hold together (the active segment and the closed ones).
fn audit_bytes(audit: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut lines = 0;
    for f in keyward_audit::SegmentedFile::files(audit).expect("segments") {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        bytes += text.len() as u64;
        lines += text.lines().count() as u64;
    }
    (bytes, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_a_1mib_volume_keeps_serving_and_the_chain_verifies() {
    let (vault, _pki) = shop_vault().await;
    vault.bao.kv_put("app", json!({"password": CANARY})).await;
    let inbound = loopback_addr();
    let app = loopback_addr();
    let disk = SmallDisk::mount("1m");
    let audit = disk.dir.path().join("audit.log");
    let audit_env = audit.display().to_string();
    let mut s = Sidecar::start_with_env(
        &vault.bao.addr(),
        SidecarSpec {
            inbound: format!("[{{listen: \"{inbound}\", forward: \"{app}\"}}]"),
            extra: "secrets:\n  - {name: app, path: secret/data/app}\n",
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
        &[("KEYWARD_AUDIT_FILE", &audit_env)],
    );
    s.wait_ready().await;

    let volume: u64 = 1 << 20;
    let target = 4 * volume;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut served = 0u64;
    loop {
        // One round: reads, an unknown secret, plain TCP connects; all at once.
        let reads = async {
            for _ in 0..8 {
                let a = get(&s.socket, "/v1/secrets/app/password").await;
                assert_eq!(
                    (a.status, a.body.as_str()),
                    (200, CANARY),
                    "reads are served throughout the flood\n{}",
                    s.log()
                );
            }
        };
        let unknown = async {
            for i in 0..4 {
                let a = get(&s.socket, &format!("/v1/secrets/nope-{i}")).await;
                assert_eq!(a.status, 404, "{}", a.body);
            }
        };
        let connects = async {
            for _ in 0..4 {
                if let Ok(mut c) = tokio::net::TcpStream::connect(inbound).await {
                    let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                    let _ = c.shutdown().await;
                }
            }
        };
        tokio::join!(reads, unknown, connects);
        served += 8;
        let (bytes, lines) = audit_bytes(&audit);
        assert!(
            bytes <= volume / 2,
            "the log stays within half the volume: {bytes} bytes"
        );
        let fs = nix::sys::statvfs::statvfs(disk.dir.path()).expect("statvfs");
        assert!(
            fs.blocks_available() > 0,
            "the volume never fills ({bytes} bytes of audit log)"
        );
        let last_seq = s.metric("keyward_audit_last_seq").await as u64;
        // Records written so far, at the average size of those on disk.
        let written = last_seq * bytes / lines.max(1);
        if written >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood wrote only {written} bytes"
        );
    }

    assert_eq!(
        s.admin_get("/ready").await.map(|(st, _)| st),
        Some(200),
        "ready after the flood"
    );
    assert_eq!(s.metric("keyward_audit_writable").await, 1.0);
    assert_eq!(s.metric("keyward_audit_write_failures_total").await, 0.0);
    let log = s.log();
    assert!(!log.contains("No space left"), "{log}");
    assert!(!log.contains("cannot be written"), "{log}");
    let closed = keyward_audit::SegmentedFile::closed_segments(&audit).expect("closed");
    assert!(
        closed.first().is_some_and(|(n, _)| *n > 1),
        "segments were rotated away: {closed:?}"
    );
    // The window on the pod verifies across its segments; the reads of the flood are in it.
    let out = std::process::Command::new(KEYWARD)
        .args(["audit", "verify", "--window"])
        .arg(&audit)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reads = keyward_audit::SegmentedFile::files(&audit)
        .expect("segments")
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("record"))
                .collect::<Vec<_>>()
        })
        .filter(|r| r["action"] == "secret.read" && r["decision"] == "allow")
        .count() as u64;
    assert!(
        reads > 0 && reads < served,
        "{reads} of {served} reads in the window"
    );
    // The metric names the chain it counts in, as `verify --expect CHAIN=SEQ` takes it.
    let text = std::fs::read_to_string(&audit).expect("active segment");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a record")).expect("record");
    let (_, metrics) = s.admin_get("/metrics").await.expect("metrics");
    let chain = last["chain"].as_str().expect("chain");
    assert!(
        metrics.contains(&format!("keyward_audit_last_seq{{chain=\"{chain}\"}}")),
        "{metrics}"
    );
    support::assert_no_panic("the sidecar", &log);
}
