//! The local socket API: HTTP/1.1 over a Unix domain socket. Every connection's peer
//! credentials come from `SO_PEERCRED`; every request that touches a secret is audited before
//! anything is served, and is refused if the record cannot be written.
//!
//! Response bodies that carry secret values are built in a zeroizing buffer and handed to
//! hyper as `Bytes` that own it, so the plaintext is wiped once the response is written.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyward_audit::{Caller, Decision, Record};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::cache::Cached;
use crate::config::{valid_name, SocketConfig};
use crate::metrics::RequestLabel;
use crate::{Inner, StartError};

/// Largest request head (request line + headers) accepted; hyper answers 431 beyond it.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted (the API takes none); 413 beyond it.
pub const MAX_BODY_BYTES: u64 = 1024;

/// Creates the socket with the configured mode and group. The file is created under a
/// restrictive umask, so it is never reachable with wider permissions than configured.
pub fn bind(cfg: &SocketConfig) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Socket {
        path: cfg.path.display().to_string(),
        source,
    };
    if let Some(parent) = cfg.path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::symlink_metadata(&cfg.path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(&cfg.path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )))
        }
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&cfg.path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(err)?;
    if let Some(gid) = cfg.group {
        nix::unistd::chown(&cfg.path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| err(std::io::Error::from(e)))?;
    }
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(cfg.mode_bits()))
        .map_err(err)?;
    Ok(listener)
}

/// The answer to a connection over `socket.max_connections`, written without reading the request.
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":"too_many_connections","detail":"socket.max_connections are open; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves until `shutdown`; then stops accepting and lets open requests finish.
pub async fn serve(listener: UnixListener, inner: Arc<Inner>, shutdown: CancellationToken) {
    let limit = Arc::new(tokio::sync::Semaphore::new(
        inner.config.socket.max_connections,
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Socket accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(
                max_connections = inner.config.socket.max_connections,
                "Socket connection refused: too many open connections"
            );
            // Say why instead of a bare close. The socket's send buffer is empty, so this
            // small write completes at once or not at all; either way the stream is dropped.
            let _ = stream.try_write(&too_many_connections());
            continue;
        };
        let caller = match stream.peer_cred() {
            Ok(c) => {
                let pid = c.pid().unwrap_or(0);
                Caller {
                    pid,
                    uid: c.uid(),
                    gid: c.gid(),
                    comm: process_name(pid),
                }
            }
            Err(e) => {
                warn!(error = %e, "SO_PEERCRED failed; refusing connection");
                continue;
            }
        };
        let conn = graceful.watch(connection(stream, inner.clone(), caller, shutdown.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "Socket connection ended with an error");
            }
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            warn!("Socket connections still open after 5s; closing");
        }
    }
}

/// One HTTP/1.1 connection from `caller` on any byte stream: the socket's limits (head size,
/// read timeout), routing, allow lists and auditing. `serve` runs one per accepted socket
/// connection; tests and the fuzz target run it over in-memory streams.
pub(crate) fn connection<IO>(
    io: IO,
    inner: Arc<Inner>,
    caller: Caller,
    shutdown: CancellationToken,
) -> hyper::server::conn::http1::Connection<
    TokioIo<IO>,
    impl hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Send,
>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let read_timeout = inner.config.socket.read_timeout;
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let caller = caller.clone();
        let stop = shutdown.clone();
        async move { Ok::<_, Infallible>(handle(req, &inner, &caller, &stop).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
}

/// `/proc/PID/comm`, or empty.
fn process_name(pid: i32) -> String {
    if pid <= 0 {
        return String::new();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// An API error: its status, code and detail, mapped in one place.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    UnknownSecret(String),
    MethodNotAllowed,
    Denied(String),
    TooLarge,
    NotReady(String),
    AuditUnavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "bad_request", d.clone()),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d.clone()),
            ApiError::UnknownSecret(n) => (
                StatusCode::NOT_FOUND,
                "unknown_secret",
                format!("no secret named {n:?} is declared"),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "only GET is supported".into(),
            ),
            ApiError::Denied(d) => (StatusCode::FORBIDDEN, "denied", d.clone()),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::NotReady(d) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", d.clone()),
            ApiError::AuditUnavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!("the access could not be audited, so it is refused: {d}"),
            ),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let (status, code, detail) = self.parts();
        let body = serde_json::json!({"error": code, "detail": detail});
        json_response(status, body.to_string().into_bytes())
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A response whose body holds secret plaintext: wiped when hyper drops it.
fn secret_response(content_type: &'static str, body: Zeroizing<Vec<u8>>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_owner(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// Routes one request.
pub async fn handle(
    req: Request<Incoming>,
    inner: &Inner,
    caller: &Caller,
    shutdown: &CancellationToken,
) -> Response<Full<Bytes>> {
    match route(&req, inner, caller, shutdown).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn route(
    req: &Request<Incoming>,
    inner: &Inner,
    caller: &Caller,
    shutdown: &CancellationToken,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::TooLarge);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path
        .strip_prefix("/v1/")
        .ok_or_else(|| ApiError::NotFound(format!("no route {path:?}; the API is under /v1/")))?
        .split('/')
        .collect();
    match segments.as_slice() {
        ["health", "ready"] => match inner.readiness() {
            Ok(()) => Ok(json_response(StatusCode::OK, br#"{"ready":true}"#.to_vec())),
            Err(reason) => Err(ApiError::NotReady(reason)),
        },
        ["secrets"] | ["secrets", ""] => list(inner, caller),
        ["secrets", name] => {
            let query = Query::parse(req.uri().query(), inner.config.socket.max_wait)?;
            secret_json(inner, caller, name, query, shutdown).await
        }
        ["secrets", name, key] => secret_raw(inner, caller, name, key),
        ["identity"] => identity(inner, caller),
        _ => Err(ApiError::NotFound(format!("no route {path:?}"))),
    }
}

/// `?index=N&wait=30s` of a long-poll.
#[derive(Debug, Default, PartialEq)]
struct Query {
    index: Option<u64>,
    wait: Option<Duration>,
}

impl Query {
    fn parse(q: Option<&str>, max_wait: Duration) -> Result<Self, ApiError> {
        let mut out = Query::default();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "index" => {
                    out.index = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("index: expected a version number, got {v:?}"))
                    })?)
                }
                "wait" => {
                    let d = humantime::parse_duration(v).map_err(|_| {
                        ApiError::BadRequest(format!(
                            "wait: expected a duration like 30s, got {v:?}"
                        ))
                    })?;
                    out.wait = Some(d.min(max_wait));
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}; expected index and wait",
                        other.chars().take(64).collect::<String>()
                    )))
                }
            }
        }
        if out.wait.is_some() && out.index.is_none() {
            return Err(ApiError::BadRequest("wait needs index".into()));
        }
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "invalid secret name: expected 1-128 characters of [A-Za-z0-9_.-]".into(),
        ))
    }
}

fn audit(inner: &Inner, rec: &Record) -> Result<(), ApiError> {
    inner
        .metrics
        .requests
        .get_or_create(&RequestLabel {
            decision: rec.decision.as_str().into(),
        })
        .inc();
    inner.audit.record(rec).map_err(|e| {
        inner.metrics.audit_failures.inc();
        warn!(error = %e, "Audit write failed; refusing the request");
        ApiError::AuditUnavailable(e.to_string())
    })
}

fn access_record(
    inner: &Inner,
    caller: &Caller,
    action: &'static str,
    name: &str,
    decision: Decision,
) -> Record {
    let mut rec = Record::new(action, decision);
    rec.caller = Some(caller.clone());
    rec.secret = Some(name.to_owned());
    if let Some(e) = inner.entries.get(name) {
        rec.path = Some(e.spec.path.clone());
    }
    rec
}

/// Looks the secret up and applies its uid allow list; denials are audited.
fn authorize<'a>(
    inner: &'a Inner,
    caller: &Caller,
    action: &'static str,
    name: &str,
) -> Result<&'a Arc<crate::cache::Entry>, ApiError> {
    check_name(name)?;
    let Some(entry) = inner.entries.get(name) else {
        let rec =
            access_record(inner, caller, action, name, Decision::Deny).reason("unknown secret");
        audit(inner, &rec)?;
        return Err(ApiError::UnknownSecret(name.to_owned()));
    };
    if let Some(uids) = &entry.spec.allow_uids {
        if !uids.contains(&caller.uid) {
            let reason = format!("uid {} is not in the secret's allow list", caller.uid);
            let rec =
                access_record(inner, caller, action, name, Decision::Deny).reason(reason.clone());
            audit(inner, &rec)?;
            warn!(
                secret = name,
                uid = caller.uid,
                pid = caller.pid,
                "Secret access denied"
            );
            return Err(ApiError::Denied(reason));
        }
    }
    Ok(entry)
}

/// The cached value if servable, else the audited refusal.
fn servable(
    inner: &Inner,
    caller: &Caller,
    action: &'static str,
    entry: &crate::cache::Entry,
) -> Result<Cached, ApiError> {
    let name = &entry.spec.name;
    let refuse = |reason: String| {
        let rec = access_record(inner, caller, action, name, Decision::Deny).reason(reason.clone());
        audit(inner, &rec)?;
        Err(ApiError::NotReady(reason))
    };
    match entry.value() {
        None => refuse(format!(
            "secret {name} not fetched yet{}",
            entry
                .last_error()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        Some(v) if v.expired(SystemTime::now()) => refuse(format!(
            "cached value of {name} expired and could not be refreshed: {}",
            entry
                .last_error()
                .unwrap_or_else(|| "refresh pending".into())
        )),
        Some(v) => Ok(v),
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn secret_json(
    inner: &Inner,
    caller: &Caller,
    name: &str,
    query: Query,
    shutdown: &CancellationToken,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let entry = authorize(inner, caller, "secret.read", name)?;
    if let Some(index) = query.index {
        let wait = query.wait.unwrap_or(inner.config.socket.max_wait);
        let mut rx = entry.subscribe();
        let moved = rx.wait_for(|v| *v > index);
        tokio::select! {
            _ = moved => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    let value = servable(inner, caller, "secret.read", entry)?;
    let mut rec = access_record(inner, caller, "secret.read", name, Decision::Allow);
    rec.version = Some(value.version);
    rec.lease_hmac = value
        .lease
        .as_ref()
        .map(|l| inner.audit.hmac(l.id.expose()));
    audit(inner, &rec)?;

    let mut body = Zeroizing::new(Vec::with_capacity(256));
    body.extend_from_slice(b"{\"name\":");
    body.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
    body.extend_from_slice(b",\"data\":{");
    for (i, (k, sealed)) in value.fields.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
        body.push(b':');
        let plain = inner
            .sealer
            .open(sealed)
            .map_err(|e| ApiError::NotReady(e.to_string()))?;
        body.extend_from_slice(&plain);
    }
    let mut tail = String::new();
    let _ = write!(
        tail,
        "}},\"version\":{},\"lease_expires_at\":{},\"renewable\":{}}}",
        value.version,
        value
            .lease
            .as_ref()
            .map(|l| format!("\"{}\"", rfc3339(l.expires_at)))
            .unwrap_or_else(|| "null".into()),
        value.lease.as_ref().is_some_and(|l| l.renewable)
    );
    body.extend_from_slice(tail.as_bytes());
    let mut resp = secret_response("application/json", body);
    resp.headers_mut()
        .insert("x-keyward-version", http::HeaderValue::from(value.version));
    Ok(resp)
}

fn secret_raw(
    inner: &Inner,
    caller: &Caller,
    name: &str,
    key: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let entry = authorize(inner, caller, "secret.read", name)?;
    let value = servable(inner, caller, "secret.read", entry)?;
    let Some(sealed) = value.fields.get(key) else {
        let rec =
            access_record(inner, caller, "secret.read", name, Decision::Deny).reason("unknown key");
        audit(inner, &rec)?;
        return Err(ApiError::NotFound(format!(
            "secret {name} has no key {:?}",
            key.chars().take(128).collect::<String>()
        )));
    };
    let mut rec = access_record(inner, caller, "secret.read", name, Decision::Allow);
    rec.version = Some(value.version);
    rec.lease_hmac = value
        .lease
        .as_ref()
        .map(|l| inner.audit.hmac(l.id.expose()));
    rec.reason = Some(format!("key {key}"));
    audit(inner, &rec)?;
    let json = inner
        .sealer
        .open(sealed)
        .map_err(|e| ApiError::NotReady(e.to_string()))?;
    // A JSON string is served as its text; any other value as JSON.
    let body = if json.first() == Some(&b'"') {
        match serde_json::from_slice::<String>(&json) {
            Ok(s) => Zeroizing::new(s.into_bytes()),
            Err(_) => json,
        }
    } else {
        json
    };
    let mut resp = secret_response("text/plain; charset=utf-8", body);
    resp.headers_mut()
        .insert("x-keyward-version", http::HeaderValue::from(value.version));
    Ok(resp)
}

fn list(inner: &Inner, caller: &Caller) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut rec = Record::new("secret.list", Decision::Allow);
    rec.caller = Some(caller.clone());
    audit(inner, &rec)?;
    // A caller sees only the secrets its uid may read: the names, paths and Vault errors of
    // the others are not its business.
    let items: Vec<serde_json::Value> = inner
        .entries
        .values()
        .filter(|e| {
            e.spec
                .allow_uids
                .as_ref()
                .is_none_or(|uids| uids.contains(&caller.uid))
        })
        .map(|e| {
            let v = e.value();
            serde_json::json!({
                "name": e.spec.name,
                "path": e.spec.path,
                "required": e.spec.required,
                "fetched": v.is_some(),
                "version": v.as_ref().map(|v| v.version),
                "lease_expires_at": v.as_ref().and_then(|v| v.lease.as_ref()).map(|l| rfc3339(l.expires_at)),
                "renewable": v.as_ref().and_then(|v| v.lease.as_ref()).is_some_and(|l| l.renewable),
                "error": e.last_error(),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "secrets": items })
            .to_string()
            .into_bytes(),
    ))
}

fn identity(inner: &Inner, caller: &Caller) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(access) = inner.identity_access() else {
        return Err(ApiError::NotFound(
            "no workload identity: this pod declares no mesh ports, so no certificate is issued"
                .into(),
        ));
    };
    let source = access.source;
    let mut rec = Record::new("identity.read", Decision::Allow);
    rec.caller = Some(caller.clone());
    if !access.allow_uids.contains(&caller.uid) {
        let reason = format!(
            "uid {} is not in identity.allow_uids (keyward.io/identity-uids)",
            caller.uid
        );
        rec.decision = Decision::Deny;
        rec.reason = Some(reason.clone());
        audit(inner, &rec)?;
        warn!(
            uid = caller.uid,
            pid = caller.pid,
            "Workload identity access denied"
        );
        return Err(ApiError::Denied(reason));
    }
    let Some(svid) = source.current() else {
        let rec = rec.clone();
        let mut rec = rec;
        rec.decision = Decision::Deny;
        rec.reason = Some("certificate not issued yet".into());
        audit(inner, &rec)?;
        return Err(ApiError::NotReady(
            "workload certificate not issued yet".into(),
        ));
    };
    rec.reason = Some(svid.spiffe_id.clone());
    audit(inner, &rec)?;
    let body = serde_json::json!({
        "spiffe_id": svid.spiffe_id,
        "cert_chain_pem": svid.chain_pem,
        "private_key_pem": svid.key_pem.as_str(),
        "bundle_pem": svid.bundle_pem,
        "expires_at": svid.expires_at,
    });
    let bytes = Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default());
    let mut body = body;
    crate::secret::scrub_json(&mut body);
    Ok(secret_response("application/json", bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let max = Duration::from_secs(60);
        assert_eq!(Query::parse(None, max).expect("empty"), Query::default());
        let q = Query::parse(Some("index=3&wait=30s"), max).expect("valid");
        assert_eq!(q.index, Some(3));
        assert_eq!(q.wait, Some(Duration::from_secs(30)));
        let q = Query::parse(Some("index=3&wait=1h"), max).expect("capped");
        assert_eq!(q.wait, Some(max));
        for bad in ["index=x", "wait=5s", "index=1&wait=soon", "foo=1"] {
            assert!(Query::parse(Some(bad), max).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(ApiError::TooLarge.parts().0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ApiError::UnknownSecret("x".into()).parts().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::Denied("x".into()).parts().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::NotReady("x".into()).parts().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::AuditUnavailable("x".into()).parts().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::BadRequest("x".into()).parts().0,
            StatusCode::BAD_REQUEST
        );
    }
}
