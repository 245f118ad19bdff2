//! The sidecar config the injector writes into `KEYWARD_CONFIG` is one the sidecar starts with:
//! every golden injected pod's config is parsed by the broker's and the proxy's own config
//! loaders, and the annotations that map to config fields arrive as the values they name.
//! Pure: no servers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use keyward_broker::config::Config;
use keyward_proxy::config::{IdentityConfig, ProxyConfig};
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("injector/tests/golden")
        .join(format!("{name}.pod.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden pod is JSON")
}

/// The `KEYWARD_CONFIG` env value of the pod's keyward container, parsed as the sidecar would.
fn sidecar_config(pod: &Value) -> Config {
    let containers = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["containers"].as_array())
        .flatten();
    let keyward = containers
        .into_iter()
        .find(|c| c["name"] == "keyward")
        .expect("the pod has a keyward container");
    let yaml = keyward["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "KEYWARD_CONFIG")
        .and_then(|e| e["value"].as_str())
        .expect("KEYWARD_CONFIG is set");
    // No KEYWARD_* overrides: the config must stand on its own.
    let config = Config::from_yaml(yaml, &BTreeMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("the broker refuses the injected config: {e}\n{yaml}"));
    if config.identity.is_some() || config.proxy.is_some() {
        let identity = IdentityConfig::from_value(config.identity.as_ref())
            .unwrap_or_else(|e| panic!("the proxy refuses the injected identity: {e}\n{yaml}"));
        ProxyConfig::from_value(config.proxy.as_ref(), &identity.trust_domain)
            .unwrap_or_else(|e| panic!("the proxy refuses the injected proxy config: {e}\n{yaml}"));
    }
    config
}

#[test]
fn every_golden_injected_pod_has_a_config_the_sidecar_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("injector/tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let file = entry.expect("entry").file_name();
        if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pod.json")) {
            sidecar_config(&golden(name));
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} golden pods in {}",
        dir.display()
    );
}

#[test]
fn kv_refresh_annotation_becomes_the_brokers_kv_refresh() {
    // full.review.json carries keyward.io/kv-refresh: 30s; minimal has none.
    assert_eq!(
        sidecar_config(&golden("full")).kv_refresh,
        Duration::from_secs(30)
    );
    assert_eq!(
        sidecar_config(&golden("minimal")).kv_refresh,
        Duration::from_secs(60),
        "without the annotation the broker's default applies"
    );
}
