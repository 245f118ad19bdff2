//! The TLS client settings of the Vault connection, from `vault.*` of the config alone: a
//! pinned CA set (`ca_file`: those CAs and no others), the name Vault's certificate is checked
//! against and sent as the SNI (`tls_server_name`, see [`sni_route`]), and a client certificate
//! (`client_cert_file`/`client_key_file`). Without any of them reqwest's own rustls setup (the
//! built-in public roots, the address's host) is used unchanged.
//!
//! The client certificate is read at start (unusable files refuse the start, naming the
//! setting) and read again by [`ReloadingClientCert`] at a handshake after either file changed
//! (cert-manager renewing the mounted Secret), so a long-lived broker presents the renewed
//! certificate on its next new connection to Vault.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyward_config::VaultConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{info, warn};

use crate::vault::VaultError;

fn setup(msg: String) -> VaultError {
    VaultError::Setup(msg)
}

/// The rustls client config for these settings, or `None` when none of them is set.
pub(crate) fn client_config(v: &VaultConfig) -> Result<Option<rustls::ClientConfig>, VaultError> {
    if v.ca_file.is_none() && v.tls_server_name.is_none() && v.client_cert_file.is_none() {
        return Ok(None);
    }
    let provider = provider();
    let roots = trust_anchors(v)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| setup(format!("vault.ca_file: {e}")))?;
    let name = match &v.tls_server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|e| setup(format!("vault.tls_server_name {n:?}: {e}")))?,
        ),
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS to Vault: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedVerifier {
            inner: webpki,
            name,
        }));
    let config = match (&v.client_cert_file, &v.client_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_cert_resolver(Arc::new(ReloadingClientCert::new(cert, key, provider)?)),
        (None, None) => builder.with_no_client_auth(),
        // The config's validation names the missing half; never connect without it.
        (Some(_), None) => return Err(setup("vault.client_key_file is missing".into())),
        (None, Some(_)) => return Err(setup("vault.client_cert_file is missing".into())),
    };
    Ok(Some(config))
}

/// The crypto provider of the Vault connection (ring, as reqwest's own rustls setup).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CAs Vault's certificate may chain to: exactly those of `vault.ca_file` when it is set
/// (a pinned set: the built-in roots are not added), else the built-in public roots.
fn trust_anchors(v: &VaultConfig) -> Result<RootCertStore, VaultError> {
    let mut roots = RootCertStore::empty();
    match &v.ca_file {
        Some(path) => {
            let certs = read_certs(path, "vault.ca_file")?;
            for (i, c) in certs.into_iter().enumerate() {
                roots.add(c).map_err(|e| {
                    setup(format!(
                        "vault.ca_file {}: certificate {} is not a usable CA: {e}",
                        path.display(),
                        i + 1
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let pem =
        std::fs::read(path).map_err(|e| setup(format!("{setting} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("{setting} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup(format!(
            "{setting} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The client certificate and key of `vault.client_cert_file`/`client_key_file`, read again at
/// a handshake when either file changed since it was last read.
///
/// "Changed" is the metadata of the file a path resolves to (symlinks followed: kubelet swaps
/// the `..data` symlink of a mounted Secret): device, inode, length, mtime and ctime. That is
/// one `stat` per file per handshake; the files are read only when a stamp differs. A new pair
/// that cannot be used (unreadable, not PEM, a key that is not the certificate's) is not taken:
/// the last good pair stays in use, a warning naming the file is logged once for that change
/// (never the key's content), and the files are tried again when they change again.
#[derive(Debug)]
pub(crate) struct ReloadingClientCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The files' stamps when `current` was read, or when a change was last found unusable.
    seen: (Option<Stamp>, Option<Stamp>),
    current: Arc<CertifiedKey>,
    /// The last warning logged about an unusable change, and how many were logged.
    warning: Option<String>,
    warnings: u64,
}

/// What identifies a version of a file: a new file renamed over the path or a symlink swap
/// changes the inode, a rewrite in place the length or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamp of the file `path` resolves to; `None` when it cannot be stat'ed (being replaced,
/// or gone: reading it then fails and says why).
fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

impl ReloadingClientCert {
    /// Reads the pair; an unusable one is an error naming the setting (the broker does not
    /// start).
    pub(crate) fn new(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, VaultError> {
        let seen = (stamp(cert), stamp(key));
        let current = Arc::new(load_pair(cert, key, &provider)?);
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            state: Mutex::new(Loaded {
                seen,
                current,
                warning: None,
                warnings: 0,
            }),
        })
    }

    /// The pair to present: read again first when either file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = (stamp(&self.cert), stamp(&self.key));
        if now != state.seen {
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(pair) => {
                    state.current = Arc::new(pair);
                    state.seen = now;
                    info!(
                        cert = %self.cert.display(),
                        key = %self.key.display(),
                        "vault.client_cert_file changed: the new client certificate is \
                         presented on new connections to Vault"
                    );
                }
                // Changed again while being read (a half-done update): the next handshake
                // looks again, with nothing to warn about yet.
                Err(_) if (stamp(&self.cert), stamp(&self.key)) != now => {}
                Err(e) => {
                    let reason = match e {
                        VaultError::Setup(m) => m,
                        other => other.to_string(),
                    };
                    let msg = format!(
                        "the changed client certificate is not used, the previous one still \
                         is: {reason}"
                    );
                    warn!("{msg}");
                    state.seen = now;
                    state.warning = Some(msg);
                    state.warnings += 1;
                }
            }
        }
        Arc::clone(&state.current)
    }

    #[cfg(test)]
    fn warnings(&self) -> (u64, Option<String>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.warnings, state.warning.clone())
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // As rustls's own single-certificate resolver: the one certificate, whatever the hints.
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificate chain of `cert` and the private key of `key`, checked to belong together.
/// Errors name the setting and the file; never the key's content.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, VaultError> {
    let chain = read_certs(cert, "vault.client_cert_file")?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        setup(format!(
            "vault.client_key_file {}: no usable PEM private key: {e}",
            key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        setup(format!(
            "vault.client_cert_file {} and vault.client_key_file {}: {e}",
            cert.display(),
            key.display()
        ))
    })
}

/// Where requests go when `vault.tls_server_name` is a DNS name other than the address's host:
/// to a URL whose host is that name, so that reqwest sends it as the TLS SNI (as Vault's own
/// `VAULT_TLS_SERVER_NAME` does), with a resolver that connects that name to `vault.addr`'s
/// real host and port, looked up at each connect. The HTTP `Host` header follows the URL: it is
/// `tls_server_name` (with `vault.addr`'s port when the address has one).
pub(crate) struct SniRoute {
    /// `vault.addr` with its host replaced by `vault.tls_server_name`, no trailing `/`.
    pub(crate) base: String,
    pub(crate) resolver: Arc<SniResolver>,
}

/// `None` when the address is used as it is: no `tls_server_name`, an IP address as
/// `tls_server_name` (never sent as SNI; the certificate is still checked for it), the same
/// name as the address's host, or a plain `http://` address.
pub(crate) fn sni_route(v: &VaultConfig, addr: &str) -> Result<Option<SniRoute>, VaultError> {
    let Some(name) = v.tls_server_name.as_deref() else {
        return Ok(None);
    };
    let bad_addr = |e: &dyn std::fmt::Display| setup(format!("vault.addr {addr}: {e}"));
    let mut url = reqwest::Url::parse(addr).map_err(|e| bad_addr(&e))?;
    if url.scheme() != "https" || name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(None);
    }
    // An IPv6 host comes in brackets; the lookup wants the bare address.
    let host = match url.host_str() {
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => return Err(bad_addr(&"no host")),
    };
    if host.eq_ignore_ascii_case(name) {
        return Ok(None);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    url.set_host(Some(name))
        .map_err(|e| setup(format!("vault.tls_server_name {name:?}: {e}")))?;
    Ok(Some(SniRoute {
        base: url.as_str().trim_end_matches('/').to_owned(),
        resolver: Arc::new(SniResolver {
            name: url.host_str().unwrap_or(name).to_owned(),
            host,
            port,
        }),
    }))
}

/// Resolves `vault.tls_server_name` to `vault.addr`'s host and port (a DNS lookup at each
/// connect, as for the address itself); any other name (a redirect's) as the system does.
#[derive(Debug)]
pub(crate) struct SniResolver {
    /// The name as the URL holds it (lower case).
    name: String,
    host: String,
    port: u16,
}

impl reqwest::dns::Resolve for SniResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (host, port, ours) = if name.as_str().eq_ignore_ascii_case(&self.name) {
            (self.host.clone(), self.port, true)
        } else {
            (name.as_str().to_owned(), 0, false)
        };
        Box::pin(async move {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as reqwest::dns::Addrs),
                Err(e) if ours => Err(format!(
                    "vault.addr's host {host} (reached under the name of vault.tls_server_name): {e}"
                )
                .into()),
                Err(e) => Err(format!("{host}: {e}").into()),
            }
        })
    }
}

/// The settings a TLS failure depends on, named: appended to the reason of a failed handshake.
pub(crate) fn hint(v: &VaultConfig) -> String {
    let roots = match &v.ca_file {
        Some(p) => format!("verified against vault.ca_file {} only", p.display()),
        None => "verified against the built-in public roots (vault.ca_file unset)".to_owned(),
    };
    let name = match &v.tls_server_name {
        Some(n) => format!("for the name {n:?} of vault.tls_server_name"),
        None => "for the host of vault.addr (vault.tls_server_name unset)".to_owned(),
    };
    let client = match &v.client_cert_file {
        Some(p) => format!("client certificate vault.client_cert_file {}", p.display()),
        None => "no client certificate (vault.client_cert_file unset)".to_owned(),
    };
    format!("Vault's certificate is {roots}, {name}; {client}")
}

/// Whether a request's failure reason is a TLS handshake failure.
pub(crate) fn is_tls_failure(reason: &str) -> bool {
    [
        "certificate",
        "received fatal alert",
        "tls handshake",
        "HandshakeFailure",
    ]
    .iter()
    .any(|k| reason.contains(k))
}

/// The WebPKI verifier, checking the certificate for `name` instead of the address's host when
/// `vault.tls_server_name` is set. Everything else (chain, validity, signatures) is WebPKI's.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (its key thrown away): any well-formed CA will do.
    fn ca_pem() -> String {
        // `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 36500`.
        include_str!("testdata/vault-ca.pem").to_owned()
    }

    #[test]
    fn a_pinned_ca_file_is_the_whole_trust_set_and_the_built_in_roots_are_left_out() {
        let dir = std::env::temp_dir().join(format!("kw-pinned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("ca.pem");
        std::fs::write(&file, ca_pem()).expect("write");
        let mut v = VaultConfig::new("https://vault:8200");
        let public = trust_anchors(&v).expect("built-in roots");
        assert!(public.len() > 50, "the built-in roots: {}", public.len());
        v.ca_file = Some(file.clone());
        let pinned = trust_anchors(&v).expect("pinned");
        assert_eq!(pinned.len(), 1, "only the CA of vault.ca_file");
        std::fs::write(&file, format!("{}{}", ca_pem(), ca_pem())).expect("write");
        assert_eq!(
            trust_anchors(&v).expect("pinned").len(),
            2,
            "every CA of the bundle"
        );
        std::fs::write(&file, "no PEM here").expect("write");
        let e = trust_anchors(&v).expect_err("no certificate");
        assert!(e.to_string().contains("vault.ca_file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    use keyward_testkit::testpki::{Leaf, Minted, TestCa};

    fn pair(ca: &TestCa, n: u32) -> Minted {
        ca.leaf(Leaf::new(&format!(
            "spiffe://cluster.local/ns/shop/sa/pair-{n}"
        )))
    }

    /// Writes `text` to a new file next to `path` and renames it over `path`, as an atomic
    /// writer (and cert-manager's csi driver) does.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// The resolver of the config built for a client certificate in `cert`/`key`.
    fn resolver(cert: &Path, key: &Path) -> Arc<dyn ResolvesClientCert> {
        let mut v = VaultConfig::new("https://vault:8200");
        v.client_cert_file = Some(cert.to_owned());
        v.client_key_file = Some(key.to_owned());
        let config = client_config(&v).expect("config").expect("a TLS config");
        Arc::clone(&config.client_auth_cert_resolver)
    }

    /// The end-entity certificate the resolver presents now.
    fn presented(r: &dyn ResolvesClientCert) -> CertificateDer<'static> {
        let k = r.resolve(&[], &[SignatureScheme::ECDSA_NISTP256_SHA256]);
        k.expect("a client certificate").cert[0].clone()
    }

    #[test]
    fn a_client_certificate_renamed_over_the_old_one_is_presented_from_the_next_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = TestCa::new("clients");
        let (a, b) = (pair(&ca, 1), pair(&ca, 2));
        std::fs::write(&cert, &a.chain_pem).expect("write");
        std::fs::write(&key, &a.key_pem).expect("write");
        let r = resolver(&cert, &key);
        assert_eq!(presented(&*r), a.chain[0], "pair A at start");
        assert_eq!(presented(&*r), a.chain[0], "pair A while nothing changed");
        replace(&key, &b.key_pem);
        replace(&cert, &b.chain_pem);
        assert_eq!(presented(&*r), b.chain[0], "pair B once renamed into place");
    }

    /// Kubelet's layout of a mounted Secret: `tls.crt -> ..data/tls.crt`,
    /// `..data -> ..<timestamp>/`, updated by writing a new timestamped directory and renaming
    /// a new `..data` symlink over the old one.
    struct Projected {
        dir: tempfile::TempDir,
        version: u32,
    }

    impl Projected {
        fn new(m: &Minted) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for f in ["tls.crt", "tls.key"] {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f))
                    .expect("symlink");
            }
            let mut p = Projected { dir, version: 0 };
            p.update(&m.chain_pem, &m.key_pem);
            p
        }
        fn update(&mut self, cert: &str, key: &str) {
            self.version += 1;
            let name = format!("..2026_12_02_08_00_0{}.12345", self.version);
            let ts = self.dir.path().join(&name);
            std::fs::create_dir(&ts).expect("mkdir");
            std::fs::write(ts.join("tls.crt"), cert).expect("write");
            std::fs::write(ts.join("tls.key"), key).expect("write");
            let tmp = self.dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
            let old = std::fs::read_link(self.dir.path().join("..data")).ok();
            std::fs::rename(&tmp, self.dir.path().join("..data")).expect("swap ..data");
            if let Some(old) = old {
                std::fs::remove_dir_all(self.dir.path().join(old)).expect("remove old");
            }
        }
        fn cert(&self) -> PathBuf {
            self.dir.path().join("tls.crt")
        }
        fn key(&self) -> PathBuf {
            self.dir.path().join("tls.key")
        }
    }

    #[test]
    fn a_client_certificate_renewed_by_kubelets_data_symlink_swap_is_presented_from_the_next_handshake(
    ) {
        let ca = TestCa::new("clients");
        let (a, b) = (pair(&ca, 1), pair(&ca, 2));
        let mut secret = Projected::new(&a);
        let r = resolver(&secret.cert(), &secret.key());
        assert_eq!(presented(&*r), a.chain[0], "pair A at start");
        secret.update(&b.chain_pem, &b.key_pem);
        assert_eq!(presented(&*r), b.chain[0], "pair B after the ..data swap");
    }

    #[test]
    fn an_unusable_new_client_certificate_keeps_the_last_good_one_with_one_warning_per_change() {
        let ca = TestCa::new("clients");
        let (a, b, c) = (pair(&ca, 1), pair(&ca, 2), pair(&ca, 3));
        let mut secret = Projected::new(&a);
        let r = ReloadingClientCert::new(&secret.cert(), &secret.key(), provider()).expect("A");
        secret.update(&b.chain_pem, &b.key_pem);
        assert_eq!(presented(&r), b.chain[0], "pair B");
        assert_eq!(r.warnings(), (0, None), "a good change warns about nothing");

        // Garbage in place of the key: B stays, one warning naming the key file.
        secret.update(&b.chain_pem, "-----BEGIN PRIVATE KEY-----\nnot base64!\n");
        assert_eq!(presented(&r), b.chain[0], "still B after a garbage key");
        assert_eq!(presented(&r), b.chain[0], "still B at the next handshake");
        let (n, w) = r.warnings();
        let w = w.expect("a warning");
        assert_eq!(n, 1, "one warning for one change: {w}");
        assert!(w.contains("vault.client_key_file"), "{w}");
        assert!(w.contains(&secret.key().display().to_string()), "{w}");
        assert!(w.contains("previous one"), "{w}");

        // A certificate that is not PEM: B stays, a second warning naming the certificate.
        secret.update("garbage", &b.key_pem);
        assert_eq!(
            presented(&r),
            b.chain[0],
            "still B after a garbage certificate"
        );
        let (n, w) = r.warnings();
        let w = w.expect("a warning");
        assert_eq!(n, 2, "{w}");
        assert!(w.contains("vault.client_cert_file"), "{w}");
        assert!(w.contains(&secret.cert().display().to_string()), "{w}");

        // C's certificate with B's key: not a pair; no key material in the warning.
        secret.update(&c.chain_pem, &b.key_pem);
        assert_eq!(presented(&r), b.chain[0], "still B with a mismatched pair");
        let (n, w) = r.warnings();
        let w = w.expect("a warning");
        assert_eq!(n, 3, "{w}");
        assert!(w.contains("vault.client_key_file"), "{w}");
        for key in [&b.key_pem, &c.key_pem] {
            let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(!w.contains(&body[..16]), "no key material: {w}");
        }

        // A good pair again is taken.
        secret.update(&c.chain_pem, &c.key_pem);
        assert_eq!(presented(&r), c.chain[0], "pair C");
        assert_eq!(r.warnings().0, 3, "no warning for a good change");
    }

    #[test]
    fn unusable_client_certificate_files_refuse_the_start_naming_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("clients");
        let (a, b) = (pair(&ca, 1), pair(&ca, 2));
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, &a.chain_pem).expect("write");
        std::fs::write(&key, &b.key_pem).expect("write");
        let missing = dir.path().join("missing.crt");
        for (c, k, needle) in [
            (&missing, &key, "vault.client_cert_file"),
            (&cert, &cert, "vault.client_key_file"),
            (&cert, &key, "vault.client_key_file"),
        ] {
            let e = ReloadingClientCert::new(c, k, provider()).expect_err("unusable");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    fn route(addr: &str, name: Option<&str>) -> Option<(String, String, u16)> {
        let mut v = VaultConfig::new(addr);
        v.tls_server_name = name.map(str::to_owned);
        sni_route(&v, addr)
            .expect("route")
            .map(|r| (r.base, r.resolver.host.clone(), r.resolver.port))
    }

    #[test]
    fn requests_go_to_tls_server_name_resolved_to_the_address_only_when_it_is_another_dns_name() {
        assert_eq!(
            route("https://10.0.0.7:8200", Some("Vault.Internal.example")),
            Some((
                "https://vault.internal.example:8200".into(),
                "10.0.0.7".into(),
                8200
            ))
        );
        assert_eq!(
            route("https://vault.vault.svc", Some("vault.example")),
            Some((
                "https://vault.example".into(),
                "vault.vault.svc".into(),
                443
            ))
        );
        assert_eq!(
            route("https://[::1]:8200", Some("vault.example")),
            Some(("https://vault.example:8200".into(), "::1".into(), 8200))
        );
        assert_eq!(route("https://10.0.0.7:8200", None), None, "unset");
        assert_eq!(
            route("https://vault.example:8200", Some("10.0.0.7")),
            None,
            "an IP address is never SNI"
        );
        assert_eq!(
            route("https://VAULT.example:8200", Some("vault.example")),
            None,
            "the address's own host"
        );
        assert_eq!(
            route("http://127.0.0.1:8200", Some("vault.example")),
            None,
            "no TLS"
        );
    }
}
