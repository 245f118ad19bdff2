//! A sidecar refuses a config newer than it knows, with a message naming both versions and what
//! to do, before it binds anything or calls Vault (issue 15 §5); an older config (no version)
//! is read as version 1.

mod support;

use std::process::{Command, Stdio};

#[test]
fn the_sidecar_refuses_a_newer_config_naming_both_versions() {
    // Far beyond any version this build knows (keyward_config::CONTRACT_VERSION).
    let newer = 1000;
    let doc = format!(
        "version: {newer}\nvault: {{addr: \"http://127.0.0.1:9\"}}\nsomething_new: {{a: 1}}\n"
    );
    for command in ["sidecar", "broker"] {
        let out = Command::new(support::keyward_bin())
            .arg(command)
            .env_clear()
            .env("KEYWARD_CONFIG", &doc)
            .stdin(Stdio::null())
            .output()
            .expect("run keyward");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "version: the document is contract version {newer}"
            )) && stderr.contains("newer injector")
                && !stderr.contains("something_new"),
            "{command}: {stderr}"
        );
    }
}
