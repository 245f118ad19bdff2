//! The secrets broker: logs in to Vault/OpenBao with the pod's bound service-account token,
//! keeps secrets fresh, and serves them over a local Unix socket, auditing every access.

mod access;
mod api;
mod cache;
mod checkpoint;
pub mod claims;
pub mod cli;
pub mod config;
mod deliver;
#[doc(hidden)]
pub mod fuzzing;
mod lifecycle;
mod metrics;
mod refresh;
mod secret;
pub mod source;
pub mod vault;
mod vault_tls;

pub use secret::SecretString;
pub use source::SecretSource;
pub use vault::{Vault, VaultError};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use keyward_audit::{AuditConfig, AuditLog, Retention};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::cache::Entry;
use crate::config::Config;
use crate::metrics::BrokerMetrics;
use crate::secret::Sealer;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] keyward_audit::AuditError),
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[error("audit.hmac_key_file {path}: {source}")]
    HmacKey {
        path: String,
        source: std::io::Error,
    },
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
}

/// The workload's current X.509-SVID, as the app fetches it from `GET /v1/identity`.
pub struct SvidPem {
    pub spiffe_id: String,
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
    pub bundle_pem: String,
    /// RFC 3339.
    pub expires_at: String,
}

impl std::fmt::Debug for SvidPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidPem")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Something that holds the workload identity (the proxy). When set, the broker serves it on
/// the socket and is ready only once an SVID is held.
pub trait IdentitySource: Send + Sync + 'static {
    fn current(&self) -> Option<SvidPem>;

    /// A channel whose value moves each time the SVID is replaced, so the files of it
    /// (`files[].identity`) are rendered again; `None`: they are rendered once.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The workload identity served on the socket and the uids that may read its private key.
#[derive(Clone)]
pub(crate) struct IdentityAccess {
    pub(crate) source: Arc<dyn IdentitySource>,
    /// Callers allowed `GET /v1/identity` (`identity.allow_uids`); empty allows nobody.
    pub(crate) allow_uids: Arc<[u32]>,
}

/// State shared by the broker's tasks.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) vault: Arc<Vault>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) metrics: BrokerMetrics,
    pub(crate) sealer: Sealer,
    /// Declared secrets by name.
    pub(crate) entries: BTreeMap<String, Arc<Entry>>,
    identity: RwLock<Option<IdentityAccess>>,
    login_error: Mutex<Option<String>>,
    digest_key: Zeroizing<Vec<u8>>,
    digests: Mutex<HashMap<String, String>>,
}

impl Inner {
    pub(crate) fn set_login_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.login_error.lock() {
            *slot = e;
        }
    }

    pub(crate) fn digest_changed(&self, name: &str, digest: &str) -> bool {
        self.digests
            .lock()
            .map(|d| d.get(name).map(String::as_str) != Some(digest))
            .unwrap_or(true)
    }

    pub(crate) fn remember_digest(&self, name: &str, digest: String) {
        if let Ok(mut d) = self.digests.lock() {
            d.insert(name.to_owned(), digest);
        }
    }

    pub(crate) fn identity_source(&self) -> Option<Arc<dyn IdentitySource>> {
        self.identity_access().map(|a| a.source)
    }

    pub(crate) fn identity_access(&self) -> Option<IdentityAccess> {
        self.identity.read().ok().and_then(|s| s.clone())
    }

    /// `Ok` when logged in, every required secret is held unexpired, and the identity (if
    /// any) is issued; otherwise the reason.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        self.audit.health()?;
        if !self.vault.is_logged_in() {
            let why = self
                .login_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| "login in progress".into());
            return Err(format!("not logged in to Vault: {why}"));
        }
        let now = SystemTime::now();
        for entry in self.entries.values().filter(|e| e.spec.required) {
            match entry.value() {
                Some(v) if !v.expired(now) => {}
                Some(_) => {
                    return Err(format!(
                        "secret {} expired and could not be refreshed: {}",
                        entry.spec.name,
                        entry
                            .last_error()
                            .unwrap_or_else(|| "refresh pending".into())
                    ))
                }
                None => {
                    return Err(format!(
                        "secret {} not fetched yet{}",
                        entry.spec.name,
                        entry
                            .last_error()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ))
                }
            }
        }
        deliver::readiness(&self.config)?;
        if let Some(id) = self.identity_source() {
            if id.current().is_none() {
                return Err("workload certificate not issued yet".into());
            }
        }
        Ok(())
    }
}

/// The broker. Build with [`Broker::new`], then [`Broker::run`] until shutdown.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Opens the audit log and prepares the Vault client; binds nothing yet. Each declared
    /// secret comes from the source registered for its path (`source::for_spec`).
    pub fn new(config: Config) -> Result<Self, StartError> {
        Self::with_sources(config, BTreeMap::new())
    }

    /// As [`Broker::new`], with the secrets named in `sources` served by the given sources
    /// instead of the registered ones (a source of the embedding program, or a test's).
    pub fn with_sources(
        config: Config,
        mut sources: BTreeMap<String, Arc<dyn SecretSource>>,
    ) -> Result<Self, StartError> {
        let hmac_key = match &config.audit.hmac_key_file {
            Some(path) => Some(Zeroizing::new(std::fs::read(path).map_err(|source| {
                StartError::HmacKey {
                    path: path.display().to_string(),
                    source,
                }
            })?)),
            None => None,
        };
        let audit = AuditLog::open_with(
            AuditConfig {
                path: config.audit.file.clone(),
                stdout: config.audit.stdout,
                hmac_key,
                fsync: config.audit.fsync,
            },
            retention(&config.audit),
        )?;
        let vault = Arc::new(Vault::new(&config)?);
        let entries = config
            .secrets
            .iter()
            .map(|s| {
                let source = sources
                    .remove(&s.name)
                    .unwrap_or_else(|| source::for_spec(s, &vault));
                (s.name.clone(), Arc::new(Entry::new(s.clone(), source)))
            })
            .collect();
        let mut digest_key = Zeroizing::new(vec![0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut digest_key);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                vault,
                audit: Arc::new(audit),
                metrics: BrokerMetrics::default(),
                sealer: Sealer::new(),
                entries,
                identity: RwLock::new(None),
                login_error: Mutex::new(None),
                digest_key,
                digests: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn audit(&self) -> Arc<AuditLog> {
        self.inner.audit.clone()
    }

    pub fn vault(&self) -> Arc<Vault> {
        self.inner.vault.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Readiness as served at `/v1/health/ready`.
    pub fn readiness(&self) -> Result<(), String> {
        self.inner.readiness()
    }

    /// Serves `source` at `GET /v1/identity` to the callers whose uid is in `allow_uids` (the
    /// response carries the private key, so an empty list allows nobody); everyone else is
    /// refused with 403 and an audited denial.
    pub fn set_identity_source(&self, source: Arc<dyn IdentitySource>, allow_uids: Vec<u32>) {
        if let Ok(mut slot) = self.inner.identity.write() {
            *slot = Some(IdentityAccess {
                source,
                allow_uids: allow_uids.into(),
            });
        }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
        registry.register_collector(Box::new(metrics::AuditLastSeq(self.inner.audit.clone())));
        registry.register_collector(Box::new(metrics::SecretLeases(
            self.inner.entries.values().cloned().collect(),
        )));
    }

    /// Serves one connection from `caller` on any byte stream, as the socket does for each
    /// connection it accepts (with `caller` from `SO_PEERCRED` there), until the client closes
    /// or `shutdown` is cancelled. For in-memory tests and fuzzing; `run` does not need it.
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        caller: keyward_audit::Caller,
        shutdown: CancellationToken,
    ) -> Result<(), hyper::Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        api::connection(io, self.inner.clone(), caller, shutdown).await
    }

    /// Binds the socket and runs the login and refresh loops until `shutdown` is cancelled;
    /// then stops serving, revokes leases and the token (unless configured not to) and
    /// removes the socket.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), StartError> {
        let listeners = api::bind_all(&self.inner.config.socket)?;
        let tasks = self.spawn_loops(&shutdown);
        api::serve_all(listeners, self.inner.clone(), shutdown.clone()).await;
        self.stop_loops(tasks).await;
        let socket = &self.inner.config.socket;
        for path in std::iter::once(&socket.path).chain(socket.containers.iter().map(|c| &c.path)) {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("Broker stopped");
        Ok(())
    }

    /// [`Broker::run`] without the socket: the login and refresh loops until `shutdown` is
    /// cancelled, then the revocations. Connections are served with
    /// [`Broker::serve_connection`] meanwhile (in-memory tests).
    pub async fn run_without_socket(&self, shutdown: CancellationToken) {
        let tasks = self.spawn_loops(&shutdown);
        shutdown.cancelled().await;
        self.stop_loops(tasks).await;
    }

    fn spawn_loops(&self, shutdown: &CancellationToken) -> tokio_util::task::TaskTracker {
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(refresh::auth_loop(self.inner.clone(), shutdown.clone()));
        tasks.spawn(checkpoint::run(self.inner.clone(), shutdown.clone()));
        // Rendered files follow the secrets' version channels (deliver::file_loop).
        for file in &self.inner.config.files {
            tasks.spawn(deliver::file_loop(
                self.inner.clone(),
                file.clone(),
                shutdown.clone(),
            ));
        }
        for entry in self.inner.entries.values() {
            tasks.spawn(refresh::secret_loop(
                self.inner.clone(),
                entry.clone(),
                shutdown.clone(),
            ));
        }
        tasks.close();
        tasks
    }

    /// Waits for the loops (already told to stop), then revokes unless configured not to.
    async fn stop_loops(&self, tasks: tokio_util::task::TaskTracker) {
        tasks.wait().await;
        self.inner.audit.flush_summaries();
        checkpoint::at_shutdown(&self.inner).await;
        if self.inner.config.revoke_on_shutdown {
            refresh::revoke_all(&self.inner).await;
        }
    }
}

/// The audit log's retention from the config: each setting the config leaves out keeps the
/// audit crate's default ([`Retention::default`]).
fn retention(settings: &keyward_config::AuditSettings) -> Retention {
    let d = Retention::default();
    Retention {
        max_bytes: settings.max_bytes.or(d.max_bytes),
        volume_percent: settings.volume_percent.unwrap_or(d.volume_percent),
        segments: settings.segments.unwrap_or(d.segments),
        summary_interval: settings.summary_interval.unwrap_or(d.summary_interval),
    }
}

/// Makes the process non-dumpable: no core dumps, no ptrace by same-uid processes, and
/// `/proc/PID/mem` closed to them.
pub fn harden_process() -> Result<(), nix::Error> {
    nix::sys::prctl::set_dumpable(false)
}
