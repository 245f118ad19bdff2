//! The audit log's retention settings in the contract: read, checked once naming the setting,
//! written only when set, and only in contract version 2 (an older sidecar does not know them).

use std::time::Duration;

use keyward_config::SidecarConfig;

const BASE: &str = "vault: {addr: https://v:8200}\nsocket: {path: /run/keyward/broker.sock}\n";

fn doc(audit: &str) -> String {
    format!("{BASE}audit: {{file: /run/keyward/audit.log{audit}}}\n")
}

#[test]
fn retention_settings_are_read_and_need_contract_version_2() {
    let c = SidecarConfig::from_yaml(&doc(
        ", max_bytes: 1048576, volume_percent: 40, segments: 3, summary_interval: 5m",
    ))
    .expect("reads");
    c.validate().expect("valid");
    assert_eq!(c.audit.max_bytes, Some(1_048_576));
    assert_eq!(c.audit.volume_percent, Some(40));
    assert_eq!(c.audit.segments, Some(3));
    assert_eq!(c.audit.summary_interval, Some(Duration::from_secs(300)));
    assert_eq!(c.required_version(), 2);
    let written = c.clone().with_required_version().to_yaml().expect("writes");
    assert!(written.starts_with("version: 2\n"), "{written}");
    let back = SidecarConfig::from_yaml(&written).expect("reads back");
    assert_eq!(back.audit, c.audit);
}

#[test]
fn without_retention_settings_nothing_is_written_and_version_1_holds() {
    let c = SidecarConfig::from_yaml(&doc("")).expect("reads");
    assert_eq!(c.required_version(), 1);
    let written = c.to_yaml().expect("writes");
    for key in [
        "max_bytes",
        "volume_percent",
        "segments",
        "summary_interval",
    ] {
        assert!(!written.contains(key), "{key} written unset:\n{written}");
    }
}

#[test]
fn each_out_of_range_retention_setting_is_refused_naming_it() {
    for (extra, setting) in [
        (", max_bytes: 1000", "audit.max_bytes"),
        (", volume_percent: 0", "audit.volume_percent"),
        (", volume_percent: 101", "audit.volume_percent"),
        (", segments: 0", "audit.segments"),
        (", segments: 65", "audit.segments"),
        (", summary_interval: 10ms", "audit.summary_interval"),
    ] {
        let c = SidecarConfig::from_yaml(&doc(extra)).expect("parses");
        let e = c.validate().expect_err(extra);
        assert_eq!(e.setting(), Some(setting), "{extra}: {e}");
    }
}
