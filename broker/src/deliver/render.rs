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
mod tests {
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

    #[test]
    fn a_template_sees_data_version_and_lease_expiry_under_underscored_names() {
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "db-main".to_owned(),
            view(json!({"user": "u", "password": "p@ss"}), 7),
        );
        secrets.insert(
            "api".to_owned(),
            SecretView {
                lease_expires: Some("2026-12-02T03:00:00Z".into()),
                ..view(json!({"token": 42}), 3)
            },
        );
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
