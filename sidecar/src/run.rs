//! `keyward sidecar`: the broker and the proxy in one process.
//!
//! Order of events: validate the whole configuration, bind every port (a bad config or a busy
//! port exits before anything else happens), start the broker (Vault login, secrets, socket),
//! derive the SPIFFE ID from the logged-in token's claims, obtain the first SVID, then serve
//! the listeners. On SIGTERM: `/ready` turns 503, listeners stop accepting, open connections
//! get `drain_grace` to finish, then the broker stops (revoking its leases and token).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyward_broker::vault::Vault;
use keyward_broker::{Broker, IdentitySource, SvidPem};
use keyward_identity::SpiffeId;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use keyward_proxy::config::{IdentityConfig, ProxyConfig};
use keyward_proxy::identity::{
    Backoff, CsrSigner, IdentityError, IdentityStore, Rotator, SignedCert,
};
use keyward_proxy::metrics::Metrics;
use keyward_proxy::policy::{self, Policy};
use keyward_proxy::server::{Limits, Proxy};
use keyward_proxy::svid::TrustBundle;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Config(#[from] keyward_proxy::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("identity.bundle_file {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        addr: String,
        setting: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] keyward_broker::StartError),
    #[error("the service-account token carries no namespace/service account")]
    NoPodIdentity,
    #[error("SPIFFE ID from the token's claims: {0}")]
    Id(#[from] keyward_identity::IdError),
    #[error(transparent)]
    Sizing(#[from] crate::sizing::LimitError),
}

/// Signs CSRs through Vault PKI with the broker's token: `POST PKI_MOUNT/sign/ROLE`.
pub struct VaultSigner {
    pub vault: Arc<Vault>,
    pub mount: String,
    pub role: String,
}

impl CsrSigner for VaultSigner {
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>> {
        Box::pin(async move {
            let path = self.audit_path();
            let body = serde_json::json!({
                "csr": csr_pem,
                "ttl": format!("{}s", ttl.as_secs()),
                "format": "pem",
            });
            let resp = self
                .vault
                .write(&path, &body)
                .await
                .map_err(|e| IdentityError::Sign(format!("Vault {path}: {e}")))?;
            let data = &resp.data;
            let cert = data["certificate"]
                .as_str()
                .ok_or_else(|| IdentityError::Invalid(format!("{path}: no certificate")))?;
            let ca_chain = match data["ca_chain"].as_array() {
                Some(a) if !a.is_empty() => a
                    .iter()
                    .filter_map(|c| c.as_str())
                    .map(|c| format!("{}\n", c.trim_end()))
                    .collect::<String>(),
                _ => data["issuing_ca"].as_str().unwrap_or_default().to_owned(),
            };
            Ok(SignedCert {
                chain_pem: cert.to_owned(),
                ca_chain_pem: ca_chain,
                request_id: Some(resp.request_id.clone()),
            })
        })
    }

    fn audit_path(&self) -> String {
        format!("{}/sign/{}", self.mount, self.role)
    }
}

/// Serves the current SVID to the broker's `GET /v1/identity`.
struct StoreSource(Arc<IdentityStore>);

impl IdentitySource for StoreSource {
    fn current(&self) -> Option<SvidPem> {
        let s = self.0.current()?;
        Some(SvidPem {
            spiffe_id: s.id().to_string(),
            chain_pem: s.chain_pem().to_owned(),
            key_pem: s.key_pem().clone(),
            bundle_pem: self
                .0
                .bundle()
                .map(|b| b.pem().to_owned())
                .unwrap_or_default(),
            expires_at: s.expires_at(),
        })
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.0.subscribe())
    }
}

/// Everything validated and bound, before anything runs.
pub struct Prepared {
    pub proxy: ProxyConfig,
    admin: TcpListener,
    /// `metrics.listen`: `/metrics` only, reachable from the pod network.
    metrics: Option<TcpListener>,
    /// The workload identity and the proxy's listeners; `None` runs broker-only.
    mesh: Option<Mesh>,
}

/// What a pod with mesh ports needs beyond the broker.
struct Mesh {
    identity: IdentityConfig,
    bundle: Option<TrustBundle>,
    policy: Policy,
    policy_bytes: Option<Vec<u8>>,
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
}

/// The `identity` and `proxy` sections as the sidecar runs them (no port bound yet): the
/// loader already checked them with the rest of the document (`keyward_config`), and an absent
/// `proxy` section is the defaults. Without an `identity` section the sidecar runs broker-only:
/// no certificate is issued and no proxy listener bound, while the admin endpoint still serves
/// readiness and metrics.
pub fn validate(
    config: &keyward_broker::config::Config,
) -> Result<(Option<IdentityConfig>, ProxyConfig), SidecarError> {
    Ok((config.identity.clone(), config.proxy_or_default()))
}

/// Validates the configuration, reads the bundle and policy files, and binds every port.
pub async fn prepare(config: &keyward_broker::config::Config) -> Result<Prepared, SidecarError> {
    let (identity, proxy) = validate(config)?;
    let bind = |addr: std::net::SocketAddr, setting: String| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| SidecarError::Bind {
                addr: addr.to_string(),
                setting,
                source,
            })
    };
    let admin = bind(proxy.admin, "proxy.admin".into()).await?;
    let metrics = match &config.metrics {
        Some(m) => Some(bind(m.listen, "metrics.listen".into()).await?),
        None => None,
    };
    let Some(identity) = identity else {
        return Ok(Prepared {
            proxy,
            admin,
            metrics,
            mesh: None,
        });
    };
    let bundle = match &identity.bundle_file {
        Some(path) => {
            let err = |reason: String| SidecarError::Bundle {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            Some(TrustBundle::from_pem(&pem).map_err(|e| err(e.to_string()))?)
        }
        None => None,
    };
    let (policy, policy_bytes) = match &proxy.policy_file {
        Some(path) => {
            let (p, b) = Policy::load_bytes(path, &identity.trust_domain)?;
            (p, Some(b))
        }
        None => (Policy::from_config(&proxy), None),
    };
    let mut inbound = Vec::new();
    for (i, l) in proxy.inbound.iter().enumerate() {
        inbound.push(bind(l.listen, format!("proxy.inbound[{i}].listen")).await?);
    }
    let mut outbound = Vec::new();
    for (i, l) in proxy.outbound.iter().enumerate() {
        outbound.push(bind(l.listen, format!("proxy.outbound[{i}].listen")).await?);
    }
    Ok(Prepared {
        proxy,
        admin,
        metrics,
        mesh: Some(Mesh {
            identity,
            bundle,
            policy,
            policy_bytes,
            inbound,
            outbound,
        }),
    })
}

/// Runs the sidecar until `shutdown`; returns after the drain and the broker's shutdown.
pub async fn run(
    mut config: keyward_broker::config::Config,
    shutdown: CancellationToken,
) -> Result<(), SidecarError> {
    let mut prepared = prepare(&config).await?;
    // Connection limits that fit the memory limit (docs/operations.md#sizing).
    let listeners = prepared
        .mesh
        .as_ref()
        .map_or(0, |m| m.inbound.len() + m.outbound.len());
    let secrets = config.secrets.len();
    crate::sizing::apply(
        &mut config.socket.max_connections,
        &mut prepared.proxy.max_connections,
        listeners,
        secrets,
    )?;
    let broker = Broker::new(config)?;
    run_prepared(prepared, broker, shutdown).await
}

async fn run_prepared(
    p: Prepared,
    broker: Broker,
    shutdown: CancellationToken,
) -> Result<(), SidecarError> {
    let store = p.mesh.as_ref().map(|m| {
        let store = Arc::new(IdentityStore::new(&m.identity.trust_domain));
        broker.set_identity_source(
            Arc::new(StoreSource(store.clone())),
            m.identity.allow_uids.clone(),
        );
        store
    });
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    broker.register_metrics(&mut registry);
    metrics.register(&mut registry);
    crate::sizing::register(&mut registry);
    let registry = Arc::new(registry);

    // Broker-only pods have no listeners to wait for.
    let serving = Arc::new(AtomicBool::new(p.mesh.is_none()));
    let exposure =
        keyward_proxy::exposure::Exposure::new(&p.proxy, broker.audit(), metrics.clone());
    let ready: keyward_proxy::admin::Readiness = {
        let broker = broker.clone();
        let serving = serving.clone();
        let exposure = exposure.clone();
        Arc::new(move || {
            broker.readiness()?;
            if !serving.load(Ordering::Relaxed) {
                return Err("proxy listeners not serving (starting or draining)".into());
            }
            exposure.readiness()
        })
    };
    let admin_cancel = CancellationToken::new();
    let notes: keyward_proxy::admin::Notes = {
        let exposure = exposure.clone();
        Arc::new(move || exposure.notes())
    };
    if let Some(listener) = p.metrics {
        tokio::spawn(crate::metrics_listener::serve(
            listener,
            registry.clone(),
            admin_cancel.clone(),
        ));
    }
    tokio::spawn(keyward_proxy::admin::serve_with_notes(
        p.admin,
        registry,
        ready,
        notes,
        admin_cancel.clone(),
    ));
    tokio::spawn(exposure.run(admin_cancel.clone()));

    let broker_stop = CancellationToken::new();
    let broker_task = {
        let broker = broker.clone();
        let stop = broker_stop.clone();
        tokio::spawn(async move { broker.run(stop).await })
    };
    let result = match (p.mesh, store) {
        (Some(mesh), Some(store)) => {
            serve(mesh, p.proxy, &broker, store, metrics, &serving, &shutdown).await
        }
        _ => {
            info!(
                "No mesh ports declared: broker only (no workload certificate, no proxy listener)"
            );
            shutdown.cancelled().await;
            Ok(())
        }
    };
    if let Err(e) = &result {
        error!(error = %e, "Sidecar failed");
    }
    broker_stop.cancel();
    match broker_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            admin_cancel.cancel();
            return Err(e.into());
        }
        Err(e) => error!(error = %e, "Broker task failed"),
    }
    admin_cancel.cancel();
    result
}

async fn serve(
    mesh: Mesh,
    proxy_cfg: ProxyConfig,
    broker: &Broker,
    store: Arc<IdentityStore>,
    metrics: Metrics,
    serving: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), SidecarError> {
    let Mesh {
        identity,
        bundle,
        policy,
        policy_bytes,
        inbound,
        outbound,
    } = mesh;
    let identity = &identity;
    let vault = broker.vault();
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = vault.wait_logged_in() => {}
    }
    let pod = vault.pod_identity().ok_or(SidecarError::NoPodIdentity)?;
    let id = SpiffeId::for_workload(&identity.trust_domain, &pod.namespace, &pod.service_account)?;
    info!(spiffe_id = %id, "Workload identity");
    let rotator = Rotator {
        store: store.clone(),
        signer: Arc::new(VaultSigner {
            vault: vault.clone(),
            mount: identity.pki_mount.clone(),
            role: identity.pki_role.clone(),
        }),
        id,
        ttl: identity.ttl(),
        bundle_override: bundle,
        audit: broker.audit(),
        metrics: metrics.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        match rotator.issue_once().await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "Cannot obtain the workload certificate");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let background = CancellationToken::new();
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
    if let (Some(path), Some(bytes)) = (&proxy_cfg.policy_file, policy_bytes) {
        tokio::spawn(policy::watch_file(
            path.clone(),
            identity.trust_domain.clone(),
            bytes,
            policy_tx,
            metrics.clone(),
            background.clone(),
        ));
    } else {
        // Keep the sender alive so connections do not see the policy source vanish.
        let bg = background.clone();
        tokio::spawn(async move {
            bg.cancelled().await;
            drop(policy_tx);
        });
    }
    tokio::spawn(rotator.run(background.clone()));
    let proxy = Proxy::new(
        Limits::from(&proxy_cfg),
        store,
        policy_rx,
        broker.audit(),
        metrics,
    );
    let listen = |e: std::io::Error| SidecarError::Bind {
        addr: String::new(),
        setting: "proxy".into(),
        source: e,
    };
    for (l, c) in inbound.into_iter().zip(proxy_cfg.inbound.iter().cloned()) {
        proxy.inbound(l, c).map_err(listen)?;
    }
    for (l, c) in outbound.into_iter().zip(proxy_cfg.outbound.iter().cloned()) {
        proxy.outbound(l, c).map_err(listen)?;
    }
    serving.store(true, Ordering::Relaxed);
    info!(
        inbound = proxy_cfg.inbound.len(),
        outbound = proxy_cfg.outbound.len(),
        "Proxy serving"
    );
    shutdown.cancelled().await;
    serving.store(false, Ordering::Relaxed);
    let cut = proxy.drain(proxy_cfg.drain_grace).await;
    info!(cut, "Proxy drained");
    background.cancel();
    Ok(())
}
