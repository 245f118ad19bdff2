//! The inbound allow lists as the proxy reads them: from the config's inline `allow` lists and
//! from `proxy.policy_file` (scripts/mutants.sh `policy` scope: these catch what the unit tests of
//! `policy.rs` left alive).

use keyward_identity::SpiffeId;
use keyward_proxy::policy::PolicyError;
use keyward_proxy::{Policy, ProxyConfig};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("id")
}

const FRONTEND: &str = "spiffe://td/ns/shop/sa/frontend";
const OPS: &str = "spiffe://td/ns/ops/sa/deploy";

#[test]
fn a_config_policy_holds_each_inbound_listeners_allow_list_under_its_port() {
    let cfg: ProxyConfig = serde_yaml_ng::from_str(
        "inbound:\n\
         - {listen: \"0.0.0.0:15443\", forward: \"127.0.0.1:8080\", allow: [\"spiffe://td/ns/shop/*\"]}\n\
         - {listen: \"0.0.0.0:15444\", forward: \"127.0.0.1:8081\", allow: [\"spiffe://td/ns/ops/sa/deploy\"]}\n\
         - {listen: \"0.0.0.0:15445\", forward: \"127.0.0.1:8082\"}\n",
    )
    .expect("proxy config");
    let p = Policy::from_config(&cfg);
    assert_eq!(
        p.allows(15443, &id(FRONTEND)).map(|p| p.as_str()),
        Some("spiffe://td/ns/shop/*")
    );
    assert!(
        p.allows(15443, &id(OPS)).is_none(),
        "port 15443 lists shop only"
    );
    assert_eq!(p.allows(15444, &id(OPS)).map(|p| p.as_str()), Some(OPS));
    assert!(p.allows(15444, &id(FRONTEND)).is_none());
    assert!(
        p.allows(15445, &id(FRONTEND)).is_none(),
        "no allow list: nobody"
    );
    assert!(
        p.allows(8080, &id(FRONTEND)).is_none(),
        "the app's port is not a listener"
    );
    assert_ne!(p, Policy::default());
}

#[test]
fn a_policy_file_loads_with_the_bytes_it_was_parsed_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    let text = format!("inbound:\n  - port: 15443\n    allow: [\"{FRONTEND}\"]\n");
    std::fs::write(&path, &text).expect("write");

    let p = Policy::load(&path, "td").expect("valid policy");
    assert_eq!(
        p.allows(15443, &id(FRONTEND)).map(|p| p.as_str()),
        Some(FRONTEND)
    );
    assert!(p.allows(15443, &id(OPS)).is_none());

    let (q, bytes) = Policy::load_bytes(&path, "td").expect("valid policy");
    assert_eq!(q, p, "load and load_bytes read the same policy");
    assert_eq!(bytes, text.as_bytes(), "the bytes are the file's");
}

#[test]
fn a_missing_or_invalid_policy_file_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.yaml");
    for err in [
        Policy::load(&missing, "td").expect_err("missing file"),
        Policy::load_bytes(&missing, "td")
            .map(|(p, _)| p)
            .expect_err("missing file"),
    ] {
        assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
        let said = err.to_string();
        assert!(
            said.starts_with("cannot read policy file ") && said.contains("absent.yaml"),
            "{said}"
        );
    }

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "inbound: [{port: 1, allow: [\"spiffe://other/x\"]}]").expect("write");
    for err in [
        Policy::load(&bad, "td").expect_err("other trust domain"),
        Policy::load_bytes(&bad, "td")
            .map(|(p, _)| p)
            .expect_err("other trust domain"),
    ] {
        let said = err.to_string();
        assert!(matches!(err, PolicyError::Invalid { .. }), "{err:?}");
        assert!(
            said.contains("bad.yaml") && said.contains("is not in trust domain td"),
            "{said}"
        );
    }
}
