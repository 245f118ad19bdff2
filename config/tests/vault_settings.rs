//! The Vault connection settings of the contract (issue 15 §3): namespace, pinned CA,
//! `tls_server_name`, client certificate. Each rule's error names the setting; the TLS settings
//! added in contract version 3 make a document version 3, and a document without them is
//! written as before.

use keyward_config::{SidecarConfig, CONTRACT_VERSION};

fn doc(vault: &str) -> String {
    format!("vault: {{addr: \"https://vault:8200\", {vault}}}\n")
}

fn error_of(vault: &str) -> String {
    match SidecarConfig::from_yaml(&doc(vault)).and_then(|c| c.validate().map(|_| c)) {
        Ok(_) => panic!("{vault}: accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_vault_tls_and_namespace_settings_are_accepted() {
    for vault in [
        "namespace: team",
        "namespace: team/orders/",
        "tls_server_name: vault.vault.svc",
        "tls_server_name: 10.0.0.7",
        "tls_server_name: \"::1\"",
        "client_cert_file: /c.crt, client_key_file: /c.key",
        "ca_file: /ca.crt",
    ] {
        let c = SidecarConfig::from_yaml(&doc(vault)).expect(vault);
        c.validate().unwrap_or_else(|e| panic!("{vault}: {e}"));
    }
}

#[test]
fn each_wrong_vault_setting_is_refused_naming_it() {
    for (vault, setting) in [
        ("namespace: \"\"", "vault.namespace"),
        ("namespace: \"a//b\"", "vault.namespace"),
        ("namespace: \"../root\"", "vault.namespace"),
        ("namespace: \"team\\nX-Evil: 1\"", "vault.namespace"),
        ("tls_server_name: \"\"", "vault.tls_server_name"),
        ("tls_server_name: \"*.vault.svc\"", "vault.tls_server_name"),
        ("tls_server_name: \"vault svc\"", "vault.tls_server_name"),
        ("tls_server_name: \"-vault\"", "vault.tls_server_name"),
        ("tls_server_name: \"1.2.3\"", "vault.tls_server_name"),
        ("client_cert_file: /c.crt", "vault.client_key_file"),
        ("client_key_file: /c.key", "vault.client_cert_file"),
    ] {
        let e = error_of(vault);
        assert!(e.contains(setting), "{vault}: names {setting}: {e}");
    }
    // The TLS settings mean nothing without TLS.
    for (vault, setting) in [
        ("tls_server_name: vault", "vault.tls_server_name"),
        (
            "client_cert_file: /c, client_key_file: /k",
            "vault.client_cert_file",
        ),
    ] {
        let text =
            format!("vault: {{addr: \"http://vault:8200\", allow_insecure_http: true, {vault}}}\n");
        let e = SidecarConfig::from_yaml(&text)
            .expect("parses")
            .validate()
            .expect_err(vault)
            .to_string();
        assert!(
            e.contains(setting) && e.contains("https://"),
            "{vault}: {e}"
        );
    }
}

#[test]
fn tls_server_name_and_client_certificate_need_contract_version_3_and_nothing_else_does() {
    const { assert!(CONTRACT_VERSION >= 3) };
    for vault in [
        "tls_server_name: vault.test",
        "client_cert_file: /c.crt, client_key_file: /c.key",
    ] {
        let c = SidecarConfig::from_yaml(&doc(vault)).expect(vault);
        assert_eq!(c.required_version(), 3, "{vault}");
        let written = c.with_required_version().to_yaml().expect("yaml");
        assert!(written.starts_with("version: 3\n"), "{written}");
    }
    // Namespace and CA were in version 1: a document with only them stays version 1 (no key).
    let c = SidecarConfig::from_yaml(&doc("namespace: team, ca_file: /ca.crt")).expect("v1");
    assert_eq!(c.required_version(), 1);
    assert!(!c
        .with_required_version()
        .to_yaml()
        .expect("yaml")
        .contains("version"));
}
