//! SPIFFE IDs and the allow-list patterns that match them.
//!
//! Parsing follows the SPIFFE ID rules a verifier applies: `spiffe` scheme, a lowercase trust
//! domain of `[a-z0-9.-_]`, path segments of `[a-zA-Z0-9.-_]` that are neither empty, `.` nor
//! `..`, no trailing `/`, no query, fragment, port or user info.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit for URIs).
pub const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with spiffe://")]
    Scheme,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain may hold only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChar,
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    #[error("SPIFFE ID path may hold only letters, digits, '.', '-' and '_'")]
    PathChar,
    #[error("SPIFFE ID ends with '/'")]
    TrailingSlash,
    #[error("SPIFFE ID may not hold a query or a fragment")]
    QueryOrFragment,
    #[error("'*' is allowed only as the whole last segment of a pattern")]
    Wildcard,
}

/// A syntactically valid SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://td/path`.
    id: String,
    /// Byte offset of the path (the first `/` after the trust domain), or `id.len()`.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (td, path) = split(s)?;
        if path.contains('*') {
            return Err(IdError::PathChar);
        }
        check_path(path)?;
        Ok(Self {
            id: s.to_owned(),
            path_start: "spiffe://".len() + td.len(),
        })
    }

    /// The Kubernetes workload ID `spiffe://TD/ns/NS/sa/SA`.
    pub fn for_workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain, without the scheme.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_start]
    }

    /// The path, starting with `/`, or empty.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An allow-list entry: an exact SPIFFE ID, or a prefix ending in `/*` that matches one or more
/// further segments (`spiffe://td/ns/frontend/sa/*`, `spiffe://td/ns/frontend/*`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdPattern {
    text: String,
    kind: PatternKind,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    Exact,
    /// Matches IDs that start with this prefix (which ends in `/`) followed by at least one
    /// more segment.
    Prefix(String),
}

impl IdPattern {
    /// Parses a pattern: a SPIFFE ID, optionally with `*` as its whole last segment.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(prefix) = s.strip_suffix("/*") {
            let (_, path) = split(prefix)?;
            if path.contains('*') {
                return Err(IdError::Wildcard);
            }
            check_path(path)?;
            return Ok(Self {
                text: s.to_owned(),
                kind: PatternKind::Prefix(format!("{prefix}/")),
            });
        }
        if s.contains('*') {
            return Err(IdError::Wildcard);
        }
        SpiffeId::parse(s)?;
        Ok(Self {
            text: s.to_owned(),
            kind: PatternKind::Exact,
        })
    }

    /// Whether `id` is allowed by this pattern.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match &self.kind {
            PatternKind::Exact => id.as_str() == self.text,
            PatternKind::Prefix(prefix) => {
                id.as_str().len() > prefix.len() && id.as_str().starts_with(prefix.as_str())
            }
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({})", self.text)
    }
}

impl FromStr for IdPattern {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for IdPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for IdPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Splits `spiffe://td/path` into a validated trust domain and the raw path.
fn split(s: &str) -> Result<(&str, &str), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let rest = s.strip_prefix("spiffe://").ok_or(IdError::Scheme)?;
    if rest.contains('?') || rest.contains('#') {
        return Err(IdError::QueryOrFragment);
    }
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdError::TrustDomainChar);
    }
    Ok((td, path))
}

fn check_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash);
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(IdError::DotSegment);
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(IdError::PathChar);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect(s)
    }

    #[test]
    fn accepts_workload_ids() {
        let i = id("spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(i.trust_domain(), "cluster.local");
        assert_eq!(i.path(), "/ns/shop/sa/orders");
        assert_eq!(
            SpiffeId::for_workload("cluster.local", "shop", "orders").expect("valid"),
            i
        );
        assert_eq!(id("spiffe://td").path(), "");
    }

    #[test]
    fn rejects_bad_ids() {
        for (s, e) in [
            ("", IdError::Empty),
            ("http://td/x", IdError::Scheme),
            ("spiffe:///x", IdError::EmptyTrustDomain),
            ("spiffe://TD/x", IdError::TrustDomainChar),
            ("spiffe://td:8080/x", IdError::TrustDomainChar),
            ("spiffe://user@td/x", IdError::TrustDomainChar),
            ("spiffe://td/a//b", IdError::EmptySegment),
            ("spiffe://td/a/../b", IdError::DotSegment),
            ("spiffe://td/./b", IdError::DotSegment),
            ("spiffe://td/a/", IdError::TrailingSlash),
            ("spiffe://td/", IdError::TrailingSlash),
            ("spiffe://td/a?x=1", IdError::QueryOrFragment),
            ("spiffe://td/a#f", IdError::QueryOrFragment),
            ("spiffe://td/a b", IdError::PathChar),
            ("spiffe://td/a%20b", IdError::PathChar),
            ("spiffe://td/*", IdError::PathChar),
        ] {
            assert_eq!(SpiffeId::parse(s), Err(e), "{s}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong));
    }

    #[test]
    fn patterns_match_exact_and_prefix() {
        let exact = IdPattern::parse("spiffe://td/ns/a/sa/b").expect("valid");
        assert!(exact.matches(&id("spiffe://td/ns/a/sa/b")));
        assert!(!exact.matches(&id("spiffe://td/ns/a/sa/bb")));

        let sa = IdPattern::parse("spiffe://td/ns/frontend/sa/*").expect("valid");
        assert!(sa.matches(&id("spiffe://td/ns/frontend/sa/web")));
        assert!(!sa.matches(&id("spiffe://td/ns/frontend/sa")));
        assert!(!sa.matches(&id("spiffe://td/ns/frontend2/sa/web")));
        assert!(!sa.matches(&id("spiffe://other/ns/frontend/sa/web")));

        let ns = IdPattern::parse("spiffe://td/ns/frontend/*").expect("valid");
        assert!(ns.matches(&id("spiffe://td/ns/frontend/sa/web")));
        assert!(!ns.matches(&id("spiffe://td/ns/frontendx/sa/web")));

        let td = IdPattern::parse("spiffe://td/*").expect("valid");
        assert!(td.matches(&id("spiffe://td/x")));
        assert!(!td.matches(&id("spiffe://td")));
    }

    #[test]
    fn an_id_of_exactly_the_length_limit_is_accepted() {
        let base = "spiffe://td/";
        let at_limit = format!("{base}{}", "a".repeat(MAX_ID_LEN - base.len()));
        assert_eq!(at_limit.len(), MAX_ID_LEN);
        assert!(SpiffeId::parse(&at_limit).is_ok());
        let over = format!("{at_limit}a");
        assert_eq!(SpiffeId::parse(&over), Err(IdError::TooLong));
        // A pattern's limit is its prefix's: every ID it matches is longer than that prefix.
        assert_eq!(
            IdPattern::parse(&format!("{over}/*")),
            Err(IdError::TooLong)
        );
    }

    #[test]
    fn ids_and_patterns_print_and_parse_as_written() {
        let s = "spiffe://td/ns/a/sa/b";
        let i: SpiffeId = s.parse().expect("FromStr");
        assert_eq!(i, id(s));
        assert_eq!(i.as_str(), s);
        assert_eq!(i.to_string(), s);
        assert_eq!(format!("{i:?}"), format!("SpiffeId({s})"));
        assert_eq!(
            "spiffe://td/a b".parse::<SpiffeId>(),
            Err(IdError::PathChar)
        );

        for text in [s, "spiffe://td/ns/a/*"] {
            let p: IdPattern = text.parse().expect("FromStr");
            assert_eq!(p, IdPattern::parse(text).expect("valid"));
            assert_eq!(p.as_str(), text);
            assert_eq!(p.to_string(), text);
            assert_eq!(format!("{p:?}"), format!("IdPattern({text})"));
        }
        assert_eq!(
            "spiffe://td/a*".parse::<IdPattern>(),
            Err(IdError::Wildcard)
        );
    }

    /// Serialises through serde's `Serializer for &mut fmt::Formatter` (strings only), so the
    /// crate needs no serde_json.
    struct Serialized<'a, T>(&'a T);
    impl<T: serde::Serialize> fmt::Display for Serialized<'_, T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.serialize(f)
        }
    }

    fn deserialize<'de, T: serde::Deserialize<'de>>(s: &'de str) -> Result<T, String> {
        use serde::de::IntoDeserializer;
        T::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
    }

    #[test]
    fn ids_and_patterns_serialize_as_their_text_and_deserialize_only_when_valid() {
        let s = "spiffe://td/ns/a/sa/b";
        assert_eq!(Serialized(&id(s)).to_string(), s);
        assert_eq!(deserialize::<SpiffeId>(s), Ok(id(s)));
        assert_eq!(
            deserialize::<SpiffeId>("spiffe://td/*"),
            Err(IdError::PathChar.to_string())
        );

        let p = "spiffe://td/ns/a/*";
        let pattern = IdPattern::parse(p).expect("valid");
        assert_eq!(Serialized(&pattern).to_string(), p);
        assert_eq!(deserialize::<IdPattern>(p), Ok(pattern));
        assert_eq!(
            deserialize::<IdPattern>("spiffe://td/*/x"),
            Err(IdError::Wildcard.to_string())
        );
    }

    #[test]
    fn rejects_bad_patterns() {
        for s in [
            "spiffe://td/ns/*/sa/x",
            "spiffe://td/ns/a*",
            "*",
            "spiffe://*",
            "spiffe://td/a//*",
        ] {
            assert!(IdPattern::parse(s).is_err(), "{s}");
        }
    }
}
