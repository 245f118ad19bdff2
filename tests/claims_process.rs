//! Claim: the keyward process is not dumpable (docs/threat-model.md): no core dump and no
//! ptrace or /proc/PID/mem by other processes of the same uid. `broker_socket.rs` checks
//! `keyward broker`; this checks `keyward sidecar`, the command the injector actually starts.

mod support;

use std::os::unix::fs::MetadataExt;

use support::pki::{Pki, Sidecar, SidecarSpec};
use support::TestVault;

/// With PR_SET_DUMPABLE 0 the kernel makes /proc/PID/* owned by root, so a sidecar running as
/// `nobody` shows root-owned proc files (a dumpable one shows its own uid).
#[tokio::test]
async fn injected_sidecar_process_is_not_dumpable() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("nobody user");
    let mut s = Sidecar::start_as(
        &v.bao.addr(),
        SidecarSpec::new("shop", "orders", v.token("shop", "orders")),
        &nobody,
    );
    // Ready: the process has long passed its start-up (where it hardens itself).
    s.wait_ready().await;
    let pid = s.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.as_raw().to_string()),
        "the sidecar runs as nobody: {uid_line}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("sidecar"),
        "pid {pid} is `keyward sidecar`"
    );
    for file in ["environ", "mem", "maps"] {
        let owner = std::fs::metadata(format!("/proc/{pid}/{file}"))
            .expect("stat")
            .uid();
        assert_eq!(
            owner, 0,
            "non-dumpable: /proc/{pid}/{file} is owned by root, not uid {}",
            nobody.uid
        );
    }
    let st = s.terminate().await;
    assert!(st.success(), "sidecar exit: {st}\n{}", s.log());
    support::assert_no_panic("the sidecar", &s.log());
}
