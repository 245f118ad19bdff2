//! A certificate issued by Vault's PKI engine (`MOUNT/issue/ROLE`, a write): the secret's
//! `issue` block names the common name, the alternative names and the TTL
//! (`keyward_config::CertIssue`). Each fetch issues a new certificate and a new private key.
//!
//! The value has the keys `keyward_config::CERT_KEYS`: `certificate` (the leaf, PEM),
//! `private_key` (PEM), `ca_chain` (the issuing CAs, PEM, one after the other), `serial_number`
//! and `expiration` (Unix seconds).
//!
//! A certificate has no Vault lease; the source reports one that is not renewable and ends
//! when the certificate does, with the serial as its id. So the lifecycle issues a new
//! certificate at about 2/3 of what remains of the lifetime (a re-fetch, as for any lease that
//! cannot be renewed), the cache stops serving the certificate once it has expired, and at
//! shutdown every certificate still valid is revoked through `MOUNT/revoke` (the role's
//! policy needs `update` on it; without it the revocation fails and is recorded, and the
//! certificate ends at its expiry). A certificate that ends within [`MIN_REMAINING`] is
//! refused (the fetch backs off) rather than re-issued every few hundred milliseconds.
//!
//! The private key moves from Vault's answer into the value without a copy; the answer and the
//! value are wiped when dropped. It is never logged: errors name the path and the field only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_config::CertIssue;
use serde_json::{json, Map, Value};

use super::{Fetched, Lease, Renewal, Revocation, SecretSource, SourceError, SourceFuture, VAULT};
use crate::secret::{scrub_json, SecretString};
use crate::vault::{Vault, VaultResponse};

/// Certificates of `path` (`MOUNT/issue/ROLE`) as `issue` asks.
#[derive(Debug)]
pub struct VaultPki {
    vault: Arc<Vault>,
    path: String,
    issue: CertIssue,
}

impl VaultPki {
    pub fn new(vault: Arc<Vault>, path: String, issue: CertIssue) -> Self {
        Self { vault, path, issue }
    }

    /// The engine's mount: `path` without `/issue/ROLE`.
    fn mount(&self) -> &str {
        let p = self.path.trim_matches('/');
        p.rsplitn(3, '/').nth(2).unwrap_or(p)
    }

    /// The request body: the names and the TTL, PEM format.
    fn body(&self) -> Value {
        let mut body = json!({
            "common_name": self.issue.common_name,
            "format": "pem",
        });
        if !self.issue.alt_names.is_empty() {
            body["alt_names"] = Value::String(self.issue.alt_names.join(","));
        }
        if let Some(ttl) = self.issue.ttl {
            body["ttl"] = Value::String(format!("{}s", ttl.as_secs()));
        }
        body
    }
}

impl SecretSource for VaultPki {
    fn kind(&self) -> super::SourceKind {
        VAULT
    }

    fn ready(&self) -> SourceFuture<'_, ()> {
        Box::pin(self.vault.wait_logged_in())
    }

    fn fetch(&self) -> SourceFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async move {
            let mut resp = self.vault.write(&self.path, &self.body()).await?;
            from_response(&mut resp, &self.path, SystemTime::now())
        })
    }

    /// A certificate cannot be renewed: its lease is reported not renewable, so the lifecycle
    /// issues a new one instead and never asks this.
    fn renew<'a>(
        &'a self,
        _lease_id: &'a SecretString,
        _increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>> {
        Box::pin(std::future::ready(Err(SourceError::LeaseGone(format!(
            "a certificate of {} cannot be renewed; a new one is issued",
            self.path
        )))))
    }

    /// Revokes the certificate whose serial is `lease_id` (`MOUNT/revoke`).
    fn revoke<'a>(
        &'a self,
        lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>> {
        Box::pin(async move {
            let resp = self
                .vault
                .write(
                    &format!("{}/revoke", self.mount()),
                    &json!({ "serial_number": lease_id.expose() }),
                )
                .await?;
            Ok(Revocation {
                request_id: resp.request_id.clone(),
            })
        })
    }
}

/// Shortest remaining lifetime of an issued certificate that is taken (half the shortest TTL
/// one may ask for, which leaves room for the request's time).
const MIN_REMAINING: Duration = Duration::from_secs(keyward_config::MIN_CERT_TTL.as_secs() / 2);

/// The value of an issue answer received at `now`: the certificate, its key, the chain joined
/// into one PEM text, the serial and the expiry, with a lease that ends with the certificate.
fn from_response(
    resp: &mut VaultResponse,
    path: &str,
    now: SystemTime,
) -> Result<Fetched, SourceError> {
    let request_id = resp.request_id.clone();
    let unusable = |detail: String| SourceError::Unusable {
        source_name: VAULT.name,
        detail,
        request_id: Some(request_id.clone()),
    };
    let mut data = match std::mem::take(&mut resp.data) {
        Value::Object(m) => m,
        mut other => {
            scrub_json(&mut other);
            return Err(unusable(format!("{path} answered no certificate")));
        }
    };
    let result = (|| {
        let mut take_str = |k: &str| match data.remove(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(mut other) => {
                scrub_json(&mut other);
                Err(unusable(format!("{path} answered no {k}")))
            }
            None => Err(unusable(format!("{path} answered no {k}"))),
        };
        let certificate = take_str("certificate")?;
        let mut private_key = zeroize::Zeroizing::new(take_str("private_key")?);
        let serial = take_str("serial_number")?;
        let issuing_ca = take_str("issuing_ca").unwrap_or_default();
        let expiration = data
            .get("expiration")
            .and_then(Value::as_u64)
            .ok_or_else(|| unusable(format!("{path} answered no expiration")))?;
        let chain: Vec<String> = match data.get("ca_chain") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim_end().to_owned())
                .collect(),
            _ if !issuing_ca.is_empty() => vec![issuing_ca.trim_end().to_owned()],
            _ => Vec::new(),
        };
        let mut ca_chain = chain.join("\n");
        if !ca_chain.is_empty() {
            ca_chain.push('\n');
        }
        // A time the clock cannot hold is refused (no panic); a lifetime longer than any Vault
        // lease is capped like one, so `now + ttl` stays on the clock too.
        let ends = UNIX_EPOCH
            .checked_add(Duration::from_secs(expiration))
            .ok_or_else(|| unusable(format!("{path} answered an expiration out of range")))?;
        let ttl = ends
            .duration_since(now)
            .unwrap_or_default()
            .min(crate::vault::MAX_LEASE_DURATION);
        // A certificate that ends (nearly) at once would be issued again every few hundred
        // milliseconds (2/3 of nothing): refused instead, so the fetch backs off and the
        // reason is recorded (a role's max_ttl, an issuer about to expire, a skewed clock).
        if ttl < MIN_REMAINING {
            return Err(unusable(format!(
                "{path} answered a certificate that ends in {}s (expiration {expiration}), less than the {}s needed to deliver it: check the role's max_ttl, the issuer's expiry and the clocks",
                ttl.as_secs(),
                MIN_REMAINING.as_secs()
            )));
        }
        let mut value = Map::new();
        value.insert("certificate".into(), Value::String(pem_text(certificate)));
        // Moved, not copied (nor grown: a reallocation would leave a copy in freed memory):
        // the one copy of the key is the answer's string, now in `value`, wiped with it.
        value.insert(
            "private_key".into(),
            Value::String(std::mem::take(&mut *private_key)),
        );
        value.insert("ca_chain".into(), Value::String(ca_chain));
        value.insert("serial_number".into(), Value::String(serial.clone()));
        value.insert("expiration".into(), Value::from(expiration));
        Ok(Fetched::new(value)
            .with_request_id(request_id.clone())
            .with_lease(Lease {
                id: SecretString::new(serial),
                renewable: false,
                ttl,
            }))
    })();
    scrub_json(&mut Value::Object(std::mem::take(&mut data)));
    result
}

/// A PEM text ending in exactly one newline (Vault's has none).
fn pem_text(mut s: String) -> String {
    while s.ends_with('\n') {
        s.pop();
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(data: Value) -> VaultResponse {
        VaultResponse {
            request_id: "req-1".into(),
            lease_id: None,
            lease_duration: Duration::ZERO,
            renewable: false,
            data,
            warnings: Vec::new(),
        }
    }

    fn pki(path: &str) -> VaultPki {
        let config = crate::config::Config::from_yaml(
            "vault: {addr: 'http://127.0.0.1:1', allow_insecure_http: true}",
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .expect("config");
        VaultPki::new(
            Arc::new(Vault::new(&config).expect("vault")),
            path.into(),
            CertIssue {
                common_name: "web.shop.svc".into(),
                alt_names: vec!["web".into(), "web.shop".into()],
                ttl: Some(Duration::from_secs(90)),
            },
        )
    }

    #[test]
    fn the_request_names_the_pod_and_the_ttl_and_revocation_goes_to_the_mount() {
        let p = pki("team/pki_web/issue/web");
        assert_eq!(p.mount(), "team/pki_web");
        assert_eq!(
            p.body(),
            json!({"common_name": "web.shop.svc", "alt_names": "web,web.shop", "ttl": "90s", "format": "pem"})
        );
    }

    #[test]
    fn an_issued_certificate_is_a_value_with_a_lease_that_ends_with_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut resp = answer(json!({
            "certificate": "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----",
            "private_key": "-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----",
            "private_key_type": "ec",
            "issuing_ca": "INT",
            "ca_chain": ["INT\n", "ROOT"],
            "serial_number": "1a:2b",
            "expiration": 1_800_000_090u64,
        }));
        let f = from_response(&mut resp, "pki_web/issue/web", now).expect("value");
        let d = f.data();
        assert_eq!(d.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut k = keyward_config::CERT_KEYS.to_vec();
            k.sort_unstable();
            k
        });
        assert_eq!(
            d["certificate"],
            "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(d["ca_chain"], "INT\nROOT\n");
        assert_eq!(d["serial_number"], "1a:2b");
        let lease = f.lease.as_ref().expect("lease");
        assert!(!lease.renewable, "re-issued, never renewed");
        assert_eq!(lease.ttl, Duration::from_secs(90));
        assert_eq!(lease.id.expose(), "1a:2b");
        assert_eq!(resp.data, Value::Null, "the answer's data was taken");
    }

    /// An expiration the clock cannot hold is refused naming it (no panic), and one far ahead
    /// gives a lease no longer than any Vault lease, so `now + ttl` cannot overflow either.
    #[test]
    fn an_expiration_beyond_the_clock_is_refused_or_capped_not_a_panic() {
        let now = SystemTime::now();
        for expiration in [u64::MAX, i64::MAX as u64, 1u64 << 40] {
            let mut resp = answer(json!({
                "certificate": "C",
                "private_key": "hunter2",
                "serial_number": "1a",
                "expiration": expiration,
            }));
            match from_response(&mut resp, "p/issue/r", now) {
                Ok(f) => {
                    let ttl = f.lease.as_ref().expect("lease").ttl;
                    assert!(
                        ttl <= crate::vault::MAX_LEASE_DURATION,
                        "{expiration}: {ttl:?}"
                    );
                    assert!(now.checked_add(ttl).is_some(), "{expiration}");
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains("p/issue/r answered an expiration"), "{e}");
                    assert!(!e.contains("hunter2"), "{e}");
                }
            }
        }
    }

    /// A certificate that has ended or ends within seconds (a role's max_ttl, an issuer about
    /// to expire, clock skew) is refused naming why, not taken with a lease of ~0 that the
    /// lifecycle would re-issue every 100 ms.
    #[test]
    fn a_certificate_ending_at_once_is_refused_not_re_issued_in_a_tight_loop() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let answer_ending = |secs_after_now: i64| {
            answer(json!({
                "certificate": "C",
                "private_key": "hunter2",
                "serial_number": "1a",
                "expiration": (1_800_000_000i64 + secs_after_now) as u64,
            }))
        };
        for ends in [-60, 0, 1, 4] {
            let e = from_response(&mut answer_ending(ends), "p/issue/r", now)
                .expect_err("ends at once");
            let e = e.to_string();
            assert!(
                e.contains("p/issue/r answered a certificate that ends in"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let f = from_response(&mut answer_ending(10), "p/issue/r", now).expect("10 s is enough");
        assert_eq!(
            f.lease.as_ref().expect("lease").ttl,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn an_answer_without_a_key_is_refused_naming_the_field_not_a_value() {
        let mut resp = answer(json!({
            "certificate": "C",
            "serial_number": "1a",
            "expiration": 1u64,
        }));
        let e =
            from_response(&mut resp, "pki_web/issue/web", SystemTime::now()).expect_err("no key");
        assert!(
            e.to_string()
                .contains("pki_web/issue/web answered no private_key"),
            "{e}"
        );
        let mut resp =
            answer(json!({"certificate": "C", "private_key": "hunter2", "serial_number": "1a"}));
        let e = from_response(&mut resp, "p/issue/r", SystemTime::now()).expect_err("no expiry");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
