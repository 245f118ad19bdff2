//! The Prometheus listener (`metrics.listen`, `0.0.0.0:15091` in an injected pod): reachable
//! from the pod network, it serves `/metrics` and nothing else. Readiness, liveness and every
//! other admin path stay on the loopback admin endpoint (`proxy.admin`).
//!
//! What `/metrics` holds is counts, gauges and label values: no secret value, token, lease id or
//! certificate ever becomes a label or a value (docs/operations.md#metrics lists the labels,
//! and which of them carry secret names and identities).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most scrapes served at once; one more is closed at accept.
const MAX_CONNECTIONS: usize = 32;

/// Serves `/metrics` from `registry` on `listener` until `cancel`.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                warn!(error = %e, "Metrics accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("Metrics connection refused: too many scrapes at once");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = respond(&req, &registry);
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "Metrics connection ended");
            }
            drop(permit);
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// `GET /metrics` (or `HEAD`): the registry; anything else 404 (405 for other methods).
fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves only /metrics\n",
            PLAIN,
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n", PLAIN);
    }
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode metrics\n",
            PLAIN,
        );
    }
    text(
        StatusCode::OK,
        body,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metrics_is_served() {
        let registry = Registry::default();
        let get = |path: &str| {
            respond(&Request::get(path).body(()).expect("request"), &registry).status()
        };
        assert_eq!(get("/metrics"), StatusCode::OK);
        for other in ["/ready", "/live", "/", "/metrics/", "/debug"] {
            assert_eq!(get(other), StatusCode::NOT_FOUND, "{other}");
        }
    }
}
