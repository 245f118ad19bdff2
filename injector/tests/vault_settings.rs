//! The injector's Vault connection settings (issue 15 §3): namespace, `tls_server_name` and a
//! client certificate Secret reach every sidecar's config, the Secret is mounted into the
//! sidecar only, each wrong setting is refused at load naming it, and the built-in default
//! image is the release `release/image.json` pins.

mod common;

use common::{mutate_pod, one_container_pod, op_values};
use keyward_config::SidecarConfig;
use keyward_injector::config::{InjectorConfig, DEFAULT_IMAGE};
use serde_json::{json, Value};

/// The patch for a one-container pod with one secret, as JSON values.
fn inject(cfg: &InjectorConfig) -> Vec<Value> {
    let pod = one_container_pod(json!({"keyward.io/secret-db": "secret/data/db"}));
    op_values(&mutate_pod(&pod, cfg).expect("injected"))
}

/// Every object the patch adds whose `name` is `name`, anywhere in its values.
fn named<'a>(v: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(name) {
                out.push(v);
            }
            m.values().for_each(|x| named(x, name, out));
        }
        Value::Array(a) => a.iter().for_each(|x| named(x, name, out)),
        _ => {}
    }
}

fn sidecar_config(ops: &[Value]) -> SidecarConfig {
    let mut envs = Vec::new();
    for op in ops {
        named(&op["value"], "KEYWARD_CONFIG", &mut envs);
    }
    let text = envs[0]["value"].as_str().expect("KEYWARD_CONFIG");
    let c = SidecarConfig::from_yaml(text).expect("a config the sidecar reads");
    c.validate().expect("valid");
    c
}

fn tls_config() -> InjectorConfig {
    InjectorConfig::from_yaml(
        "vault:\n  addr: https://10.0.0.7:8200\n  namespace: team/orders\n  \
         tls_server_name: vault.vault.svc\n  ca_config_map: {name: vault-ca}\n  \
         client_cert_secret: {name: keyward-vault-client}\n",
    )
    .expect("valid injector config")
}

#[test]
fn namespace_server_name_and_client_certificate_reach_every_sidecar_config() {
    let ops = inject(&tls_config());
    let c = sidecar_config(&ops);
    assert_eq!(c.vault.namespace.as_deref(), Some("team/orders"));
    assert_eq!(c.vault.tls_server_name.as_deref(), Some("vault.vault.svc"));
    assert_eq!(
        c.vault.client_cert_file.as_deref(),
        Some(std::path::Path::new("/etc/keyward/vault-client/tls.crt"))
    );
    assert_eq!(
        c.vault.client_key_file.as_deref(),
        Some(std::path::Path::new("/etc/keyward/vault-client/tls.key"))
    );
    assert_eq!(c.version, 3, "the TLS settings are contract version 3");
    // Without them the document is what it was.
    let plain = sidecar_config(&inject(&InjectorConfig::default()));
    assert_eq!(plain.version, 2);
    assert!(plain.vault.namespace.is_none() && plain.vault.tls_server_name.is_none());
}

#[test]
fn the_client_certificate_secret_is_mounted_into_the_sidecar_only() {
    let ops = inject(&tls_config());
    let all = Value::Array(ops.clone());
    let mut vols = Vec::new();
    named(&all, "keyward-vault-client", &mut vols);
    let volume = vols
        .iter()
        .find(|v| v.get("secret").is_some())
        .expect("the Secret volume");
    assert_eq!(volume["secret"]["secretName"], "keyward-vault-client");
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}])
    );
    // Mounted once: by the sidecar container, read-only.
    let mounts: Vec<_> = vols
        .iter()
        .filter(|v| v.get("mountPath").is_some())
        .collect();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0]["mountPath"], "/etc/keyward/vault-client");
    assert_eq!(mounts[0]["readOnly"], true);
    let mut sidecars = Vec::new();
    named(&all, "keyward", &mut sidecars);
    let sidecar = sidecars
        .iter()
        .find(|c| c.get("image").is_some())
        .expect("the sidecar container");
    assert!(sidecar["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == "keyward-vault-client"));
}

#[test]
fn each_wrong_vault_setting_is_refused_at_load_naming_it() {
    for (vault, setting) in [
        ("namespace: '../x'", "vault.namespace"),
        ("namespace: 'a b'", "vault.namespace"),
        ("tls_server_name: '*.vault.svc'", "vault.tls_server_name"),
        (
            "client_cert_secret: {name: 'Not_A_Name'}",
            "vault.client_cert_secret.name",
        ),
        (
            "client_cert_secret: {name: c, cert_key: 'a/b'}",
            "vault.client_cert_secret.cert_key",
        ),
        (
            "client_cert_secret: {name: c, cert_key: k, key_key: k}",
            "vault.client_cert_secret.key_key",
        ),
    ] {
        let text = format!("vault:\n  addr: https://vault:8200\n  {vault}\n");
        let e = InjectorConfig::from_yaml(&text)
            .expect_err(vault)
            .to_string();
        assert!(e.contains(setting), "{vault}: names {setting}: {e}");
    }
    // Only with TLS, and only for a sidecar image that reads contract version 3.
    let http =
        "vault: {addr: 'http://vault:8200', allow_insecure_http: true, tls_server_name: v}\n";
    let e = InjectorConfig::from_yaml(http)
        .expect_err("http")
        .to_string();
    assert!(
        e.contains("vault.tls_server_name") && e.contains("https://"),
        "{e}"
    );
    let old_image = "vault: {addr: 'https://vault:8200', client_cert_secret: {name: c}}\n\
                     sidecar_contract_version: 2\n";
    let e = InjectorConfig::from_yaml(old_image)
        .expect_err("v2")
        .to_string();
    assert!(
        e.contains("vault.client_cert_secret") && e.contains("contract version 3"),
        "{e}"
    );
}

#[test]
fn the_built_in_default_image_is_the_release_digest() {
    let release: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../release/image.json"
        ))
        .expect("release/image.json"),
    )
    .expect("JSON");
    let digest = release["digest"].as_str().expect("digest");
    assert_eq!(
        DEFAULT_IMAGE,
        format!("ghcr.io/keyward/keyward@{digest}"),
        "injector/src/config.rs DEFAULT_IMAGE must be the image release/image.json pins"
    );
    assert_eq!(InjectorConfig::default().image, DEFAULT_IMAGE);
    InjectorConfig::default()
        .validate()
        .expect("the default validates");
}

/// The outcome of a pod with `annotations` under `cfg`: the sidecar config, or the error.
fn try_inject(cfg: &InjectorConfig, annotations: Value) -> Result<SidecarConfig, String> {
    let ops = mutate_pod(&one_container_pod(annotations), cfg).map_err(|e| e.to_string())?;
    Ok(sidecar_config(&op_values(&ops)))
}

#[test]
fn a_pods_vault_namespace_is_refused_unless_the_operator_allows_it_and_then_replaces_the_clusters()
{
    let pod_ns =
        json!({"keyward.io/secret-db": "secret/data/db", "keyward.io/vault-namespace": "team-b"});
    let cfg = InjectorConfig::from_yaml("vault: {addr: 'https://vault:8200', namespace: team-a}\n")
        .expect("config");
    let e = try_inject(&cfg, pod_ns.clone()).expect_err("not allowed by default");
    assert!(
        e.contains("keyward.io/vault-namespace") && e.contains("policy.allow_pod_vault_namespace"),
        "{e}"
    );
    // Without the annotation: the cluster's namespace.
    let c = try_inject(&cfg, json!({"keyward.io/secret-db": "secret/data/db"})).expect("pod");
    assert_eq!(c.vault.namespace.as_deref(), Some("team-a"));
    let allowed = InjectorConfig::from_yaml(
        "vault: {addr: 'https://vault:8200', namespace: team-a}\npolicy: {allow_pod_vault_namespace: true}\n",
    )
    .expect("config");
    let c = try_inject(&allowed, pod_ns).expect("allowed");
    assert_eq!(c.vault.namespace.as_deref(), Some("team-b"));
    assert_eq!(c.version, 2, "the namespace was in contract version 1");
    // A value that is not a namespace is refused naming the annotation, allowed or not.
    let e = try_inject(
        &allowed,
        json!({"keyward.io/secret-db": "secret/data/db", "keyward.io/vault-namespace": "../root"}),
    )
    .expect_err("not a namespace");
    assert!(
        e.contains("keyward.io/vault-namespace") && e.contains("../root"),
        "{e}"
    );
}

#[test]
fn an_app_container_mounting_the_client_certificate_volume_is_refused() {
    let pod = common::pod(
        json!({"keyward.io/secret-db": "secret/data/db"}),
        json!([{"name": "app", "image": "app:1",
            "volumeMounts": [{"name": "keyward-vault-client", "mountPath": "/x"}]}]),
    );
    let Err(e) = mutate_pod(&pod, &tls_config()) else {
        panic!("admitted a pod whose app container mounts the client certificate");
    };
    let e = e.to_string();
    assert!(
        e.contains("spec.containers[0].volumeMounts[0]") && e.contains("keyward-vault-client"),
        "{e}"
    );
}
