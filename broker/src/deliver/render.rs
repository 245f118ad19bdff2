//! Rendering a file's content: pure, from the file's spec and the values of the secrets it
//! reads to bytes. No I/O, no clock.
//!
//! - `secret` (+ `key`): the value of one key of the secret's data, a JSON string as its text
//!   and any other JSON value as JSON (what `GET /v1/secrets/NAME/KEY` serves); without `key`
//!   the secret must have exactly one key.
//! - `template`: a minijinja template (strict: an undefined value is an error, no escaping)
//!   whose one variable is `secrets`: for each secret it reads, under its name with `-` written
//!   `_`, `data` (the data map), `version` and `lease_expires` (RFC 3339, or none).

use std::collections::BTreeMap;

use keyward_config::FileSpec;
use serde::Serialize;
use zeroize::Zeroizing;

/// What a render sees of one secret.
#[derive(Serialize)]
pub struct SecretView {
    /// The secret's data (only the declared key for a secret declared with `#KEY`).
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The broker's version of the value.
    pub version: u64,
    /// When its lease ends, RFC 3339; `None` for a secret without a lease.
    pub lease_expires: Option<String>,
}

impl std::fmt::Debug for SecretView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretView")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .field("lease_expires", &self.lease_expires)
            .finish()
    }
}

/// The opened values (a certificate's private key among them) are wiped when the view is
/// dropped, as the source's value is (`crate::source::Fetched`): a render opens them again
/// from the sealed cache each time.
impl Drop for SecretView {
    fn drop(&mut self) {
        self.data.values_mut().for_each(crate::secret::scrub_json);
    }
}

/// Why a file cannot be rendered. The text names the file, the secret and the key; it never
/// holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file {file}: {reason}")]
pub struct RenderError {
    /// The file's name (`keyward.io/file-NAME`).
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

/// Renders `spec` from `secrets` (by secret name; every secret the file reads must be there).
pub fn render(
    spec: &FileSpec,
    secrets: &BTreeMap<String, SecretView>,
) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    let err = |reason: String| RenderError {
        file: spec.name.clone(),
        reason,
    };
    if let Some(name) = &spec.secret {
        let view = secrets
            .get(name)
            .ok_or_else(|| err(format!("secret {name} has no value yet")))?;
        let value = match &spec.key {
            Some(k) => view
                .data
                .get(k)
                .ok_or_else(|| err(format!("secret {name} has no key {k:?}")))?,
            None => {
                let mut it = view.data.values();
                match (it.next(), it.next()) {
                    (Some(v), None) => v,
                    _ => {
                        return Err(err(format!(
                            "secret {name} has {} keys: name one (keyward.io/file-{}-secret: {name}#KEY)",
                            view.data.len(),
                            spec.name
                        )))
                    }
                }
            }
        };
        return Ok(Zeroizing::new(match value {
            serde_json::Value::String(s) => s.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        }));
    }
    let template = spec
        .template
        .as_deref()
        .ok_or_else(|| err("neither secret nor template".into()))?;
    let env = keyward_config::template_env();
    let t = env
        .template_from_str(template)
        .map_err(|e| err(format!("the template does not parse: {e}")))?;
    let by_ident: BTreeMap<String, &SecretView> = secrets
        .iter()
        .map(|(name, v)| (keyward_config::template_ident(name), v))
        .collect();
    #[derive(Serialize)]
    struct Context<'a> {
        secrets: BTreeMap<String, &'a SecretView>,
    }
    let ctx = Context { secrets: by_ident };
    // Only the kind of error and the line: minijinja's messages may quote the value an
    // operation failed on, and this text goes to the audit log and the sidecar's log.
    t.render(ctx)
        .map(|s| Zeroizing::new(s.into_bytes()))
        .map_err(|e| {
            err(format!(
                "the template does not render: {} at line {}",
                e.kind(),
                e.line().unwrap_or(0)
            ))
        })
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    fn view(data: serde_json::Value, version: u64) -> SecretView {
        SecretView {
            data: data.as_object().cloned().unwrap_or_default(),
            version,
            lease_expires: None,
        }
    }

    fn file(secret: Option<&str>, key: Option<&str>, template: Option<&str>) -> FileSpec {
        FileSpec {
            name: "f".into(),
            container: "app".into(),
            dir: "/d".into(),
            path: "f".into(),
            mode: "0440".into(),
            secret: secret.map(Into::into),
            key: key.map(Into::into),
            template: template.map(Into::into),
            identity: None,
        }
    }

    fn text(r: Result<Zeroizing<Vec<u8>>, RenderError>) -> String {
        String::from_utf8(r.expect("renders").to_vec()).expect("utf-8")
    }

    /// Where `needle` occurs in this process's writable anonymous memory (heap and thread
    /// stacks, read through /proc/self/mem), leaving out the ranges in `skip`. `maps` and `buf`
    /// are the caller's, allocated beforehand: the scan allocates nothing that could reuse
    /// (and overwrite) the freed memory it looks into.
    pub(in crate::deliver) fn occurrences(
        needle: &[u8],
        skip: &[std::ops::Range<usize>],
        maps: &mut String,
        buf: &mut [u8],
    ) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        maps.clear();
        std::fs::File::open("/proc/self/maps")
            .and_then(|mut f| f.read_to_string(maps))
            .expect("maps");
        let mut mem = std::fs::File::open("/proc/self/mem").expect("mem");
        let buf_range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut found = 0;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let path = f.nth(3);
            if !perms.starts_with("rw") || path.is_some_and(|p| p != "[heap]") {
                continue;
            }
            let (a, b) = range.split_once('-').expect("range");
            let (start, end) = (
                usize::from_str_radix(a, 16).expect("hex"),
                usize::from_str_radix(b, 16).expect("hex"),
            );
            let mut at = start;
            while at + needle.len() <= end {
                let n = (end - at).min(buf.len());
                if mem.seek(SeekFrom::Start(at as u64)).is_err()
                    || mem.read_exact(&mut buf[..n]).is_err()
                {
                    break;
                }
                for (i, w) in buf[..n].windows(needle.len()).enumerate() {
                    let addr = at + i;
                    if w == needle
                        && !buf_range.contains(&addr)
                        && !skip.iter().any(|r| r.contains(&addr))
                    {
                        found += 1;
                    }
                }
                if at + n >= end {
                    break;
                }
                at += n - needle.len() + 1;
            }
        }
        found
    }

    /// A view holds a private key opened from the sealed cache for a render; once dropped, no
    /// copy of it is left in freed memory.
    #[test]
    fn a_views_opened_values_are_wiped_when_it_is_dropped() {
        use rand::Rng;
        // A canary the size of a private key made at run time (not in the binary); the freed
        // chunk's first bytes are the allocator's own, so the rest is searched for.
        let mut canary = [0u8; 2048];
        let mut rng = rand::thread_rng();
        for b in canary.iter_mut() {
            *b = rng.gen_range(b'a'..=b'z');
        }
        let needle = canary[64..].to_vec();
        let skip = [
            canary.as_ptr() as usize..canary.as_ptr() as usize + canary.len(),
            needle.as_ptr() as usize..needle.as_ptr() as usize + needle.len(),
        ];
        let mut maps = String::with_capacity(1 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let key = String::from_utf8(canary.to_vec()).expect("ascii");
        let mut data = serde_json::Map::new();
        data.insert("private_key".into(), serde_json::Value::String(key));
        let v = SecretView {
            data,
            version: 1,
            lease_expires: None,
        };
        assert!(
            occurrences(&needle, &skip, &mut maps, &mut buf) >= 1,
            "the view's copy is found"
        );
        drop(v);
        assert_eq!(
            occurrences(&needle, &skip, &mut maps, &mut buf),
            0,
            "a copy is left after the drop"
        );
    }

    #[test]
    fn a_template_sees_data_version_and_lease_expiry_under_underscored_names() {
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "db-main".to_owned(),
            view(json!({"user": "u", "password": "p@ss"}), 7),
        );
        secrets.insert("api".to_owned(), {
            let mut v = view(json!({"token": 42}), 3);
            v.lease_expires = Some("2026-12-02T03:00:00Z".into());
            v
        });
        let f = file(
            None,
            None,
            Some("postgres://{{ secrets.db_main.data.user }}:{{ secrets.db_main.data.password }}@db/x?v={{ secrets.db_main.version }}&t={{ secrets.api.data.token }}&e={{ secrets.api.lease_expires }}"),
        );
        assert_eq!(
            text(render(&f, &secrets)),
            "postgres://u:p@ss@db/x?v=7&t=42&e=2026-12-02T03:00:00Z",
            "no HTML escaping"
        );
    }

    #[test]
    fn a_missing_key_in_a_template_is_an_error_that_names_no_value() {
        let mut secrets = BTreeMap::new();
        secrets.insert("db".to_owned(), view(json!({"password": "hunter2"}), 1));
        let e = render(
            &file(None, None, Some("{{ secrets.db.data.user }}")),
            &secrets,
        )
        .expect_err("strict");
        assert!(e.to_string().contains("file f"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    /// minijinja's messages may quote the value an operation failed on: a render error carries
    /// only the kind of error and the line.
    #[test]
    fn a_failed_filter_on_a_value_does_not_quote_the_value() {
        let mut secrets = BTreeMap::new();
        secrets.insert("db".to_owned(), view(json!({"password": "hunter2"}), 1));
        for t in [
            "{{ secrets.db.data.password | int }}",
            "{{ secrets.db.data.password + 1 }}",
            "{{ secrets.db.data[secrets.db.data.password] }}",
            "{{ secrets.db.data.password.nope }}",
            "{{ range(secrets.db.data.password) }}",
        ] {
            let e = render(&file(None, None, Some(t)), &secrets).expect_err(t);
            assert!(!e.to_string().contains("hunter2"), "{t}: {e}");
            assert!(e.reason.contains("line 1"), "{t}: {e}");
        }
    }

    #[test]
    fn a_single_key_file_is_the_value_text_or_json() {
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "db".to_owned(),
            view(json!({"password": "p", "port": 5432}), 1),
        );
        assert_eq!(
            text(render(&file(Some("db"), Some("password"), None), &secrets)),
            "p"
        );
        assert_eq!(
            text(render(&file(Some("db"), Some("port"), None), &secrets)),
            "5432"
        );
        let e = render(&file(Some("db"), None, None), &secrets).expect_err("two keys");
        assert!(e.reason.contains("2 keys"), "{e}");
        let e = render(&file(Some("db"), Some("nope"), None), &secrets).expect_err("no key");
        assert!(e.reason.contains("no key \"nope\""), "{e}");
        secrets.insert("one".to_owned(), view(json!({"k": "v"}), 1));
        assert_eq!(text(render(&file(Some("one"), None, None), &secrets)), "v");
    }
}
