//! Config contract versions (issue 15 §5): no version is 1, a sidecar reads every version up to
//! its own and refuses a newer one naming both, a document is written in the lowest version that
//! holds it (version 1 without the key, which older sidecars do not know).

use keyward_config::{ContainerSocket, MetricsConfig, SidecarConfig, CONTRACT_VERSION};

const V1: &str = "vault: {addr: https://v:8200}\nsocket: {path: /run/keyward/broker.sock, group: 2000}\naudit: {file: /run/keyward/audit.log, stdout: true}\n";

#[test]
fn a_document_without_a_version_is_version_1_and_reads() {
    let c = SidecarConfig::from_yaml(V1).expect("an older injector's document");
    assert_eq!(c.version, 1);
    c.validate().expect("valid");
    let explicit = SidecarConfig::from_yaml(&format!("version: 1\n{V1}")).expect("version 1");
    assert_eq!(explicit, c);
}

#[test]
fn every_version_up_to_the_current_one_reads() {
    for v in 1..=CONTRACT_VERSION {
        let c = SidecarConfig::from_yaml(&format!("version: {v}\n{V1}")).expect("reads");
        assert_eq!(c.version, v);
    }
}

#[test]
fn a_newer_document_is_refused_naming_both_versions_before_its_new_keys() {
    let newer = CONTRACT_VERSION + 1;
    let doc = format!("version: {newer}\n{V1}something_new: {{a: 1}}\n");
    let e = SidecarConfig::from_yaml(&doc).expect_err("newer than this sidecar");
    assert_eq!(e.setting(), Some("version"), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("contract version {newer}"))
            && text.contains(&format!("versions 1 to {CONTRACT_VERSION}"))
            && text.contains("newer injector"),
        "{text}"
    );
    for bad in ["0", "-1", "two", "1.5"] {
        let e = SidecarConfig::from_yaml(&format!("version: {bad}\n{V1}")).expect_err(bad);
        assert_eq!(e.setting(), Some("version"), "{bad}: {e}");
    }
}

#[test]
fn a_document_is_written_in_the_lowest_version_that_holds_it() {
    let plain = SidecarConfig::from_yaml(V1)
        .expect("v1")
        .with_required_version();
    assert_eq!(plain.version, 1);
    let yaml = plain.to_yaml().expect("yaml");
    assert!(
        !yaml.contains("version"),
        "an older sidecar reads it: {yaml}"
    );

    let mut c = plain.clone();
    c.socket.containers.push(ContainerSocket {
        name: "app".into(),
        path: "/run/keyward/c/app/broker.sock".into(),
    });
    let c = c.with_required_version();
    assert_eq!(c.version, 2);
    let yaml = c.to_yaml().expect("yaml");
    assert!(yaml.starts_with("version: 2\n"), "{yaml}");
    assert_eq!(SidecarConfig::from_yaml(&yaml).expect("reads back"), c);

    let mut m = plain;
    m.metrics = Some(MetricsConfig {
        listen: "0.0.0.0:15091".parse().expect("addr"),
    });
    assert_eq!(m.required_version(), 2);
}
