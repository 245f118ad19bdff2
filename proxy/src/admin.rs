//! The admin listener on loopback: `/live`, `/ready` and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Answers `Ok` when ready, or the reason it is not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Lines `/ready` shows below its status, ready or not (warnings that do not block readiness).
pub type Notes = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Serves the admin endpoints until `cancel`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    cancel: CancellationToken,
) {
    serve_with_notes(
        listener,
        registry,
        ready,
        Arc::new(Vec::<String>::new),
        cancel,
    )
    .await
}

/// As [`serve`], with `notes` shown on `/ready`.
pub async fn serve_with_notes(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    notes: Notes,
    cancel: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the error repeats until a descriptor is freed, so
                    // wait (doubling to a second) and log only the first of a run.
                    let delay = backoff.failed();
                    if backoff.failures == 1 {
                        warn!(error = %e, retry_in = ?delay, "Admin accept failed, backing off");
                    } else {
                        debug!(error = %e, failures = backoff.failures, "Admin accept failed again");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            },
        };
        if backoff.failures > 0 {
            warn!(failures = backoff.failures, "Admin accept works again");
            backoff = AcceptBackoff::default();
        }
        let registry = registry.clone();
        let ready = ready.clone();
        let notes = notes.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = respond_with_notes(&req, &registry, &ready, &notes);
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "Admin connection ended");
            }
        });
    }
}

/// The wait after consecutive failed accepts: 10 ms doubling to 1 s.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Counts a failure and returns how long to wait before the next accept.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        Self::FIRST.saturating_mul(1 << shift).min(Self::MAX)
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Routes one admin request.
pub fn respond<B>(
    req: &Request<B>,
    registry: &Registry,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    respond_with_notes(
        req,
        registry,
        ready,
        &(Arc::new(Vec::<String>::new) as Notes),
    )
}

/// Routes one admin request; `/ready` also lists `notes`, one per line after the status.
pub fn respond_with_notes<B>(
    req: &Request<B>,
    registry: &Registry,
    ready: &Readiness,
    notes: &Notes,
) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            let (status, mut body) = match ready() {
                Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            };
            for n in notes() {
                if !body.contains(&n) {
                    body.push_str(&format!("warning: {n}\n"));
                }
            }
            text(status, body)
        }
        "/metrics" => {
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(path: &str, registry: &Registry, ready: &Readiness) -> (StatusCode, String) {
        let req = Request::get(path).body(()).expect("request");
        let r = respond(&req, registry, ready);
        let status = r.status();
        let body = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn accept_failures_back_off_to_a_second() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<_> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[9], Duration::from_secs(1));
        for _ in 0..100 {
            assert_eq!(b.failed(), Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn routes() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::default();
        m.register(&mut registry);
        m.authz("inbound", 15443, false);
        m.svid_expiry.set(1_700_000_000);
        let not_ready: Readiness = Arc::new(|| Err("workload certificate not issued yet".into()));
        let ready: Readiness = Arc::new(|| Ok(()));
        assert_eq!(get("/live", &registry, &not_ready).await.0, StatusCode::OK);
        let (s, b) = get("/ready", &registry, &not_ready).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("not issued"));
        assert_eq!(get("/ready", &registry, &ready).await.0, StatusCode::OK);
        let (s, b) = get("/metrics", &registry, &ready).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            b.contains(
                r#"keyward_proxy_authz_total{direction="inbound",port="15443",decision="deny"} 1"#
            ),
            "{b}"
        );
        assert!(
            b.contains("keyward_svid_expiry_timestamp_seconds 1700000000"),
            "{b}"
        );
        assert_eq!(
            get("/nope", &registry, &ready).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn ready_shows_notes_whether_ready_or_not() {
        let registry = Registry::default();
        let notes: Notes = Arc::new(|| vec!["app port 8080 is reachable".into()]);
        let req = Request::get("/ready").body(()).expect("request");
        let ready: Readiness = Arc::new(|| Ok(()));
        let r = respond_with_notes(&req, &registry, &ready, &notes);
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ready\nwarning: app port 8080 is reachable\n");
        let not_ready: Readiness = Arc::new(|| Err("app port 8080 is reachable (refuse)".into()));
        let r = respond_with_notes(&req, &registry, &not_ready, &notes);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            &body[..],
            b"app port 8080 is reachable (refuse)\n",
            "a note already in the reason is not repeated"
        );
    }
}
