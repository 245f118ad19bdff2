//! The HTTPS server of `keyward injector`: `/mutate`, `/healthz`, `/metrics`.
//!
//! TLS credentials are re-read when their files change, checked on every accepted connection:
//! a `stat` of two files costs far less than a handshake, and checking per connection means a
//! certificate rotated by cert-manager or by a new Helm release is served from the very next
//! connection, with no watcher task to fail and no window where replicas disagree for longer
//! than one connection. When a new pair cannot be loaded (half-written files, a key that does not
//! match) the previous credentials stay in use and a warning is logged.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::config::InjectorConfig;
use crate::metrics::{self, Metrics};
use crate::review;

/// The API server's own request size limit, which AdmissionReviews cannot exceed.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Memory reserved per request body byte: the body itself, the JSON tree parsed from it and the
/// typed Pod built from that tree.
pub const BYTES_PER_BODY_BYTE: usize = 4;
/// Least memory reserved for one review, so that a small pod's objects fit.
pub const MIN_REVIEW_RESERVATION: usize = 1024 * 1024;
/// Working memory counted per non-empty JSON object (a map node of the parsed tree plus the
/// typed struct built from it) and per other JSON value, to check a body's structure against
/// its reservation before parsing it.
const BYTES_PER_OBJECT: usize = 768;
const BYTES_PER_VALUE: usize = 64;

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body accepted (413 above).
    pub max_body: usize,
    /// Time allowed to receive a request body and answer it (408 above).
    pub request_timeout: Duration,
    /// Time allowed for the TLS handshake and for a request's headers.
    pub handshake_timeout: Duration,
    /// Open connections at most; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Reviews computed at once at most; further requests wait (up to the request timeout).
    pub max_concurrent_reviews: usize,
    /// Memory all reviews in progress may hold together, in bytes. Each request reserves
    /// [`review_reservation`] of its declared length (of `max_body` when undeclared) before a
    /// byte of its body is read, and keeps it until answered; a request that cannot reserve it
    /// within `queue_timeout` gets 503.
    pub memory_budget: usize,
    /// Time a request waits for its reservation before 503.
    pub queue_timeout: Duration,
}

/// The memory reserved for a review whose body is `len` bytes.
pub fn review_reservation(len: usize) -> usize {
    len.saturating_mul(BYTES_PER_BODY_BYTE)
        .max(MIN_REVIEW_RESERVATION)
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_body: MAX_BODY,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 512,
            max_concurrent_reviews: 64,
            memory_budget: 40 * 1024 * 1024,
            queue_timeout: Duration::from_secs(2),
        }
    }
}

/// Why TLS credentials cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("certificate {cert} and key {key} cannot be used: {source}")]
    Rustls {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
}

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Loaded {
    stamps: (Stamp, Stamp),
    acceptor: TlsAcceptor,
}

/// TLS credentials from a certificate file and a key file, reloaded when either changes.
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Builds a rustls server config (ring provider, TLS 1.2 and 1.3, ALPN http/1.1).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .ok()
        .ok_or_else(|| TlsError::NoKey {
            path: key.display().to_string(),
        })?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsReloader {
    /// Loads the credentials once; fails when they cannot be used.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let config = load_server_config(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            loaded: Mutex::new(Loaded {
                stamps,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
        })
    }

    /// The acceptor for the next connection, reloading the files first when they changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let mut loaded = match self.loaded.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if loaded.stamps != stamps {
            match load_server_config(&self.cert, &self.key) {
                Ok(config) => {
                    info!(cert = %self.cert.display(), "Reloaded TLS certificate");
                    loaded.acceptor = TlsAcceptor::from(Arc::new(config));
                    loaded.stamps = stamps;
                }
                Err(error) => {
                    // Keep serving the previous pair; try again on the next connection.
                    warn!(%error, "TLS certificate changed but cannot be loaded; keeping the previous one");
                }
            }
        }
        loaded.acceptor.clone()
    }
}

/// The webhook's shared state.
#[derive(Debug)]
pub struct Webhook {
    cfg: Arc<InjectorConfig>,
    metrics: Metrics,
    reviews: Semaphore,
    /// The memory budget, one permit per KiB.
    budget: Semaphore,
    opts: ServerOptions,
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl Webhook {
    /// State for a server with this config and these limits.
    pub fn new(cfg: InjectorConfig, opts: ServerOptions) -> Self {
        Self {
            cfg: Arc::new(cfg),
            metrics: Metrics::new(),
            reviews: Semaphore::new(opts.max_concurrent_reviews.max(1)),
            budget: Semaphore::new(
                kib(opts.memory_budget.max(review_reservation(opts.max_body))) as usize,
            ),
            opts,
        }
    }

    /// The metrics, for tests.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// A failure answered with an HTTP error status, mapped in one place ([`HttpError::status`]).
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Review(#[from] review::ReviewError),
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("request not completed within {0:?}")]
    Timeout(Duration),
    #[error("the injector is busy (its memory budget for reviews in progress is in use); retry")]
    Busy,
    #[error("request body has {objects} JSON objects and {values} values, more than its memory reservation allows")]
    TooComplex { objects: usize, values: usize },
    #[error("no such path; the webhook serves POST /mutate, GET /healthz and GET /metrics")]
    NotFound,
    #[error("method not allowed")]
    Method,
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge(_) | Self::TooComplex { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Review(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn error_response(e: &HttpError) -> Response<Full<Bytes>> {
    let mut resp = respond(e.status(), "text/plain; charset=utf-8", format!("{e}\n"));
    let headers = resp.headers_mut();
    match e {
        HttpError::Method => {
            headers.insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        HttpError::Busy => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        HttpError::TooLarge(_) | HttpError::TooComplex { .. } | HttpError::Timeout(_) => {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        _ => {}
    }
    resp
}

/// Answers one request. `mutate` is false on the plain-HTTP metrics listener.
async fn handle(
    req: Request<Incoming>,
    app: Arc<Webhook>,
    mutate: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        (&Method::POST, "/mutate") if mutate => match handle_mutate(req, &app).await {
            Ok(resp) => resp,
            Err(e) => {
                app.metrics.observe(metrics::Outcome::bad_request, 0.0);
                warn!(error = %e, status = e.status().as_u16(), "Review refused");
                error_response(&e)
            }
        },
        (_, "/mutate") if mutate => error_response(&HttpError::Method),
        _ => error_response(&HttpError::NotFound),
    };
    Ok(resp)
}

async fn handle_mutate(
    req: Request<Incoming>,
    app: &Webhook,
) -> Result<Response<Full<Bytes>>, HttpError> {
    let max = app.opts.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(HttpError::TooLarge(max));
    }
    // Memory is reserved before a byte of the body is read: the declared length, or the most a
    // body may be when it is sent chunked. Until then the body stays in the client's socket.
    let limit = declared.map_or(max, |n| n as usize);
    let reservation = review_reservation(limit);
    let deadline = app.opts.request_timeout;
    let started_at = tokio::time::Instant::now();
    let work = async {
        let body = req.into_body();
        let _reserved = match tokio::time::timeout(
            app.opts.queue_timeout.min(deadline),
            app.budget.acquire_many(kib(reservation)),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(HttpError::Body("server is shutting down".to_owned())),
            Err(_) => {
                // Read and drop the body (never held) so the client gets the answer rather
                // than a reset, then answer 503.
                let left = deadline.saturating_sub(started_at.elapsed());
                let _ = tokio::time::timeout(left, discard(body, max)).await;
                return Err(HttpError::Busy);
            }
        };
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    HttpError::TooLarge(max)
                } else {
                    HttpError::Body(e.to_string())
                }
            })?
            .to_bytes();
        let shape = json_shape(&body);
        if shape.cost(body.len()) > reservation {
            return Err(HttpError::TooComplex {
                objects: shape.objects,
                values: shape.values,
            });
        }
        let _permit = app
            .reviews
            .acquire()
            .await
            .map_err(|_| HttpError::Body("server is shutting down".to_owned()))?;
        let started = Instant::now();
        let reviewed = review::review(&body, &app.cfg)?;
        let seconds = started.elapsed().as_secs_f64();
        app.metrics.observe(reviewed.outcome.into(), seconds);
        match reviewed.outcome {
            review::ReviewOutcome::Denied => {
                info!(outcome = reviewed.outcome.as_str(), reason = %reviewed.detail, "Pod denied")
            }
            outcome => {
                debug!(outcome = outcome.as_str(), detail = %reviewed.detail, micros = (seconds * 1e6) as u64, "Review answered")
            }
        }
        Ok::<_, HttpError>(respond(StatusCode::OK, "application/json", reviewed.body))
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| HttpError::Timeout(deadline))?
}

/// Reads up to `max` bytes of a body and drops them as they come.
async fn discard(mut body: Incoming, max: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > max {
                return;
            }
        }
    }
}

/// How many JSON objects (non-empty) and other values a body holds, counted without building
/// anything, to bound the memory its parse takes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonShape {
    /// Non-empty objects (`{}` costs nothing to build).
    pub objects: usize,
    /// Arrays, strings, numbers, literals and object keys.
    pub values: usize,
}

impl JsonShape {
    /// Estimated working memory of parsing a body of `len` bytes with this shape.
    pub fn cost(&self, len: usize) -> usize {
        len.saturating_mul(2)
            .saturating_add(self.objects.saturating_mul(BYTES_PER_OBJECT))
            .saturating_add(self.values.saturating_mul(BYTES_PER_VALUE))
    }
}

/// Counts the structure of a JSON text (not validated: a malformed one is refused by the parser).
pub fn json_shape(text: &[u8]) -> JsonShape {
    let mut shape = JsonShape::default();
    let mut in_string = false;
    let mut escaped = false;
    let mut in_scalar = false;
    let mut last_open_object = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            in_scalar = false;
            continue;
        }
        if last_open_object && b != b'}' {
            shape.objects += 1;
        }
        last_open_object = false;
        match b {
            b'"' => {
                in_string = true;
                in_scalar = false;
                shape.values += 1;
            }
            b'{' => {
                in_scalar = false;
                last_open_object = true;
            }
            b'[' => {
                in_scalar = false;
                shape.values += 1;
            }
            b'}' | b']' | b',' | b':' => in_scalar = false,
            _ => {
                if !in_scalar {
                    shape.values += 1;
                    in_scalar = true;
                }
            }
        }
    }
    shape
}

/// Serves HTTPS on `listener` until `shutdown` completes, then lets open requests finish
/// (for at most the request timeout).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    app: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) {
    serve_inner(listener, Some(tls), app, shutdown).await
}

/// Serves plain HTTP `/healthz` and `/metrics` (never `/mutate`) until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    app: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) {
    serve_inner(listener, None, app, shutdown).await
}

async fn serve_inner(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    app: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let conns = Arc::new(Semaphore::new(app.opts.max_connections.max(1)));
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.succeeded();
                    x
                }
                Err(error) => {
                    // EMFILE, ENFILE, ENOBUFS: retrying at once spins and floods the log.
                    let pause = backoff.failed(&error);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let watcher = graceful.watcher();
        let span = tracing::debug_span!("conn", %peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                serve_connection(stream, peer, acceptor, app, watcher).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    let grace = app.opts.request_timeout;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("Connections still open after the grace period; closing them");
    }
}

/// Pauses between failed accepts (5 ms doubling to 1 s while they keep failing) and logs at
/// most one warning a minute, with the number of failures since the previous one.
#[derive(Debug, Default)]
struct AcceptBackoff {
    unlogged: u64,
    pause: Duration,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(60);

    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.unlogged += 1;
        self.pause = if self.pause.is_zero() {
            Self::FIRST
        } else {
            (self.pause * 2).min(Self::MAX)
        };
        if self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            warn!(%error, failures = self.unlogged, pause_ms = self.pause.as_millis() as u64,
                "Accept failed; backing off (is the open-file limit below --max-connections?)");
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        }
        self.pause
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: Arc<Webhook>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let mutate = acceptor.is_some();
    let handshake_timeout = app.opts.handshake_timeout;
    let service = service_fn(move |req| handle(req, app.clone(), mutate));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        // The read buffer of each connection stays small; bodies are read only once reserved.
        .max_buf_size(64 * 1024);
    let result = match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            watcher
                .watch(builder.serve_connection(TokioIo::new(tls), service))
                .await
        }
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "Connection ended with an error");
    }
}
