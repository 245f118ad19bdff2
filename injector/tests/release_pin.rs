//! The image the injector injects by default (the release `release/image.json` pins) must read the
//! sidecar config the injector writes by default. Otherwise every pod injected with the defaults
//! gets a sidecar that refuses its own config (a newer contract version) and never starts: the
//! release must be re-pinned (`scripts/release.sh --pin`, docs/release.md) when the contract moves.

use keyward_injector::config::InjectorConfig;
use std::path::Path;
use std::process::Command;

/// The contract version the code at `rev` reads: its `CONTRACT_VERSION`, or 1 for code older than
/// the constant (version 1 is the unversioned contract).
fn contract_version_at(repo: &Path, rev: &str) -> u32 {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["show", &format!("{rev}:config/src/sidecar.rs")])
        .output()
        .expect("git (install git; the test reads the pinned commit's source)");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not exist") || err.contains("exists on disk, but not in"),
            "git show {rev}:config/src/sidecar.rs failed (a shallow clone? git fetch --unshallow): {err}"
        );
        // Before the config crate existed the contract had no version: 1.
        return 1;
    }
    let text = String::from_utf8(out.stdout).expect("UTF-8 source");
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const CONTRACT_VERSION: u32 = ")?
                .strip_suffix(';')?
                .parse()
                .ok()
        })
        .unwrap_or(1)
}

#[test]
fn the_pinned_release_reads_the_contract_version_the_injector_writes_by_default() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("release/image.json")).expect("release/image.json"),
    )
    .expect("JSON");
    let rev = release["revision"].as_str().expect("revision");
    let pinned = contract_version_at(&repo, rev);
    let writes = InjectorConfig::default().sidecar_contract_version;
    assert!(
        pinned >= writes,
        "the default image (release {rev}) reads sidecar config contract version {pinned}, but the \
         injector writes version {writes} by default: every injected pod's sidecar would refuse \
         its config. Re-pin the release (scripts/release.sh --pin, then sign: docs/release.md)"
    );
}
