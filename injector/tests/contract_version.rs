//! The injector writes the config contract version and refuses to write one the sidecar image
//! cannot read (issue 15 §5).

mod common;

use common::{mutate_pod, one_container_pod};
use keyward_injector::config::InjectorConfig;
use keyward_injector::mutate::MutateError;
use serde_json::json;

fn inject(cfg: &InjectorConfig) -> Result<String, MutateError> {
    let ops = mutate_pod(
        &one_container_pod(json!({"keyward.io/secret-db": "secret/data/db"})),
        cfg,
    )?;
    Ok(serde_json::to_string(&ops).expect("json"))
}

#[test]
fn the_injected_config_carries_its_version_first() {
    let ops = inject(&InjectorConfig::default()).expect("injected");
    assert!(
        ops.contains(r#""value":"version: 2\nvault:"#),
        "KEYWARD_CONFIG starts with its version: {ops}"
    );
}

#[test]
fn a_config_the_sidecar_image_cannot_read_is_refused_naming_both_versions() {
    let cfg = InjectorConfig {
        sidecar_contract_version: 1,
        ..InjectorConfig::default()
    };
    // Refused at load (`sidecar_contract_version_1_is_refused_at_load_naming_why`); a config
    // that skipped validation is still refused per pod.
    let e = inject(&cfg).expect_err("an image that reads only version 1");
    let text = e.to_string();
    assert!(
        text.contains("needs config contract version 2")
            && text.contains("reads only up to version 1")
            && text.contains("sidecar_contract_version"),
        "{text}"
    );
}

#[test]
fn a_sidecar_contract_version_this_injector_does_not_know_is_refused() {
    for v in [0, keyward_config::CONTRACT_VERSION + 1] {
        let cfg = InjectorConfig {
            sidecar_contract_version: v,
            ..InjectorConfig::default()
        };
        let e = cfg.validate().expect_err("unknown version");
        assert!(
            e.to_string().contains("sidecar_contract_version"),
            "{v}: {e}"
        );
    }
}

#[test]
fn sidecar_contract_version_1_is_refused_at_load_naming_why() {
    // Every pod needs version 2 (per-container sockets, the metrics listener): a setting of 1
    // would refuse every pod, so the config itself is refused, saying what to do.
    let cfg = InjectorConfig {
        sidecar_contract_version: 1,
        ..InjectorConfig::default()
    };
    let e = cfg.validate().expect_err("version 1").to_string();
    assert!(
        e.contains("sidecar_contract_version")
            && e.contains("per-container sockets")
            && e.contains("metrics listener")
            && e.contains("injector release that matches"),
        "{e}"
    );
    for v in 2..=keyward_config::CONTRACT_VERSION {
        let cfg = InjectorConfig {
            sidecar_contract_version: v,
            ..InjectorConfig::default()
        };
        cfg.validate().unwrap_or_else(|e| panic!("{v}: {e}"));
        inject(&cfg).unwrap_or_else(|e| panic!("{v}: every pod is injected: {e}"));
    }
}
