//! Service-account token claims: `keyward_broker::claims::decode` on arbitrary text (the
//! projected token file is written by the kubelet, but its content is whatever the API server
//! signed for the pod; the broker only decodes it, Vault validates it).
//!
//! Never panics; deterministic; what it accepts is a three-part token with a base64url JSON
//! payload, and the namespace and service account it returns are the claims' own
//! (`kubernetes.io` first, else the `sub` `system:serviceaccount:NS:SA`, re-read here with
//! `serde_json::Value`), `exp` too; the outcome and error text do not depend on the signature part (so never quote it).
#![no_main]

use base64::Engine;
use keyward_broker::claims::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = decode(text);
    let again = decode(text);
    assert_eq!(
        format!("{first:?}"),
        format!("{again:?}"),
        "decode is not deterministic"
    );
    let parts: Vec<&str> = text.trim().split('.').collect();
    // The signature is Vault's to check: the outcome (and any error text) does not depend on
    // it, so no error can quote it.
    if let [h, p, _] = parts.as_slice() {
        let other = decode(&format!("{h}.{p}.x"));
        assert_eq!(
            format!("{first:?}"),
            format!("{other:?}"),
            "the outcome depends on the signature part"
        );
    }
    match first {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(info) => {
            assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1].trim_end_matches('='))
                .expect("an accepted payload is base64url");
            // serde skips ignored claims without checking their escapes (a lone surrogate in
            // `iss` is accepted): the cross-check needs the whole payload to be valid JSON.
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                return;
            };
            let k8s = &claims["kubernetes.io"];
            let sub = claims["sub"]
                .as_str()
                .and_then(|s| s.strip_prefix("system:serviceaccount:"))
                .and_then(|r| r.split_once(':'));
            let ns = k8s["namespace"].as_str().or(sub.map(|(ns, _)| ns));
            let sa = k8s["serviceaccount"]["name"]
                .as_str()
                .or(sub.map(|(_, sa)| sa));
            assert_eq!(
                Some(info.pod.namespace.as_str()),
                ns,
                "namespace not from the claims: {info:?}"
            );
            assert_eq!(
                Some(info.pod.service_account.as_str()),
                sa,
                "service account not from the claims: {info:?}"
            );
            if let Some(exp) = claims["exp"].as_i64() {
                assert_eq!(info.expires_at, Some(exp));
            }
        }
    }
});
