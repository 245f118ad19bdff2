//! Proxy test support: OpenBao PKI (root, intermediate and the `spiffe` role of RECIPES.md),
//! `keyward sidecar` processes, and a raw mTLS client that presents any certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;

use crate::bao::Bao;

pub const TD: &str = "cluster.local";

/// The PKI mounted in OpenBao: `pki` (root) and `pki_int` (intermediate, role `spiffe`).
pub struct Pki {
    pub root_pem: String,
    pub int_pem: String,
}

impl Pki {
    /// Mounts and configures both engines per RECIPES.md.
    pub async fn setup(bao: &Bao) -> Pki {
        bao.api(
            "POST",
            "sys/mounts/pki",
            Some(json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})),
        )
        .await;
        let root = bao
            .api(
                "POST",
                "pki/root/generate/internal",
                Some(json!({"common_name": "Test Root", "key_type": "ec", "key_bits": 256, "ttl": "87600h"})),
            )
            .await;
        let root_pem = root["data"]["certificate"]
            .as_str()
            .expect("root")
            .to_owned();
        bao.api(
            "POST",
            "sys/mounts/pki_int",
            Some(json!({"type": "pki", "config": {"max_lease_ttl": "43800h"}})),
        )
        .await;
        let csr = bao
            .api(
                "POST",
                "pki_int/intermediate/generate/internal",
                Some(
                    json!({"common_name": "Test Intermediate", "key_type": "ec", "key_bits": 256}),
                ),
            )
            .await;
        let csr = csr["data"]["csr"].as_str().expect("csr").to_owned();
        let int = bao
            .api(
                "POST",
                "pki/root/sign-intermediate",
                Some(json!({"csr": csr, "ttl": "43800h", "use_csr_values": true, "format": "pem"})),
            )
            .await;
        let int_pem = int["data"]["certificate"].as_str().expect("int").to_owned();
        // With the root in the bundle, `ca_chain` of every signed certificate ends in the root.
        bao.api(
            "POST",
            "pki_int/intermediate/set-signed",
            Some(json!({"certificate": format!("{int_pem}\n{root_pem}\n")})),
        )
        .await;
        Self::create_role(bao).await;
        Pki { root_pem, int_pem }
    }

    /// The `pki_int/roles/spiffe` role that signs workload SVIDs.
    pub async fn create_role(bao: &Bao) {
        bao.api(
            "POST",
            "pki_int/roles/spiffe",
            Some(json!({
                "allowed_uri_sans": format!("spiffe://{TD}/ns/*/sa/*"),
                "allow_any_name": false,
                "require_cn": false,
                "key_type": "any",
                "ttl": "1h",
                "max_ttl": "24h",
                "use_csr_common_name": false,
                "use_csr_sans": true,
                "enforce_hostnames": false,
            })),
        )
        .await;
    }

    /// A key and a certificate for `id` signed by OpenBao as root: (chain PEM leaf+int, key).
    pub async fn issue(&self, bao: &Bao, id: &str, ttl: &str) -> (String, String) {
        let spiffe = keyward_identity::SpiffeId::parse(id).expect("id");
        let k = keyward_proxy::identity::key_and_csr(&spiffe).expect("csr");
        let v = bao
            .api(
                "POST",
                "pki_int/sign/spiffe",
                Some(json!({"csr": k.csr_pem, "ttl": ttl, "format": "pem"})),
            )
            .await;
        let cert = v["data"]["certificate"].as_str().expect("certificate");
        (format!("{cert}\n{}\n", self.int_pem), k.key_pem.to_string())
    }
}

/// A real OpenBao with roles for the two shop workloads (`orders` and `frontend`, 10 m tokens)
/// and the PKI that signs their SVIDs.
pub async fn shop_vault() -> (crate::TestVault, Pki) {
    let vault = crate::TestVault::start("shop", "orders", "10m", "1h").await;
    crate::jwt::role(
        &vault.bao,
        "frontend",
        "shop",
        "frontend",
        "10m",
        "1h",
        &["app"],
    )
    .await;
    let pki = Pki::setup(&vault.bao).await;
    (vault, pki)
}

/// A free loopback address for a listener.
pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::free_port()))
}

/// A `keyward sidecar` process, sent SIGTERM and then killed when dropped.
pub struct Sidecar {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub audit: PathBuf,
    pub socket: PathBuf,
    pub admin: SocketAddr,
    pub policy: PathBuf,
}

/// What a sidecar runs: YAML lists for `inbound`/`outbound` and optional extra proxy keys.
pub struct SidecarSpec<'a> {
    pub ns: &'a str,
    pub sa: &'a str,
    pub token: String,
    pub ttl: &'a str,
    /// PEM written to `identity.bundle_file` (None: Vault's CA chain).
    pub bundle: Option<String>,
    /// Policy file content (None: no policy file, inline allow lists only).
    pub policy: Option<String>,
    pub inbound: String,
    pub outbound: String,
    /// `identity.allow_uids`, a YAML list: who may read the SVID and key at `/v1/identity`.
    pub identity_uids: &'a str,
    /// No `identity` section and no listeners: the sidecar of a pod without mesh ports.
    pub broker_only: bool,
    pub extra: &'a str,
}

impl<'a> SidecarSpec<'a> {
    /// A sidecar for `ns`/`sa` with 1h certificates, Vault's CA chain as its bundle, no policy
    /// file, no listeners and nothing extra: set what a test needs with `..SidecarSpec::new(..)`.
    pub fn new(ns: &'a str, sa: &'a str, token: String) -> Self {
        SidecarSpec {
            ns,
            sa,
            token,
            ttl: "1h",
            bundle: None,
            policy: None,
            inbound: "[]".into(),
            outbound: "[]".into(),
            identity_uids: "[]",
            broker_only: false,
            extra: "",
        }
    }
}

impl Sidecar {
    pub fn start(vault_addr: &str, spec: SidecarSpec<'_>) -> Sidecar {
        Self::start_with_env(vault_addr, spec, &[])
    }

    /// As [`Sidecar::start`], with extra environment variables (`KEYWARD_*` overrides).
    pub fn start_with_env(
        vault_addr: &str,
        spec: SidecarSpec<'_>,
        env: &[(&str, &str)],
    ) -> Sidecar {
        Self::start_inner(vault_addr, spec, env, None)
    }

    /// As [`Sidecar::start`], run as `user` (through `setpriv`, which execs keyward in the same
    /// process, so [`Sidecar::pid`] is keyward's). Its directory is opened to that user.
    pub fn start_as(vault_addr: &str, spec: SidecarSpec<'_>, user: &nix::unistd::User) -> Sidecar {
        Self::start_inner(vault_addr, spec, &[], Some(user))
    }

    fn start_inner(
        vault_addr: &str,
        spec: SidecarSpec<'_>,
        env: &[(&str, &str)],
        user: Option<&nix::unistd::User>,
    ) -> Sidecar {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keyward-sidecar-{}", spec.sa))
            .tempdir()
            .expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("token"), &spec.token).expect("token");
        let admin: SocketAddr = format!("127.0.0.1:{}", crate::free_port())
            .parse()
            .expect("addr");
        let bundle_line = match &spec.bundle {
            Some(pem) => {
                std::fs::write(p("bundle.pem"), pem).expect("bundle");
                format!(", bundle_file: {}", p("bundle.pem").display())
            }
            None => String::new(),
        };
        let policy_line = match &spec.policy {
            Some(text) => {
                std::fs::write(p("policy.yaml"), text).expect("policy");
                format!("  policy_file: {}\n", p("policy.yaml").display())
            }
            None => String::new(),
        };
        let mesh = if spec.broker_only {
            format!("proxy: {{admin: \"{admin}\"}}\n")
        } else {
            format!(
                "identity: {{trust_domain: {TD}, pki_mount: pki_int, pki_role: spiffe, ttl: {ttl}, allow_uids: {identity_uids}{bundle_line}}}\n\
                 proxy:\n  admin: \"{admin}\"\n{policy_line}  inbound: {inbound}\n  outbound: {outbound}\n",
                ttl = spec.ttl,
                inbound = spec.inbound,
                outbound = spec.outbound,
                identity_uids = spec.identity_uids,
            )
        };
        let config = format!(
            "vault: {{addr: \"{vault_addr}\", timeout: 5s, allow_insecure_http: {insecure}}}\n\
             auth: {{token_file: {token}, max_backoff: 2s}}\n\
             audit: {{file: {audit}}}\n\
             socket: {{path: {socket}}}\n\
             {mesh}{extra}",
            insecure = vault_addr.starts_with("http://"),
            token = p("token").display(),
            audit = p("audit.log").display(),
            socket = p("broker.sock").display(),
            extra = spec.extra,
        );
        std::fs::write(p("config.yaml"), &config).expect("config");
        let out = std::fs::File::create(p("stdout.log")).expect("stdout");
        let err = std::fs::File::create(p("stderr.log")).expect("stderr");
        let mut cmd = match user {
            None => Command::new(crate::keyward_bin()),
            Some(u) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                    .expect("open the sidecar's directory");
                // The build directory is not the user's to read: a copy of the binary is.
                let bin = p("keyward");
                std::fs::copy(crate::keyward_bin(), &bin).expect("copy keyward");
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .args(["--clear-groups", "--"])
                    .arg(bin);
                c
            }
        };
        let child = cmd
            .args(["sidecar", "--config"])
            .arg(p("config.yaml"))
            .env("KEYWARD_LOG", "info,keyward_proxy=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start keyward sidecar");
        Sidecar {
            child: Some(child),
            audit: p("audit.log"),
            socket: p("broker.sock"),
            policy: p("policy.yaml"),
            admin,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Every record the audit log still holds, its rotated segments included.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        crate::audit_window(&self.audit)
    }

    /// GETs an admin path: (status, body).
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.unwrap_or_default()))
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = self.admin_get("/ready").await {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("sidecar exited with {status}: {}", self.log());
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidecar not ready: {:?}\n{}",
                self.admin_get("/ready").await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric line starting with `prefix` (summed over matches). A registered
    /// family with no sample yet (a labelled counter never incremented) reads as 0; a family
    /// the sidecar does not expose at all (a typo, a renamed metric), or a sidecar that no
    /// longer answers, panics instead of reading as 0.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (status, body) = self.admin_get("/metrics").await.unwrap_or_else(|| {
            panic!(
                "metric {prefix}: the sidecar's admin endpoint does not answer\n{}",
                self.log()
            )
        });
        assert_eq!(status, 200, "metric {prefix}: /metrics answered {status}");
        let family = prefix.split('{').next().unwrap_or(prefix);
        let registered = body.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|t| t.split(' ').next())
                .is_some_and(|name| family.starts_with(name))
        });
        assert!(
            registered,
            "metric {prefix}: no such metric family in /metrics:\n{body}"
        );
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Replaces the policy file atomically.
    pub fn set_policy(&self, text: &str) {
        let tmp = self.dir.path().join("policy.yaml.new");
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, &self.policy).expect("rename policy");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "sidecar did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- sidecar log ({}) ---\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// Connects with mTLS presenting `cert` = (chain PEM, key PEM), or no certificate; the server's
/// certificate is not checked (this is the attacker's side).
pub async fn raw_mtls(
    addr: SocketAddr,
    cert: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(keyward_proxy::tls::provider())
        .with_protocol_versions(keyward_proxy::tls::versions(false))
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let cfg = match cert {
        Some((chain, key)) => {
            let chain = keyward_proxy::svid::certs_from_pem(chain).expect("chain");
            let key = rustls_pemfile_key(key);
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("peer").expect("name"),
            tcp,
        )
        .await
}

fn rustls_pemfile_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &keyward_proxy::tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &keyward_proxy::tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        keyward_proxy::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An echo server on 127.0.0.1 that writes `bye` after the client's half-close.
pub async fn echo_app() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}
