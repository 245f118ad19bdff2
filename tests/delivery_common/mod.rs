//! Set-up shared by the rendered-files tests (`delivery_files.rs`, `delivery_certs.rs`): a
//! files directory made the way the kubelet makes an emptyDir, and `keyward broker` run with a
//! config it must refuse.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// `parent/name`, created world-writable as an emptyDir is: the sidecar writes there whatever
/// its uid.
pub fn files_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// A pod's volume (removed when the `TempDir` is dropped) with the container `app`'s files
/// directory in it.
pub fn app_files() -> (TempDir, PathBuf) {
    let vol = tempfile::tempdir().expect("tempdir");
    let dir = files_dir(vol.path(), "app");
    (vol, dir)
}

/// `keyward broker` with a config whose `secrets:` and `files:` are `sections(dir)` (`dir`: the
/// container `app`'s files directory; Vault is an address nothing listens on) refuses to start:
/// it exits unsuccessfully, its stderr contains `says`, and nothing is written in `dir`.
/// `what` names the case in the failure messages.
pub fn broker_refuses(what: &str, says: &str, sections: impl FnOnce(&Path) -> String) {
    let (tmp, dir) = app_files();
    let config = tmp.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "vault: {{addr: 'http://127.0.0.1:1', allow_insecure_http: true}}\naudit: {{file: {}}}\nsocket: {{path: {}}}\n{}",
            tmp.path().join("audit.log").display(),
            tmp.path().join("s.sock").display(),
            sections(&dir)
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["broker", "--config"])
        .arg(&config)
        .output()
        .expect("run keyward broker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: started\n{err}");
    assert!(err.contains(says), "{what}: expected {says:?} in\n{err}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "{what}: nothing written"
    );
}
