//! Reaching the socket without an fsGroup (issue 15 §2): the injector gives app containers the
//! socket's group as a supplementary group, and the broker creates the socket `0660` with that
//! group. Real processes of other uids and gids against the real `keyward broker` and OpenBao:
//! an app in the group connects and the uid allow list decides (allowed, or denied and
//! audited); a process outside the group cannot connect at all.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::json;
use support::broker::BrokerProc;
use support::TestVault;

const GROUP: u32 = 65532;

/// `curl` over the socket as `uid`/`gid` with `groups` as supplementary groups: (exit code,
/// HTTP status or 0, body).
fn curl_as(
    uid: u32,
    gid: u32,
    groups: &[u32],
    socket: &std::path::Path,
    path: &str,
) -> (i32, String) {
    let groups = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .args([
            "--",
            "curl",
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg(format!("http://keyward{path}"))
        .output()
        .expect("setpriv and curl (scripts/deps.sh base)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn apps_of_other_uids_reach_the_socket_through_its_group_and_the_allow_list_decides() {
    assert_eq!(
        nix::unistd::getuid().as_raw(),
        0,
        "this test switches uids: run as root"
    );
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "pw-groups"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: app, path: secret/data/app, allow_uids: [1000]}}\nsocket: {{group: {GROUP}}}\n"
        ),
        &[],
    );
    // The apps must traverse the directory, as they traverse the socket volume's.
    std::fs::set_permissions(b.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    b.wait_ready().await;
    let meta = std::fs::metadata(&b.socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), GROUP);

    // In the group, uid on the allow list: served.
    let (code, out) = curl_as(1000, 1000, &[GROUP], &b.socket, "/v1/secrets/app/password");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("\n200") && out.starts_with("pw-groups"),
        "{out}"
    );
    // In the group, another uid: refused by the allow list, and audited.
    let (code, out) = curl_as(1001, 1001, &[GROUP], &b.socket, "/v1/secrets/app/password");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("\n403") && !out.contains("pw-groups"),
        "{out}"
    );
    let denied: Vec<_> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.read" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["caller"]["uid"], 1001);
    assert_eq!(denied[0]["caller"]["gid"], 1001);
    // Outside the group (even the allowed uid): cannot connect (curl exit 7).
    let (code, out) = curl_as(1000, 1000, &[], &b.socket, "/v1/secrets/app/password");
    assert_eq!(code, 7, "no connection without the socket's group: {out}");
    assert!(!out.contains("pw-groups"));
}
