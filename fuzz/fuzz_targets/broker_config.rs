//! The sidecar's configuration: `Config::from_yaml` never panics, and what it accepts passes
//! its own validation and the rules the socket API relies on. The `identity` and `proxy`
//! sections are the contract's types (`keyward_config`), parsed and checked with the rest of the
//! document; an accepted config survives a round trip through its serialization unchanged.
//!
//! Input: `YAML` or `YAML\0KEYWARD_SECRETS` (the environment's secret list).
#![no_main]

use std::collections::{BTreeMap, HashSet};

use keyward_broker::config::SidecarConfig;
use keyward_broker::config::{valid_name, valid_vault_path, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = BTreeMap::new();
    let yaml = match text.split_once('\0') {
        Some((yaml, secrets)) => {
            env.insert("KEYWARD_SECRETS".to_owned(), secrets.to_owned());
            env.insert(
                "KEYWARD_VAULT_ADDR".to_owned(),
                "http://127.0.0.1:8200".to_owned(),
            );
            yaml
        }
        None => text,
    };
    let Ok(config) = Config::from_yaml(yaml, &env) else {
        return;
    };
    config
        .validate()
        .expect("an accepted config validates again");
    let addr = config.vault.addr.trim();
    assert!(addr.starts_with("http://") || addr.starts_with("https://"));
    let mut names = HashSet::new();
    for s in &config.secrets {
        assert!(valid_name(&s.name), "{:?}", s.name);
        assert!(names.insert(s.name.as_str()), "duplicate {:?}", s.name);
        assert!(valid_vault_path(&s.path), "{:?}", s.path);
        assert!(s.path.split('/').all(|seg| seg != ".." && seg != "."));
        assert_eq!(config.secret(&s.name).map(|x| &x.path), Some(&s.path));
    }
    let mode = config.socket.mode_bits();
    assert!(mode <= 0o777 && mode & 0o600 == 0o600, "mode {mode:o}");
    assert!(!config.auth.mount().is_empty());

    let proxy = config.proxy_or_default();
    match &config.identity {
        Some(identity) => {
            assert!(identity.ttl() >= std::time::Duration::from_secs(10));
            proxy
                .validate(&identity.trust_domain)
                .expect("an accepted proxy section validates again");
        }
        None => assert!(proxy.inbound.is_empty() && proxy.outbound.is_empty()),
    }
    assert!(proxy.admin.ip().is_loopback());

    // What the injector would write for it reads back as the same value.
    let yaml = config.to_yaml().expect("an accepted config serializes");
    let back = SidecarConfig::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("the written config does not read back: {e}\n{yaml}"));
    assert_eq!(&back, config.contract(), "{yaml}");
});
