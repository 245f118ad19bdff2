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

use crate::authz::{self, Counted, Direction, Listener, Refusal};
use crate::config::{InboundConfig, OutboundConfig, ProxyConfig};
use crate::conn::{splice, SpliceEnd};
use crate::identity::IdentityStore;
use crate::metrics::{ConnLabels, Metrics};
use crate::policy::Policy;
use crate::tls::{self, Authorize, Verdict};

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
        let l = Arc::new(InboundListener {
            port,
            authz: Arc::new(Listener::Inbound { port }),
            cfg,
        });
        let shared = self.shared.clone();
        self.shared.tracker.spawn(accept_loop(
            shared,
            listener,
            Direction::Inbound,
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
        let l = Arc::new(OutboundListener {
            port,
            authz: Arc::new(Listener::Outbound {
                port,
                expect: cfg.expect.clone(),
            }),
            cfg,
        });
        let shared = self.shared.clone();
        self.shared.tracker.spawn(accept_loop(
            shared,
            listener,
            Direction::Outbound,
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
    /// What the authorizer knows of this listener.
    authz: Arc<Listener>,
    cfg: InboundConfig,
}

struct OutboundListener {
    port: u16,
    authz: Arc<Listener>,
    cfg: OutboundConfig,
}

async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    direction: Direction,
    port: u16,
    handle: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let labels = ConnLabels {
        direction: direction.as_str(),
        port,
    };
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
            count(&shared, direction, port, &Refusal::MaxConnections);
            warn!(%peer, port, "Connection limit reached, closing connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let span = tracing::info_span!("conn", direction = direction.as_str(), port, %peer);
        shared
            .tracker
            .spawn(handle(shared.clone(), tcp, peer, permit).instrument(span));
    }
    debug!(port, direction = direction.as_str(), "Listener closed");
}

/// Counts a connection as open while alive.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);
impl OpenGuard {
    fn new(m: &Metrics, direction: Direction, port: u16) -> Self {
        let g = m
            .connections_open
            .get_or_create(&ConnLabels {
                direction: direction.as_str(),
                port,
            })
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
    direction: Direction,
    decision: Decision,
    spiffe_id: Option<String>,
    addr: String,
    port: u16,
    reason: String,
) -> bool {
    let mut r = Record::new(direction.action(), decision).reason(reason);
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

/// Counts a refusal: an authorization denial, or a failed handshake by its reason.
fn count(shared: &Shared, direction: Direction, port: u16, refusal: &Refusal) {
    match refusal.counted() {
        Counted::Denied => shared.metrics.authz(direction.as_str(), port, false),
        Counted::HandshakeFailure(code) => {
            shared
                .metrics
                .handshake_failure(direction.as_str(), port, code)
        }
    }
}

/// Counts a refusal and writes its deny record.
fn deny(shared: &Shared, listener: &Listener, addr: String, refusal: &Refusal) {
    let (direction, port) = (listener.direction(), listener.port());
    count(shared, direction, port, refusal);
    audit(
        shared,
        direction,
        Decision::Deny,
        refusal.peer_id(),
        addr,
        port,
        refusal.to_string(),
    );
}

/// Why a handshake failed: the verifier's refusal, else the TLS or socket error, else (no
/// error: the handshake did not finish in time) a timeout.
fn failure(
    shared: &Shared,
    direction: Direction,
    verdict: &Verdict,
    err: Option<&std::io::Error>,
) -> Refusal {
    if let Some(Err(refusal)) = tls::take_verdict(verdict) {
        return refusal;
    }
    match err {
        Some(e) => Refusal::from_handshake_error(e, direction, shared.limits.allow_tls12),
        None => Refusal::Timeout,
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
    let _open = OpenGuard::new(&shared.metrics, Direction::Inbound, port);
    let local = tcp.local_addr().ok();
    // Subscribe to policy changes before anything is authorised: every generation published
    // from here on is unseen by this receiver until the connection has checked its peer against
    // it, whatever stage the connection is in (handshake, authorization, app connect, splice).
    let mut policy_rx = shared.policy.clone();
    policy_rx.mark_unchanged();
    let verdict = Verdict::default();
    let authorize = Authorize {
        listener: l.authz.clone(),
        policy: shared.policy.clone(),
    };
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
        Ok(Err(e)) => return inbound_denied(&shared, &l, &verdict, Some(&e), peer),
        Err(_) => return inbound_denied(&shared, &l, &verdict, None, peer),
    };
    let Some(Ok(verified)) = tls::take_verdict(&verdict) else {
        // The verifier always records a verdict for a completed handshake.
        warn!("Handshake completed without a verified peer");
        return;
    };
    // Authorise under the newest generation and mark it seen: a generation published during
    // the handshake is checked here, any later one by `revoked` below.
    let decision = authz::decide(&l.authz, Ok(verified.id), &policy_rx.borrow_and_update());
    let allowed = match decision {
        Ok(allowed) => allowed,
        Err(refusal) => {
            // The policy changed between the verifier and here.
            deny(&shared, &l.authz, peer.to_string(), &refusal);
            return;
        }
    };
    let id = allowed.id.clone();
    if !audit(
        &shared,
        Direction::Inbound,
        Decision::Allow,
        Some(id.to_string()),
        peer.to_string(),
        port,
        allowed.to_string(),
    ) {
        // Fail closed: an access that cannot be recorded does not happen.
        return;
    }
    shared
        .metrics
        .authz(Direction::Inbound.as_str(), port, true);
    info!(peer_id = %id, "Connection allowed");

    // Everything after authorisation (app connect, PROXY header, splice) runs against the
    // policy watch: a generation that no longer allows the peer ends the connection at once.
    let forward = forward_inbound(&shared, &l, tls, &id, peer, local);
    tokio::select! {
        () = forward => {}
        refusal = revoked(&mut policy_rx, &l.authz, &id) => {
            shared.metrics.connections_revoked.inc();
            deny(&shared, &l.authz, peer.to_string(), &refusal);
            warn!(peer_id = %id, "Connection revoked by policy change");
        }
        _ = shared.cut.cancelled() => {}
    }
}

/// Resolves, with the refusal, once a policy generation newer than the last one `policy` has
/// seen no longer allows `id` on `listener`; never, if the policy source is gone (shutdown: the
/// last policy stays).
async fn revoked(
    policy: &mut watch::Receiver<Arc<Policy>>,
    listener: &Listener,
    id: &SpiffeId,
) -> Refusal {
    loop {
        if policy.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Err(refusal) = authz::recheck(listener, id, &policy.borrow_and_update()) {
            return refusal;
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
    let (rx, tx) = shared.metrics.bytes_of(Direction::Inbound.as_str(), port);
    log_end(splice(tls, app, shared.limits.idle_timeout, rx, tx).await);
}

fn inbound_denied(
    shared: &Shared,
    l: &InboundListener,
    verdict: &Verdict,
    err: Option<&std::io::Error>,
    peer: SocketAddr,
) {
    let refusal = failure(shared, Direction::Inbound, verdict, err);
    let peer_id = refusal.peer_id();
    let shown = peer_id.as_deref().unwrap_or("-");
    warn!(peer_id = shown, reason = %refusal, "Connection denied");
    deny(shared, &l.authz, peer.to_string(), &refusal);
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
    let _open = OpenGuard::new(&shared.metrics, Direction::Outbound, port);
    let verdict = Verdict::default();
    let authorize = Authorize {
        listener: l.authz.clone(),
        policy: shared.policy.clone(),
    };
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
            let refusal = failure(&shared, Direction::Outbound, &verdict, err);
            let peer_id = refusal.peer_id();
            warn!(peer_id = peer_id.as_deref().unwrap_or("-"), reason = %refusal, upstream, "Upstream refused");
            deny(&shared, &l.authz, upstream_addr.clone(), &refusal);
            return;
        }
    };
    let Some(Ok(allowed)) = tls::take_verdict(&verdict) else {
        warn!("Handshake completed without a verified server");
        return;
    };
    if !audit(
        &shared,
        Direction::Outbound,
        Decision::Allow,
        Some(allowed.id.to_string()),
        upstream_addr,
        port,
        format!("{allowed} (app {app_peer})"),
    ) {
        return;
    }
    shared
        .metrics
        .authz(Direction::Outbound.as_str(), port, true);
    debug!(peer_id = %allowed.id, "Upstream connected");
    let (rx, tx) = shared.metrics.bytes_of(Direction::Outbound.as_str(), port);
    tokio::select! {
        end = splice(tls, local, shared.limits.idle_timeout, rx, tx) => log_end(end),
        _ = shared.cut.cancelled() => {}
    }
}
