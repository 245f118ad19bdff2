//! The listeners: inbound (mTLS → app) and outbound (app → mTLS), with connection limits,
//! timeouts, policy re-checks, audit records and drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyward_audit::{AuditLog, Decision, Peer, Record};
use keyward_identity::SpiffeId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{InboundConfig, OutboundConfig, ProxyConfig};
use crate::conn::{splice, SpliceEnd};
use crate::identity::IdentityStore;
use crate::metrics::{ConnLabels, Metrics};
use crate::policy::Policy;
use crate::svid::SvidError;
use crate::tls::{self, Authorize, Verdict};

const INBOUND: &str = "inbound";
const OUTBOUND: &str = "outbound";

/// Settings shared by every listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub allow_tls12: bool,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ProxyConfig> for Limits {
    fn from(c: &ProxyConfig) -> Self {
        Self {
            allow_tls12: c.allow_tls12,
            handshake_timeout: c.handshake_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
        }
    }
}

struct Shared {
    limits: Limits,
    store: Arc<IdentityStore>,
    policy: watch::Receiver<Arc<Policy>>,
    audit: Arc<AuditLog>,
    metrics: Metrics,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    stop_accepting: CancellationToken,
    cut: CancellationToken,
    connect_hook: OnceLock<ConnectHook>,
}

/// Awaited by every inbound connection right before it connects to the app: a seam for tests
/// that must hold a connection at that stage (see [`Proxy::set_connect_hook`]).
pub type ConnectHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The running proxy. Listeners are added with [`Proxy::inbound`] and [`Proxy::outbound`];
/// [`Proxy::drain`] stops them.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(
        limits: Limits,
        store: Arc<IdentityStore>,
        policy: watch::Receiver<Arc<Policy>>,
        audit: Arc<AuditLog>,
        metrics: Metrics,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        Self {
            shared: Arc::new(Shared {
                limits,
                store,
                policy,
                audit,
                metrics,
                permits,
                tracker: TaskTracker::new(),
                stop_accepting: CancellationToken::new(),
                cut: CancellationToken::new(),
                connect_hook: OnceLock::new(),
            }),
        }
    }

    /// Serves an inbound listener: mTLS from peers, plaintext to `cfg.forward`. The allow list
    /// is the policy's entry for the listener's local port.
    pub fn inbound(&self, listener: TcpListener, cfg: InboundConfig) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        let l = Arc::new(InboundListener { port, cfg });
        let shared = self.shared.clone();
        self.shared.tracker.spawn(accept_loop(
            shared,
            listener,
            INBOUND,
            port,
            move |shared, tcp, peer, permit| {
                let l = l.clone();
                async move { serve_inbound(shared, l, tcp, peer, permit).await }
            },
        ));
        Ok(())
    }

    /// Serves an outbound listener: plaintext from the app, mTLS to `cfg.upstream`.
    pub fn outbound(&self, listener: TcpListener, cfg: OutboundConfig) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        let l = Arc::new(OutboundListener { port, cfg });
        let shared = self.shared.clone();
        self.shared.tracker.spawn(accept_loop(
            shared,
            listener,
            OUTBOUND,
            port,
            move |shared, tcp, peer, permit| {
                let l = l.clone();
                async move { serve_outbound(shared, l, tcp, peer, permit).await }
            },
        ));
        Ok(())
    }

    /// Sets the hook awaited before each connection to the app (once; later calls are
    /// ignored). For tests that need a connection paused between authorisation and the app.
    #[doc(hidden)]
    pub fn set_connect_hook(&self, hook: ConnectHook) {
        let _ = self.shared.connect_hook.set(hook);
    }

    /// Open proxied connections.
    pub fn open_connections(&self) -> usize {
        self.shared.limits.max_connections - self.shared.permits.available_permits()
    }

    /// Whether [`Proxy::drain`] has begun.
    pub fn draining(&self) -> bool {
        self.shared.stop_accepting.is_cancelled()
    }

    /// Stops accepting, waits up to `grace` for open connections to finish, then cuts the rest.
    /// Returns how many connections were cut.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.shared.stop_accepting.cancel();
        self.shared.tracker.close();
        info!(open = self.open_connections(), grace = ?grace, "Draining connections");
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let cut = self.open_connections();
        warn!(cut, "Grace period over, closing remaining connections");
        self.shared.cut.cancel();
        self.shared.tracker.wait().await;
        cut
    }
}

struct InboundListener {
    port: u16,
    cfg: InboundConfig,
}

struct OutboundListener {
    port: u16,
    cfg: OutboundConfig,
}

async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    direction: &'static str,
    port: u16,
    handle: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let labels = ConnLabels { direction, port };
    let total = shared
        .metrics
        .connections_total
        .get_or_create(&labels)
        .clone();
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %e, port, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        total.inc();
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            shared
                .metrics
                .handshake_failure(direction, port, "max_connections");
            warn!(%peer, port, "Connection limit reached, closing connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let span = tracing::info_span!("conn", direction, port, %peer);
        shared
            .tracker
            .spawn(handle(shared.clone(), tcp, peer, permit).instrument(span));
    }
    debug!(port, direction, "Listener closed");
}

/// Counts a connection as open while alive.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);
impl OpenGuard {
    fn new(m: &Metrics, direction: &'static str, port: u16) -> Self {
        let g = m
            .connections_open
            .get_or_create(&ConnLabels { direction, port })
            .clone();
        g.inc();
        Self(g)
    }
}
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn audit(
    shared: &Shared,
    action: &'static str,
    decision: Decision,
    spiffe_id: Option<String>,
    addr: String,
    port: u16,
    reason: String,
) -> bool {
    let mut r = Record::new(action, decision).reason(reason);
    r.peer = Some(Peer { spiffe_id, addr });
    r.port = Some(port);
    match shared.audit.record(&r) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "Cannot write audit record");
            false
        }
    }
}

fn peer_id_of(e: &SvidError) -> Option<String> {
    match e {
        SvidError::NotAllowed(id) | SvidError::NotExpected(id) => Some(id.clone()),
        SvidError::TrustDomain { id, .. } => Some(id.clone()),
        _ => None,
    }
}

/// Turns a failed handshake into (metric label, reason, peer ID if known).
fn failure(
    shared: &Shared,
    side: tls::Side,
    verdict: &Verdict,
    err: Option<&std::io::Error>,
) -> (&'static str, String, Option<String>) {
    if let Some(Err(e)) = tls::take_verdict(verdict) {
        return (e.code(), e.to_string(), peer_id_of(&e));
    }
    match err {
        Some(e) => {
            let (code, reason) = tls::classify(e, side, shared.limits.allow_tls12);
            (code, reason, None)
        }
        None => ("timeout", "TLS handshake timed out".into(), None),
    }
}

async fn serve_inbound(
    shared: Arc<Shared>,
    l: Arc<InboundListener>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let port = l.port;
    let _open = OpenGuard::new(&shared.metrics, INBOUND, port);
    let local = tcp.local_addr().ok();
    // Subscribe to policy changes before anything is authorised: every generation published
    // from here on is unseen by this receiver until the connection has checked its peer against
    // it, whatever stage the connection is in (handshake, authorization, app connect, splice).
    let mut policy_rx = shared.policy.clone();
    policy_rx.mark_unchanged();
    let verdict = Verdict::default();
    let policy = shared.policy.clone();
    let authorize: Authorize = Arc::new(move |id: &SpiffeId| {
        if policy.borrow().allows(port, id).is_some() {
            Ok(())
        } else {
            Err(SvidError::NotAllowed(id.to_string()))
        }
    });
    let config = match tls::server_config(
        &shared.store,
        shared.limits.allow_tls12,
        authorize,
        verdict.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "Cannot build TLS config");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accepted = tokio::select! {
        _ = shared.cut.cancelled() => return,
        r = tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)) => r,
    };
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return inbound_denied(&shared, &verdict, Some(&e), peer, port),
        Err(_) => return inbound_denied(&shared, &verdict, None, peer, port),
    };
    let Some(Ok(id)) = tls::take_verdict(&verdict) else {
        // The verifier always records a verdict for a completed handshake.
        warn!("Handshake completed without a verified peer");
        return;
    };
    // Authorise under the newest generation and mark it seen: a generation published during
    // the handshake is checked here, any later one by `revoked` below.
    let rule = policy_rx
        .borrow_and_update()
        .allows(port, &id)
        .map(|p| p.to_string());
    let Some(rule) = rule else {
        // The policy changed between the verifier and here.
        shared.metrics.authz(INBOUND, port, false);
        audit(
            &shared,
            "conn.inbound",
            Decision::Deny,
            Some(id.to_string()),
            peer.to_string(),
            port,
            SvidError::NotAllowed(id.to_string()).to_string(),
        );
        return;
    };
    if !audit(
        &shared,
        "conn.inbound",
        Decision::Allow,
        Some(id.to_string()),
        peer.to_string(),
        port,
        format!("allowed by {rule}"),
    ) {
        // Fail closed: an access that cannot be recorded does not happen.
        return;
    }
    shared.metrics.authz(INBOUND, port, true);
    info!(peer_id = %id, "Connection allowed");

    // Everything after authorisation (app connect, PROXY header, splice) runs against the
    // policy watch: a generation that no longer allows the peer ends the connection at once.
    let forward = forward_inbound(&shared, &l, tls, &id, peer, local);
    tokio::select! {
        () = forward => {}
        () = revoked(&mut policy_rx, port, &id) => {
            shared.metrics.authz(INBOUND, port, false);
            shared.metrics.connections_revoked.inc();
            audit(
                &shared,
                "conn.inbound",
                Decision::Deny,
                Some(id.to_string()),
                peer.to_string(),
                port,
                "policy changed: peer no longer allowed, connection closed".into(),
            );
            warn!(peer_id = %id, "Connection revoked by policy change");
        }
        _ = shared.cut.cancelled() => {}
    }
}

/// Resolves once a policy generation newer than the last one `policy` has seen no longer allows
/// `id` on `port`; never, if the policy source is gone (shutdown: the last policy stays).
async fn revoked(policy: &mut watch::Receiver<Arc<Policy>>, port: u16, id: &SpiffeId) {
    loop {
        if policy.changed().await.is_err() {
            return std::future::pending().await;
        }
        if policy.borrow_and_update().allows(port, id).is_none() {
            return;
        }
    }
}

/// Connects to the app, sends the PROXY header if configured, and splices until the end.
async fn forward_inbound(
    shared: &Shared,
    l: &InboundListener,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    id: &SpiffeId,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) {
    let port = l.port;
    let connect = async {
        if let Some(hook) = shared.connect_hook.get() {
            hook().await;
        }
        TcpStream::connect(l.cfg.forward.as_str()).await
    };
    let app = match tokio::time::timeout(shared.limits.handshake_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(forward = %l.cfg.forward, error = %e, "Cannot connect to the app");
            return;
        }
        Err(_) => {
            warn!(forward = %l.cfg.forward, "Timed out connecting to the app");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let mut app = app;
    if l.cfg.proxy_protocol {
        let version = match tls.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        };
        let dst = local.unwrap_or(peer);
        let header = crate::proxy_protocol::encode(peer, dst, id.as_str(), version);
        if let Err(e) = app.write_all(&header).await {
            warn!(error = %e, "Cannot send PROXY header to the app");
            return;
        }
    }
    let (rx, tx) = shared.metrics.bytes_of(INBOUND, port);
    log_end(splice(tls, app, shared.limits.idle_timeout, rx, tx).await);
}

fn inbound_denied(
    shared: &Shared,
    verdict: &Verdict,
    err: Option<&std::io::Error>,
    peer: SocketAddr,
    port: u16,
) {
    let (code, reason, peer_id) = failure(shared, tls::Side::Server, verdict, err);
    if code == "denied" {
        shared.metrics.authz(INBOUND, port, false);
    } else {
        shared.metrics.handshake_failure(INBOUND, port, code);
    }
    let shown = peer_id.as_deref().unwrap_or("-");
    warn!(peer_id = shown, %reason, "Connection denied");
    audit(
        shared,
        "conn.inbound",
        Decision::Deny,
        peer_id,
        peer.to_string(),
        port,
        reason,
    );
}

fn log_end(end: SpliceEnd) {
    match end {
        SpliceEnd::Done(rx, tx) => debug!(rx, tx, "Connection closed"),
        SpliceEnd::Idle => info!("Idle timeout, connection closed"),
        SpliceEnd::Error(e) => debug!(error = %e, "Connection ended with an error"),
    }
}

async fn serve_outbound(
    shared: Arc<Shared>,
    l: Arc<OutboundListener>,
    local: TcpStream,
    app_peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let port = l.port;
    let _open = OpenGuard::new(&shared.metrics, OUTBOUND, port);
    let verdict = Verdict::default();
    let expect = l.cfg.expect.clone();
    let authorize: Authorize = Arc::new(move |id: &SpiffeId| {
        if expect.contains(id) {
            Ok(())
        } else {
            Err(SvidError::NotExpected(id.to_string()))
        }
    });
    let config = match tls::client_config(
        &shared.store,
        shared.limits.allow_tls12,
        authorize,
        verdict.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "Cannot build TLS config");
            return;
        }
    };
    let upstream = l.cfg.upstream.as_str();
    let host = crate::config::split_host_port(upstream)
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();
    let Ok(name) = rustls_pki_types::ServerName::try_from(host) else {
        warn!(upstream, "Upstream host is not a valid server name");
        return;
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut upstream_addr = upstream.to_owned();
    let connect = async {
        let tcp = TcpStream::connect(upstream).await?;
        let _ = tcp.set_nodelay(true);
        if let Ok(a) = tcp.peer_addr() {
            upstream_addr = a.to_string();
        }
        connector.connect(name, tcp).await
    };
    let connected = tokio::select! {
        _ = shared.cut.cancelled() => return,
        r = tokio::time::timeout(shared.limits.handshake_timeout, connect) => r,
    };
    let tls = match connected {
        Ok(Ok(tls)) => tls,
        other => {
            let err = match &other {
                Ok(Err(e)) => Some(e),
                _ => None,
            };
            let (code, reason, peer_id) = failure(&shared, tls::Side::Client, &verdict, err);
            if code == "unexpected_server" {
                shared.metrics.authz(OUTBOUND, port, false);
            } else {
                shared.metrics.handshake_failure(OUTBOUND, port, code);
            }
            warn!(peer_id = peer_id.as_deref().unwrap_or("-"), %reason, upstream, "Upstream refused");
            audit(
                &shared,
                "conn.outbound",
                Decision::Deny,
                peer_id,
                upstream_addr.clone(),
                port,
                reason,
            );
            return;
        }
    };
    let Some(Ok(id)) = tls::take_verdict(&verdict) else {
        warn!("Handshake completed without a verified server");
        return;
    };
    if !audit(
        &shared,
        "conn.outbound",
        Decision::Allow,
        Some(id.to_string()),
        upstream_addr,
        port,
        format!("server is {id}, as expected (app {app_peer})"),
    ) {
        return;
    }
    shared.metrics.authz(OUTBOUND, port, true);
    debug!(peer_id = %id, "Upstream connected");
    let (rx, tx) = shared.metrics.bytes_of(OUTBOUND, port);
    tokio::select! {
        end = splice(tls, local, shared.limits.idle_timeout, rx, tx) => log_end(end),
        _ = shared.cut.cancelled() => {}
    }
}
