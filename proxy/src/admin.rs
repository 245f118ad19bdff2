//! The admin listener on loopback: `/live`, `/ready` and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

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

/// Serves the admin endpoints until `cancel`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "Admin accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = respond(&req, &registry, &ready);
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
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "ok\n"),
        "/ready" => match ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
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
}
