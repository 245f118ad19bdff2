//! Certificates for the app's own TLS server (issue 13 §4, docs/delivery.md "Certificates"):
//! a declared secret with an `issue` block is a certificate the sidecar asks Vault's PKI engine
//! to issue (`MOUNT/issue/ROLE`, a write) for the pod's DNS names, and issues again at about
//! 2/3 of its lifetime. Its value has the keys [`CERT_KEYS`]; files of it are ordinary `files`
//! entries naming one of those keys.
//!
//! Contract version 3 ([`crate::CONTRACT_VERSION`]): a document with a certificate is written
//! as version 3, so an older sidecar refuses it naming the version instead of an unknown key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, SecretSpec, SidecarConfig};

/// Shortest certificate TTL accepted: re-issuing at 2/3 of it must leave time to render and
/// reload.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(10);
/// Most alternative names of one certificate.
pub const MAX_ALT_NAMES: usize = 100;

/// The keys of a certificate's value: the leaf (PEM), its private key (PEM), the chain of
/// issuing CAs (PEM, leaf excluded), the serial (`aa:bb:...`) and the expiry (Unix seconds).
pub const CERT_KEYS: [&str; 5] = [
    "certificate",
    "private_key",
    "ca_chain",
    "serial_number",
    "expiration",
];

/// `secrets[i].issue`: what to ask the PKI engine for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertIssue {
    /// The certificate's common name (a DNS name of the pod, e.g. `web.shop.svc`).
    pub common_name: String,
    /// More DNS names (subject alternative names), besides the common name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_names: Vec<String>,
    /// The lifetime asked for; `None`: the role's default. The PKI role caps it.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

/// Whether `name` is a DNS name a certificate may carry: 1-253 bytes, dot-separated labels of
/// 1-63 bytes of `[A-Za-z0-9-]` not starting or ending with `-`; the first label may be `*`.
pub fn valid_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').enumerate().all(|(i, label)| {
        (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    })
}

/// Whether `path` is a PKI issue path: `MOUNT.../issue/ROLE`.
pub fn is_pki_issue_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    segs.len() >= 3 && segs[segs.len() - 2] == "issue" && !segs[segs.len() - 1].is_empty()
}

impl CertIssue {
    /// Checks the block of the secret at `at` (`secrets[0]`).
    pub(crate) fn validate(&self, spec: &SecretSpec, at: &str) -> Result<(), ConfigError> {
        if !is_pki_issue_path(&spec.path) {
            return Err(ConfigError::invalid(
                format!("{at}.path"),
                format!(
                    "a certificate is issued by a PKI issue path MOUNT/issue/ROLE, got {:?}",
                    spec.path
                ),
            ));
        }
        if spec.key.is_some() {
            return Err(ConfigError::invalid(
                format!("{at}.key"),
                "a certificate is served whole (certificate, private_key, ca_chain, ...); name the key in the file instead",
            ));
        }
        if !valid_dns_name(&self.common_name) {
            return Err(ConfigError::invalid(
                format!("{at}.issue.common_name"),
                format!("expected a DNS name, got {:?}", self.common_name),
            ));
        }
        if self.alt_names.len() > MAX_ALT_NAMES {
            return Err(ConfigError::invalid(
                format!("{at}.issue.alt_names"),
                format!("at most {MAX_ALT_NAMES} names"),
            ));
        }
        for (j, n) in self.alt_names.iter().enumerate() {
            if !valid_dns_name(n) {
                return Err(ConfigError::invalid(
                    format!("{at}.issue.alt_names[{j}]"),
                    format!("expected a DNS name, got {n:?}"),
                ));
            }
        }
        if let Some(ttl) = self.ttl {
            if ttl < MIN_CERT_TTL {
                return Err(ConfigError::invalid(
                    format!("{at}.issue.ttl"),
                    format!(
                        "{} is shorter than {}",
                        humantime_serde::re::humantime::format_duration(ttl),
                        humantime_serde::re::humantime::format_duration(MIN_CERT_TTL)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `files[].identity`: which part of the workload's SVID a file holds (issue 13 §4: the SVID
/// as files for apps that terminate their own mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityPart {
    /// The SVID's certificate chain (leaf first), PEM.
    Certificate,
    /// Its private key, PEM.
    PrivateKey,
    /// The trust bundle (the CAs that sign the trust domain's SVIDs), PEM.
    Bundle,
}

impl SidecarConfig {
    /// Whether some secret is a certificate or some file holds the SVID (contract version 3).
    pub(crate) fn has_certs(&self) -> bool {
        self.secrets
            .iter()
            .any(|s| s.issue.is_some() || s.allow_containers.is_some())
            || self.files.iter().any(|f| f.identity.is_some())
    }

    /// Checks a file of the workload's SVID (`files[i]`, `at`): no other content, and an
    /// identity whose `allow_uids` names who may read the key (the injector admits such a file
    /// only into a container running as one of them).
    pub(crate) fn validate_identity_file(
        &self,
        f: &crate::FileSpec,
        at: &str,
    ) -> Result<(), ConfigError> {
        if f.secret.is_some() || f.template.is_some() || f.key.is_some() {
            return Err(ConfigError::invalid(
                at,
                "a file of the workload's SVID (identity) has no secret, key or template",
            ));
        }
        match &self.identity {
            None => Err(ConfigError::invalid(
                format!("{at}.identity"),
                "needs the identity section: there is no SVID without it",
            )),
            Some(id) if id.allow_uids.is_empty() => Err(ConfigError::invalid(
                format!("{at}.identity"),
                "identity.allow_uids is empty: nobody may read the SVID's key, so no file of it is written",
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks every certificate, and that a file of a certificate names one of its keys
    /// (called by [`SidecarConfig::validate`]).
    pub(crate) fn validate_certs(&self) -> Result<(), ConfigError> {
        for (i, s) in self.secrets.iter().enumerate() {
            if let Some(issue) = &s.issue {
                issue.validate(s, &format!("secrets[{i}]"))?;
            }
            // The broker serves such a secret only on these containers' sockets: each must be
            // one (an empty list: no socket reads it, its files are still rendered).
            for (j, c) in s.allow_containers.iter().flatten().enumerate() {
                if !self.socket.containers.iter().any(|sc| &sc.name == c) {
                    return Err(ConfigError::invalid(
                        format!("secrets[{i}].allow_containers[{j}]"),
                        format!("{c:?} is not a container of socket.containers: no request comes from its socket"),
                    ));
                }
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let Some(name) = &f.secret else { continue };
            if self.secret(name).is_some_and(|s| s.issue.is_some()) {
                match f.key.as_deref() {
                    Some(k) if CERT_KEYS.contains(&k) => {}
                    other => {
                        return Err(ConfigError::invalid(
                            format!("files[{i}].key"),
                            format!(
                                "a file of the certificate {name} names one of {}, got {other:?}",
                                CERT_KEYS.join(", ")
                            ),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_and_issue_paths() {
        for ok in ["web", "web.shop.svc", "*.shop.svc.cluster.local", "a-1.b"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "a_b", "web.*", "x/y", "a\0"] {
            assert!(!valid_dns_name(bad), "{bad:?}");
        }
        assert!(is_pki_issue_path("pki_web/issue/web"));
        assert!(is_pki_issue_path("team/pki/issue/r"));
        for bad in ["pki/sign/web", "issue/web", "pki/issue/", "secret/data/x"] {
            assert!(!is_pki_issue_path(bad), "{bad}");
        }
    }

    fn doc(issue: &str, file_key: &str) -> SidecarConfig {
        SidecarConfig::from_yaml(&format!(
            "vault: {{addr: 'http://127.0.0.1:8200'}}\nsecrets:\n  - name: web\n    path: pki_web/issue/web\n    issue: {issue}\nfiles:\n  - {{name: web-crt, container: app, dir: /run/f, path: web.crt, secret: web{file_key}}}\n"
        ))
        .expect("parses")
    }

    #[test]
    fn a_certificate_is_version_3_and_its_errors_name_the_setting() {
        let ok = doc(
            "{common_name: web.shop.svc, alt_names: [web, web.shop], ttl: 1h}",
            ", key: certificate",
        );
        ok.validate().expect("valid");
        assert_eq!(ok.required_version(), 3);
        let back =
            SidecarConfig::from_yaml(&ok.clone().with_required_version().to_yaml().expect("yaml"))
                .expect("round trip");
        assert_eq!(back.secrets, ok.secrets);
        for (issue, key, setting) in [
            (
                "{common_name: 'a b'}",
                ", key: certificate",
                "secrets[0].issue.common_name",
            ),
            (
                "{common_name: w, alt_names: [ok, 'x/y']}",
                ", key: certificate",
                "secrets[0].issue.alt_names[1]",
            ),
            (
                "{common_name: w, ttl: 1s}",
                ", key: certificate",
                "secrets[0].issue.ttl",
            ),
            ("{common_name: w}", "", "files[0].key"),
            ("{common_name: w}", ", key: nope", "files[0].key"),
        ] {
            let e = doc(issue, key).validate().expect_err(issue);
            assert_eq!(e.setting(), Some(setting), "{issue}{key}: {e}");
        }
        let mut bad_path = doc("{common_name: w}", ", key: certificate");
        bad_path.secrets[0].path = "pki_web/sign/web".into();
        assert_eq!(
            bad_path.validate().expect_err("path").setting(),
            Some("secrets[0].path")
        );
    }

    #[test]
    fn allowed_containers_are_version_3_and_each_has_a_socket() {
        let mut c = doc("{common_name: web.shop.svc}", ", key: certificate");
        c.secrets[0].allow_containers = Some(vec!["app".into()]);
        let e = c.validate().expect_err("app has no socket");
        assert_eq!(e.setting(), Some("secrets[0].allow_containers[0]"), "{e}");
        c.socket.containers.push(crate::ContainerSocket {
            name: "app".into(),
            path: "/run/keyward/app/broker.sock".into(),
        });
        c.validate().expect("valid");
        c.secrets[0].allow_containers = Some(vec![]);
        c.validate().expect("an empty list: no socket reads it");
        c.secrets[0].issue = None;
        c.secrets[0].path = "secret/data/web".into();
        c.files.clear();
        assert_eq!(c.required_version(), 3);
        let back =
            SidecarConfig::from_yaml(&c.clone().with_required_version().to_yaml().expect("yaml"))
                .expect("round trip");
        assert_eq!(back.secrets, c.secrets);
    }

    #[test]
    fn a_file_of_the_svid_needs_an_identity_that_allows_some_uid() {
        let yaml = |identity: &str, extra: &str| {
            SidecarConfig::from_yaml(&format!(
                "vault: {{addr: 'http://127.0.0.1:8200'}}\n{identity}files:\n  - {{name: s, container: app, dir: /run/f, path: svid.key, identity: private_key{extra}}}\n"
            ))
            .expect("parses")
        };
        let ok = yaml("identity: {trust_domain: td, allow_uids: [1000]}\n", "");
        ok.validate().expect("valid");
        assert_eq!(ok.required_version(), 3);
        assert_eq!(ok.files[0].identity, Some(IdentityPart::PrivateKey));
        assert!(ok.files[0].secrets(&ok.secrets).is_empty());
        for (identity, extra, setting) in [
            ("", "", "files[0].identity"),
            ("identity: {trust_domain: td}\n", "", "files[0].identity"),
            (
                "identity: {trust_domain: td, allow_uids: [1000]}\nsecrets: [{name: x, path: secret/data/x}]\n",
                ", secret: x",
                "files[0]",
            ),
        ] {
            let e = yaml(identity, extra).validate().expect_err(identity);
            assert_eq!(e.setting(), Some(setting), "{identity}{extra}: {e}");
        }
    }
}
