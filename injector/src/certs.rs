//! The webhook's own serving certificate (`tls.mode: injector`, the chart's default).
//!
//! Every replica, at start and then every [`CHECK_EVERY`]:
//! 1. reads the Secret named by `--self-signed-secret` (type `kubernetes.io/tls`, keys `tls.crt`,
//!    `tls.key`, `ca.crt`, `ca.key`);
//! 2. when it is missing, creates it with a new CA and serving certificate (another replica that
//!    created it first wins: `409 AlreadyExists` means read it again); when its serving
//!    certificate expires within [`RENEW_BEFORE`] (or does not name the service), replaces it
//!    with one signed by the same CA (a `409 Conflict` on the update means another replica did,
//!    read it again); a CA that expires within [`CA_RENEW_BEFORE`] is replaced too;
//! 3. writes the serving pair to the `--tls-cert`/`--tls-key` files, which the server re-reads
//!    on the next connection ([`crate::server::TlsReloader`]);
//! 4. sets `caBundle` of every webhook of the MutatingWebhookConfiguration named by
//!    `--self-signed-webhook` to the CA when it differs.
//!
//! So the chart renders no key material (`helm template` is the same every time) and replicas
//! agree on one CA. The API calls use the pod's projected service-account token, re-read for
//! each call, and the cluster CA; the chart's Role and ClusterRole allow exactly these objects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

/// How often a replica checks the Secret and the webhook's caBundle.
pub const CHECK_EVERY: Duration = Duration::from_secs(600);
/// Validity of a serving certificate.
pub const SERVING_DAYS: i64 = 365;
/// A serving certificate expiring within this is replaced.
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// Validity of a CA.
pub const CA_DAYS: i64 = 3650;
/// A CA expiring within this is replaced (with a new serving certificate).
pub const CA_RENEW_BEFORE: time::Duration = time::Duration::days(400);

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why the certificate could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "Kubernetes API address unknown: set --kube-api or run in a pod (KUBERNETES_SERVICE_HOST)"
    )]
    NoApi,
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster CA {path} holds no usable PEM certificate: {reason}")]
    ClusterCa { path: String, reason: String },
    #[error("{method} {path}: {reason}")]
    Http {
        method: &'static str,
        path: String,
        reason: String,
    },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("generating the certificate: {0}")]
    Generate(String),
    #[error("Secret {0} changed by another replica while being written; giving up for this round")]
    Contended(String),
    #[error("MutatingWebhookConfiguration {0} has no webhooks")]
    NoWebhooks(String),
}

/// A minimal client of the Kubernetes API: bearer token re-read per call, pinned cluster CA.
#[derive(Debug, Clone)]
pub struct KubeApi {
    base: String,
    token_file: PathBuf,
    client: reqwest::Client,
}

impl KubeApi {
    /// `url` (else `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`), the token
    /// file and the CA file (else those of the pod's service account).
    pub fn new(
        url: Option<String>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, CertError> {
        let base = match url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let host =
                    std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| CertError::NoApi)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let ca_file = ca_file.unwrap_or_else(|| Path::new(SA_DIR).join("ca.crt"));
        let pem = std::fs::read(&ca_file).map_err(|source| CertError::Read {
            path: ca_file.display().to_string(),
            source,
        })?;
        let ca_err = |reason: String| CertError::ClusterCa {
            path: ca_file.display().to_string(),
            reason,
        };
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no certificate".into()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5));
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
        let client = builder.build().map_err(|e| ca_err(e.to_string()))?;
        Ok(Self {
            base,
            token_file: token_file.unwrap_or_else(|| Path::new(SA_DIR).join("token")),
            client,
        })
    }

    /// One request; `Ok((status, body))` for any HTTP answer.
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(u16, Value), CertError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| CertError::Read {
                path: self.token_file.display().to_string(),
                source,
            })?;
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token.trim())
            .header("accept", "application/json");
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let http = |e: reqwest::Error| CertError::Http {
            method,
            path: path.to_owned(),
            reason: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(http)?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn api_error(method: &'static str, path: &str, status: u16, body: &Value) -> CertError {
    CertError::Api {
        method,
        path: path.to_owned(),
        status,
        message: body["message"]
            .as_str()
            .unwrap_or("(no message)")
            .chars()
            .take(300)
            .collect(),
    }
}

/// The serving pair and CA held in the Secret (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub cert: String,
    pub key: String,
    pub ca: String,
    pub ca_key: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

/// What the provisioner manages.
#[derive(Debug, Clone)]
pub struct Provisioner {
    pub api: KubeApi,
    pub namespace: String,
    pub secret: String,
    pub webhook: String,
    /// DNS names and IP addresses of the serving certificate.
    pub names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The names a serving certificate for `service` in `namespace` carries, plus `extra`.
pub fn service_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    names.extend(extra.iter().cloned());
    names
}

fn gen_err(e: impl std::fmt::Display) -> CertError {
    CertError::Generate(e.to_string())
}

/// A new ECDSA P-256 key and the parameters both kinds of certificate share: common name
/// `cn`, these key usages, valid from an hour ago (clock skew) for `days`.
fn params(
    cn: Option<&str>,
    key_usages: Vec<rcgen::KeyUsagePurpose>,
    days: i64,
) -> Result<(rcgen::KeyPair, rcgen::CertificateParams), CertError> {
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    if let Some(cn) = cn {
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    p.key_usages = key_usages;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    Ok((key, p))
}

/// A new CA (ECDSA P-256) valid for [`CA_DAYS`]: (cert PEM, key PEM).
pub fn new_ca(name: &str) -> Result<(String, String), CertError> {
    let (key, mut p) = params(
        Some(&format!("{name}-ca")),
        vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ],
        CA_DAYS,
    )?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let cert = p.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA, valid for [`SERVING_DAYS`]: (cert, key).
pub fn new_serving(
    names: &[String],
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), CertError> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(gen_err)?;
    let ca = rcgen::CertificateParams::from_ca_cert_pem(ca_pem)
        .map_err(gen_err)?
        .self_signed(&ca_key)
        .map_err(gen_err)?;
    let (key, mut p) = params(
        names.first().map(String::as_str),
        vec![rcgen::KeyUsagePurpose::DigitalSignature],
        SERVING_DAYS,
    )?;
    for n in names {
        p.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(n.clone().try_into().map_err(gen_err)?),
            });
    }
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// notAfter and the SAN strings of the first certificate in `pem`.
fn inspect(pem: &str) -> Option<(OffsetDateTime, Vec<String>)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let not_after = cert.validity().not_after.to_datetime();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some((not_after, names))
}

/// Why `m` must be replaced now (`None`: keep it): the CA or the serving certificate is
/// unreadable, expires soon, or the serving certificate lacks one of `names`.
pub fn needs_renewal(m: &Material, names: &[String], now: OffsetDateTime) -> Option<Renewal> {
    let Some((ca_end, _)) = inspect(&m.ca) else {
        return Some(Renewal::Ca);
    };
    if rcgen::KeyPair::from_pem(&m.ca_key).is_err() || ca_end - now < CA_RENEW_BEFORE {
        return Some(Renewal::Ca);
    }
    let Some((end, sans)) = inspect(&m.cert) else {
        return Some(Renewal::Serving);
    };
    if end - now < RENEW_BEFORE || names.iter().any(|n| !sans.contains(n)) {
        return Some(Renewal::Serving);
    }
    None
}

/// What must be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A new CA and serving certificate.
    Ca,
    /// A new serving certificate from the same CA.
    Serving,
}

fn material_of(secret: &Value) -> Option<Material> {
    let field = |k: &str| {
        let b = B64.decode(secret["data"][k].as_str()?).ok()?;
        String::from_utf8(b).ok()
    };
    Some(Material {
        cert: field("tls.crt")?,
        key: field("tls.key")?,
        ca: field("ca.crt")?,
        ca_key: field("ca.key")?,
    })
}

impl Provisioner {
    fn secret_path(&self, name: Option<&str>) -> String {
        let base = format!("/api/v1/namespaces/{}/secrets", self.namespace);
        match name {
            Some(n) => format!("{base}/{n}"),
            None => base,
        }
    }

    fn secret_body(&self, m: &Material, resource_version: Option<&str>) -> Value {
        let mut meta = json!({
            "name": self.secret,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/managed-by": "keyward-injector"},
        });
        if let Some(rv) = resource_version {
            meta["resourceVersion"] = json!(rv);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": B64.encode(&m.cert),
                "tls.key": B64.encode(&m.key),
                "ca.crt": B64.encode(&m.ca),
                "ca.key": B64.encode(&m.ca_key),
            }
        })
    }

    fn generate(&self, renewal: Renewal, old: Option<&Material>) -> Result<Material, CertError> {
        let (ca, ca_key) = match (renewal, old) {
            (Renewal::Serving, Some(o)) => (o.ca.clone(), o.ca_key.clone()),
            _ => new_ca(&self.webhook)?,
        };
        let (cert, key) = new_serving(&self.names, &ca, &ca_key)?;
        Ok(Material {
            cert,
            key,
            ca,
            ca_key,
        })
    }

    /// The Secret's material, created or renewed when needed (read again after losing a race).
    pub async fn secret(&self) -> Result<Material, CertError> {
        for _ in 0..4 {
            let path = self.secret_path(Some(&self.secret));
            let (status, body) = self.api.call("GET", &path, None).await?;
            match status {
                200 => {
                    let old = material_of(&body);
                    let renewal = match &old {
                        Some(m) => needs_renewal(m, &self.names, OffsetDateTime::now_utc()),
                        None => Some(Renewal::Ca),
                    };
                    let Some(renewal) = renewal else {
                        return old.ok_or_else(|| CertError::Contended(self.secret.clone()));
                    };
                    let new = self.generate(renewal, old.as_ref())?;
                    let rv = body["metadata"]["resourceVersion"].as_str();
                    let doc = serde_json::to_vec(&self.secret_body(&new, rv)).unwrap_or_default();
                    let (status, body) = self
                        .api
                        .call("PUT", &path, Some(("application/json", doc)))
                        .await?;
                    match status {
                        200 | 201 => {
                            info!(secret = %self.secret, ?renewal, "Webhook certificate renewed");
                            return Ok(new);
                        }
                        409 => continue,
                        s => return Err(api_error("PUT", &path, s, &body)),
                    }
                }
                404 => {
                    let new = self.generate(Renewal::Ca, None)?;
                    let doc = serde_json::to_vec(&self.secret_body(&new, None)).unwrap_or_default();
                    let list = self.secret_path(None);
                    let (status, body) = self
                        .api
                        .call("POST", &list, Some(("application/json", doc)))
                        .await?;
                    match status {
                        200 | 201 => {
                            info!(secret = %self.secret, "Webhook CA and certificate created");
                            return Ok(new);
                        }
                        409 => continue,
                        s => return Err(api_error("POST", &list, s, &body)),
                    }
                }
                s => return Err(api_error("GET", &path, s, &body)),
            }
        }
        Err(CertError::Contended(self.secret.clone()))
    }

    /// Sets every webhook's caBundle to `ca` where it differs; returns how many changed.
    pub async fn patch_ca_bundle(&self, ca: &str) -> Result<usize, CertError> {
        let path = format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}",
            self.webhook
        );
        let (status, body) = self.api.call("GET", &path, None).await?;
        if status != 200 {
            return Err(api_error("GET", &path, status, &body));
        }
        let want = B64.encode(ca);
        let hooks = body["webhooks"].as_array().cloned().unwrap_or_default();
        if hooks.is_empty() {
            return Err(CertError::NoWebhooks(self.webhook.clone()));
        }
        let mut ops = Vec::new();
        for (i, h) in hooks.iter().enumerate() {
            if h["clientConfig"]["caBundle"].as_str() != Some(want.as_str()) {
                ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        // Fails (422) when the webhook list changed since the GET: the next round retries.
        let mut patch = vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": body["metadata"]["resourceVersion"]}),
        ];
        patch.extend(ops.iter().cloned());
        let doc = serde_json::to_vec(&patch).unwrap_or_default();
        let (status, body) = self
            .api
            .call("PATCH", &path, Some(("application/json-patch+json", doc)))
            .await?;
        if status != 200 {
            return Err(api_error("PATCH", &path, status, &body));
        }
        info!(webhook = %self.webhook, webhooks = ops.len(), "Webhook caBundle set");
        Ok(ops.len())
    }

    /// Writes the serving pair to the files (each through a temporary file and a rename) when
    /// they differ; returns whether it wrote.
    pub fn write_files(&self, m: &Material) -> Result<bool, CertError> {
        let same = |p: &Path, want: &str| std::fs::read_to_string(p).is_ok_and(|s| s == want);
        if same(&self.cert_file, &m.cert) && same(&self.key_file, &m.key) {
            return Ok(false);
        }
        // Key first: the reloader only swaps when the pair loads, so a new key beside the old
        // certificate is refused for one connection at most, never served.
        write_atomic(&self.key_file, &m.key, 0o600)?;
        write_atomic(&self.cert_file, &m.cert, 0o644)?;
        Ok(true)
    }

    /// One round: the Secret, the files, the caBundle.
    pub async fn ensure(&self) -> Result<Material, CertError> {
        let m = self.secret().await?;
        if self.write_files(&m)? {
            info!(cert = %self.cert_file.display(), "Webhook certificate written");
        }
        self.patch_ca_bundle(&m.ca).await?;
        Ok(m)
    }

    /// [`Self::ensure`] until it succeeds (1 s doubling to 30 s between attempts).
    pub async fn ensure_until_ok(&self) -> Material {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.ensure().await {
                Ok(m) => return m,
                Err(error) => {
                    warn!(%error, retry_in_s = pause.as_secs(), "Webhook certificate not provisioned yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Rounds every [`CHECK_EVERY`] until `stop` completes.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if let Err(error) = self.ensure().await {
                warn!(%error, "Webhook certificate check failed; retrying later");
            }
        }
    }
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        service_names("kw", "ns", &["127.0.0.1".to_owned()])
    }

    #[test]
    fn fresh_material_needs_no_renewal_and_serves_every_name() {
        let (ca, ca_key) = new_ca("kw").expect("ca");
        let (cert, key) = new_serving(&names(), &ca, &ca_key).expect("serving");
        let m = Material {
            cert,
            key,
            ca,
            ca_key,
        };
        let now = OffsetDateTime::now_utc();
        assert_eq!(needs_renewal(&m, &names(), now), None);
        let (_, sans) = inspect(&m.cert).expect("parse");
        for n in names() {
            assert!(sans.contains(&n), "{n} in {sans:?}");
        }
    }

    #[test]
    fn serving_cert_is_renewed_30_days_before_expiry_and_ca_kept() {
        let (ca, ca_key) = new_ca("kw").expect("ca");
        let (cert, key) = new_serving(&names(), &ca, &ca_key).expect("serving");
        let m = Material {
            cert,
            key,
            ca,
            ca_key,
        };
        let later = OffsetDateTime::now_utc() + time::Duration::days(SERVING_DAYS - 29);
        assert_eq!(needs_renewal(&m, &names(), later), Some(Renewal::Serving));
        let early = OffsetDateTime::now_utc() + time::Duration::days(SERVING_DAYS - 31);
        assert_eq!(needs_renewal(&m, &names(), early), None);
    }

    #[test]
    fn missing_name_or_unreadable_ca_triggers_renewal() {
        let (ca, ca_key) = new_ca("kw").expect("ca");
        let (cert, key) = new_serving(&names(), &ca, &ca_key).expect("serving");
        let m = Material {
            cert,
            key,
            ca,
            ca_key,
        };
        let now = OffsetDateTime::now_utc();
        let more = service_names("kw", "ns", &["10.0.0.1".to_owned()]);
        assert_eq!(needs_renewal(&m, &more, now), Some(Renewal::Serving));
        let broken = Material {
            ca: "garbage".into(),
            ..m.clone()
        };
        assert_eq!(needs_renewal(&broken, &names(), now), Some(Renewal::Ca));
        let old_ca = now + time::Duration::days(CA_DAYS - 399);
        assert_eq!(needs_renewal(&m, &names(), old_ca), Some(Renewal::Ca));
    }

    #[test]
    fn ca_and_serving_certificates_keep_their_usages_names_and_lifetimes() {
        let (ca, ca_key) = new_ca("kw").expect("CA");
        let (leaf, _) = new_serving(&names(), &ca, &ca_key).expect("serving");
        let now = OffsetDateTime::now_utc();
        for (pem, days, is_ca, cn) in [
            (&ca, CA_DAYS, true, "kw-ca".to_owned()),
            (&leaf, SERVING_DAYS, false, names()[0].clone()),
        ] {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
            let cert = p.parse_x509().expect("X.509");
            let v = cert.validity();
            let back = now - v.not_before.to_datetime();
            assert!(
                back > time::Duration::minutes(59) && back < time::Duration::minutes(61),
                "valid from an hour ago: {back}"
            );
            let life = v.not_after.to_datetime() - v.not_before.to_datetime();
            assert!(
                (life - time::Duration::days(days) - time::Duration::hours(1)).abs()
                    < time::Duration::minutes(1),
                "{days} days: {life}"
            );
            assert_eq!(cert.is_ca(), is_ca);
            let subject_cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .map(str::to_owned);
            assert_eq!(subject_cn, Some(cn));
            let ku = cert.key_usage().expect("KU").expect("key usage").value;
            if is_ca {
                assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
            } else {
                assert!(ku.digital_signature() && !ku.key_cert_sign());
                let eku = cert.extended_key_usage().expect("EKU").expect("eku").value;
                assert!(eku.server_auth && !eku.client_auth);
            }
        }
    }

    #[test]
    fn material_debug_shows_no_key() {
        let (ca, ca_key) = new_ca("kw").expect("ca");
        let m = Material {
            cert: ca.clone(),
            key: ca_key.clone(),
            ca,
            ca_key,
        };
        assert!(!format!("{m:?}").contains("PRIVATE"));
    }
}
