//! The app's declared environment from the secrets read: only the declared variables, each
//! from its secret's key. Errors name the variable, the secret and the key, never a value.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::client::Secret;
use crate::spec::EnvBinding;

/// Why the declared environment cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// The secret was not read (internal: every declared secret is read first).
    #[error("{var}: secret {secret} was not read")]
    NotRead {
        /// The variable.
        var: String,
        /// The secret.
        secret: String,
    },
    /// The secret has no such key.
    #[error("{var}: secret {secret} has no key {key:?} (its keys: {keys})")]
    NoKey {
        /// The variable.
        var: String,
        /// The secret.
        secret: String,
        /// The key asked for.
        key: String,
        /// The keys it has.
        keys: String,
    },
    /// No key named, and the secret does not hold exactly one.
    #[error("{var}: secret {secret} has {n} keys ({keys}); name one: {var}={secret}#KEY")]
    NotOneKey {
        /// The variable.
        var: String,
        /// The secret.
        secret: String,
        /// How many keys it has.
        n: usize,
        /// Their names.
        keys: String,
    },
    /// The value holds a NUL byte, which no environment variable can.
    #[error("{var}: the value of secret {secret} contains a NUL byte, which an environment variable cannot hold")]
    Nul {
        /// The variable.
        var: String,
        /// The secret.
        secret: String,
    },
}

fn key_list(s: &Secret) -> String {
    let keys: Vec<&str> = s.data.keys().map(String::as_str).collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// The variables to set, in declaration order.
pub fn build(
    bindings: &[EnvBinding],
    secrets: &BTreeMap<String, Secret>,
) -> Result<Vec<(String, Zeroizing<String>)>, EnvError> {
    let mut out = Vec::with_capacity(bindings.len());
    for b in bindings {
        let s = secrets.get(&b.secret).ok_or_else(|| EnvError::NotRead {
            var: b.var.clone(),
            secret: b.secret.clone(),
        })?;
        let value = match &b.key {
            Some(k) => s.data.get(k).ok_or_else(|| EnvError::NoKey {
                var: b.var.clone(),
                secret: b.secret.clone(),
                key: k.clone(),
                keys: key_list(s),
            })?,
            None => {
                let mut values = s.data.values();
                match (values.next(), values.next()) {
                    (Some(v), None) => v,
                    _ => {
                        return Err(EnvError::NotOneKey {
                            var: b.var.clone(),
                            secret: b.secret.clone(),
                            n: s.data.len(),
                            keys: key_list(s),
                        })
                    }
                }
            }
        };
        if value.contains('\0') {
            return Err(EnvError::Nul {
                var: b.var.clone(),
                secret: b.secret.clone(),
            });
        }
        out.push((b.var.clone(), value.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-3f1e-value";

    fn secret(version: u64, kv: &[(&str, &str)]) -> Secret {
        Secret {
            version,
            data: kv
                .iter()
                .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string())))
                .collect(),
        }
    }

    fn bind(var: &str, secret: &str, key: Option<&str>) -> EnvBinding {
        EnvBinding {
            var: var.into(),
            secret: secret.into(),
            key: key.map(Into::into),
        }
    }

    #[test]
    fn only_the_declared_keys_become_variables() {
        let secrets: BTreeMap<String, Secret> = [
            (
                "db".to_string(),
                secret(3, &[("user", "app"), ("password", CANARY)]),
            ),
            ("token".to_string(), secret(1, &[("value", "t0k")])),
        ]
        .into();
        let env = build(
            &[
                bind("DB_USER", "db", Some("user")),
                bind("TOKEN", "token", None),
            ],
            &secrets,
        )
        .expect("builds");
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, vec![("DB_USER", "app"), ("TOKEN", "t0k")]);
    }

    #[test]
    fn a_missing_key_or_an_ambiguous_secret_is_named_without_values() {
        let secrets: BTreeMap<String, Secret> = [(
            "db".to_string(),
            secret(3, &[("user", "app"), ("password", CANARY)]),
        )]
        .into();
        let e = build(&[bind("X", "db", Some("pass"))], &secrets).expect_err("no key");
        let text = e.to_string();
        assert!(text.contains("secret db has no key \"pass\""), "{text}");
        assert!(text.contains("password, user"), "{text}");
        let e = build(&[bind("X", "db", None)], &secrets).expect_err("two keys");
        let text = e.to_string();
        assert!(
            text.contains("has 2 keys") && text.contains("X=db#KEY"),
            "{text}"
        );
        assert!(!text.contains(CANARY) && !format!("{e:?}").contains(CANARY));
        let nul: BTreeMap<String, Secret> = [("n".to_string(), secret(1, &[("k", "a\0b")]))].into();
        let e = build(&[bind("X", "n", None)], &nul).expect_err("nul");
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn a_secrets_debug_shows_keys_not_values() {
        let s = secret(2, &[("password", CANARY)]);
        let d = format!("{s:?}");
        assert!(d.contains("password") && !d.contains(CANARY), "{d}");
    }
}
