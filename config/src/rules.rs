//! Syntax rules for the values that cross from the injector into the sidecar's config.

/// Longest Vault API path accepted, in bytes.
pub const MAX_VAULT_PATH_LEN: usize = 512;
/// Longest secret name on the socket API, in bytes.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Longest single key of a secret's data, in bytes.
pub const MAX_SECRET_KEY_LEN: usize = 256;

/// The Vault path rule in words, for error messages on both sides.
pub const VAULT_PATH_RULE: &str = "a Vault API path such as secret/data/db: at most 512 bytes, \
     at least two '/'-separated segments of letters, digits, '.', '_', '-', '@', \
     no leading '/', no empty, '.' or '..' segment";

/// A relative Vault API path: `MOUNT/REST`, at most [`MAX_VAULT_PATH_LEN`] bytes, at least two
/// segments, none empty, `.` or `..`, each of `[A-Za-z0-9._@-]` (so no query, fragment or
/// percent-encoding can ride along into the request URL).
pub fn valid_vault_path(path: &str) -> bool {
    path.len() <= MAX_VAULT_PATH_LEN
        && path.split('/').count() >= 2
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'))
        })
}

/// A secret's name on the socket API: 1–[`MAX_SECRET_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`,
/// not `.` or `..` (it is a URL path segment).
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One key of a secret's data (`PATH#KEY`): 1–[`MAX_SECRET_KEY_LEN`] printable ASCII bytes, no
/// space and no `#`.
pub fn valid_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_SECRET_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

/// Whether an allow-list pattern can only match IDs of `trust_domain` (the proxy refuses, and
/// the injector does not admit, a pattern of another trust domain).
pub fn pattern_in_domain(p: &keyward_identity::IdPattern, trust_domain: &str) -> bool {
    let rest = p.as_str().strip_prefix("spiffe://").unwrap_or_default();
    let td = rest.split('/').next().unwrap_or_default();
    td == trust_domain
}

/// Splits `HOST:PORT` (IPv6 in brackets); the port is 1-65535.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("expected HOST:PORT with a port of 1-65535, got {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("expected HOST:PORT, got {s:?}"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_paths() {
        for good in ["secret/data/db", "database/creds/app", "pki/issue/web@v2"] {
            assert!(valid_vault_path(good), "{good}");
        }
        let long_ok = format!("secret/{}", "a".repeat(MAX_VAULT_PATH_LEN - 7));
        assert!(valid_vault_path(&long_ok));
        let too_long = format!("secret/{}", "a".repeat(MAX_VAULT_PATH_LEN - 6));
        for bad in [
            "",
            "secret",
            "/secret/data/db",
            "secret//db",
            "secret/./db",
            "secret/../db",
            "secret/data/db?x=1",
            "secret/data/db#k",
            "secret/data/d%2e",
            "secret/data/db/",
            too_long.as_str(),
        ] {
            assert!(!valid_vault_path(bad), "{bad}");
        }
    }

    #[test]
    fn names_and_keys() {
        assert!(valid_secret_name("db-password_1.v2"));
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            &"x".repeat(MAX_SECRET_NAME_LEN + 1),
        ] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
        assert!(valid_secret_key("password"));
        assert!(valid_secret_key("tls.crt"));
        for bad in ["", "a b", "a#b", "é", &"k".repeat(MAX_SECRET_KEY_LEN + 1)] {
            assert!(!valid_secret_key(bad), "{bad}");
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.b:1"), Ok(("a.b", 1)));
        assert_eq!(split_host_port("[::1]:8"), Ok(("::1", 8)));
        assert!(split_host_port("a:0").is_err());
        assert!(split_host_port(":5").is_err());
        assert!(split_host_port("no-port").is_err());
    }

    #[test]
    fn patterns_in_their_trust_domain() {
        let p = |s: &str| keyward_identity::IdPattern::parse(s).expect("pattern");
        assert!(pattern_in_domain(&p("spiffe://td/ns/a/*"), "td"));
        assert!(pattern_in_domain(&p("spiffe://td/ns/a/sa/b"), "td"));
        assert!(!pattern_in_domain(&p("spiffe://other/ns/a/*"), "td"));
        assert!(!pattern_in_domain(&p("spiffe://td.x/ns/a/*"), "td"));
    }
}
