//! SPIFFE IDs and allow-list patterns: parsing never panics; a parsed ID prints as it was
//! written and parses back to itself; a pattern matches only what its text says.
//!
//! Input: `ID_OR_PATTERN` or `PATTERN\nID` (the second line is matched against the first).
#![no_main]

use keyward_identity::{IdPattern, SpiffeId, MAX_ID_LEN};
use libfuzzer_sys::fuzz_target;

fn trust_domain_of(text: &str) -> &str {
    text.strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, text));

    for s in [first, second] {
        let Ok(id) = SpiffeId::parse(s) else {
            continue;
        };
        // Display is the text as written, and parses back to the same ID.
        let shown = id.to_string();
        assert_eq!(shown, s);
        assert_eq!(SpiffeId::parse(&shown).as_ref(), Ok(&id));
        assert_eq!(id.as_str(), s);
        assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
        // The rules, checked independently of the parser.
        assert!(s.len() <= MAX_ID_LEN);
        assert!(!id.trust_domain().is_empty());
        assert!(id
            .trust_domain()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        let path = id.path();
        assert!(path.is_empty() || path.starts_with('/'));
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{s:?}");
                assert!(seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }
        // serde goes through the same parser.
        let json = serde_json::to_string(&id).expect("serialize");
        let back: SpiffeId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        // Every ID is also an exact pattern that matches itself and nothing else.
        let exact = IdPattern::parse(s).expect("an ID is a valid pattern");
        assert!(exact.matches(&id));
        assert_eq!(exact.to_string(), s);
    }

    if let Ok(pattern) = IdPattern::parse(first) {
        let shown = pattern.to_string();
        assert_eq!(shown, first);
        assert_eq!(IdPattern::parse(&shown).as_ref(), Ok(&pattern));
        if let Ok(id) = SpiffeId::parse(second) {
            let expected = match first.strip_suffix('*') {
                // `.../*` matches one or more further segments below the prefix.
                Some(prefix) => second.len() > prefix.len() && second.starts_with(prefix),
                None => first == second,
            };
            assert_eq!(pattern.matches(&id), expected, "{first:?} vs {second:?}");
            if expected {
                assert_eq!(trust_domain_of(first), id.trust_domain());
            }
        }
    }
});
