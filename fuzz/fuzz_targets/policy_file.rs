//! The proxy's policy file: `Policy::parse` never panics, and what it accepts is exactly the
//! file's allow lists, all in the trust domain, each port once.
#![no_main]

use std::collections::HashSet;

use keyward_proxy::policy::{Policy, PolicyFile};
use libfuzzer_sys::fuzz_target;

const TRUST_DOMAIN: &str = "cluster.local";

fuzz_target!(|data: &[u8]| {
    // What `Policy::load_bytes` does with the file's bytes.
    let text = String::from_utf8_lossy(data);
    let Ok(policy) = Policy::parse(&text, TRUST_DOMAIN) else {
        return;
    };
    assert_eq!(
        Policy::parse(&text, TRUST_DOMAIN).ok().as_ref(),
        Some(&policy)
    );

    let file: PolicyFile = serde_yaml_ng::from_str(&text).expect("accepted text is a policy file");
    let mut ports = HashSet::new();
    for p in &file.inbound {
        assert!(ports.insert(p.port), "port {} accepted twice", p.port);
        for a in &p.allow {
            let td = a
                .as_str()
                .strip_prefix("spiffe://")
                .and_then(|r| r.split('/').next());
            assert_eq!(
                td,
                Some(TRUST_DOMAIN),
                "{a} accepted outside the trust domain"
            );
        }
    }
    let expected = Policy::from_ports(file.inbound.into_iter().map(|p| (p.port, p.allow)));
    assert_eq!(policy, expected);
});
