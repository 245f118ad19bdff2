//! The broker's socket API as the wrapper uses it: HTTP/1.1 over the Unix socket (one
//! connection per request), so every read is audited and attributed by the broker from the
//! connection's `SO_PEERCRED`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Longest answer read from the socket (a secret's JSON).
const MAX_ANSWER: usize = 1024 * 1024;
/// How long one request (other than a long-poll) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A secret as read: its version and each key's value as text (a JSON string as its text,
/// any other JSON value as JSON, like `GET /v1/secrets/NAME/KEY`). `Debug` shows the keys only.
pub struct Secret {
    /// The secret's version on the socket.
    pub version: u64,
    /// Key -> value.
    pub data: BTreeMap<String, Zeroizing<String>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("version", &self.version)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a request to the broker failed. The texts name the secret and carry the broker's
/// error code and detail, which never hold a value.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the broker socket {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request to the broker socket failed: {0}")]
    Http(String),
    /// The request took longer than allowed.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker answered with an error.
    #[error("{what}: the broker answered {status} {code}: {detail}")]
    Status {
        /// The request (`secret db`, `event exec.signal`).
        what: String,
        /// HTTP status.
        status: u16,
        /// The API's error code (`unknown_secret`, `denied`, `unavailable`...).
        code: String,
        /// The API's detail.
        detail: String,
    },
    /// The answer is not what the API documents.
    #[error("{what}: unexpected answer from the broker: {why}")]
    Malformed {
        /// The request.
        what: String,
        /// What is wrong.
        why: String,
    },
}

impl ClientError {
    /// The API's error code of a refusal, if the broker answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth retrying at start-up: the socket is not there yet, or the secret not fetched yet.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Timeout(_) => true,
            ClientError::Status { status, .. } => *status == 503,
            ClientError::Malformed { .. } => false,
        }
    }
}

/// An event the wrapper asks the broker to audit (`POST /v1/events`).
#[derive(Debug, serde::Serialize)]
pub struct Event<'a> {
    /// `exec.signal` or `exec.restart`.
    pub event: &'a str,
    /// The secret whose change caused it.
    pub secret: &'a str,
    /// Its new version.
    pub version: u64,
    /// What was done (`SIGHUP to pid 12`, `restart`).
    pub detail: &'a str,
}

/// The broker's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

#[derive(Deserialize)]
struct SecretBody {
    version: u64,
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    detail: String,
}

struct Answer {
    status: StatusCode,
    version: Option<u64>,
    body: Zeroizing<Vec<u8>>,
}

impl Client {
    /// A client of the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "keyward");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("x-keyward-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let collected = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        let body = Zeroizing::new(collected.to_vec());
        drop(collected);
        conn.abort();
        Ok(Answer {
            status,
            version,
            body,
        })
    }

    fn refusal(what: String, a: &Answer) -> ClientError {
        let (code, detail) = match serde_json::from_slice::<ErrorBody>(&a.body) {
            Ok(e) => (e.error, e.detail),
            Err(_) => (String::new(), String::new()),
        };
        ClientError::Status {
            what,
            status: a.status.as_u16(),
            code,
            detail,
        }
    }

    /// Reads a secret (`GET /v1/secrets/NAME`): one audited read.
    pub async fn read(&self, name: &str) -> Result<Secret, ClientError> {
        let what = format!("secret {name}");
        let a = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request(Method::GET, &format!("/v1/secrets/{name}"), None),
        )
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??;
        if a.status != StatusCode::OK {
            return Err(Self::refusal(what, &a));
        }
        let parsed: SecretBody =
            serde_json::from_slice(&a.body).map_err(|e| ClientError::Malformed {
                what: what.clone(),
                // serde_json's message names a position and an expectation, not the input.
                why: format!(
                    "not the documented JSON ({:?} at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })?;
        let data = parsed
            .data
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Zeroizing::new(text))
            })
            .collect();
        Ok(Secret {
            version: parsed.version,
            data,
        })
    }

    /// The current version of `name` (`HEAD /v1/secrets/NAME`: audited by the broker as a read,
    /// but no value crosses the socket), for a secret the wrapper only watches.
    pub async fn version(&self, name: &str) -> Result<u64, ClientError> {
        let a = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request(Method::HEAD, &format!("/v1/secrets/{name}"), None),
        )
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??;
        Self::head_version(name, &a)
    }

    /// Waits until `name`'s version is above `index` or `wait` has passed, and returns the
    /// version then (`HEAD /v1/secrets/NAME?index=N&wait=W`: the broker audits it as a read,
    /// but no value crosses the socket).
    pub async fn wait_version(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<u64, ClientError> {
        let limit = wait + REQUEST_TIMEOUT;
        let a = tokio::time::timeout(
            limit,
            self.request(
                Method::HEAD,
                &format!("/v1/secrets/{name}?index={index}&wait={}s", wait.as_secs()),
                None,
            ),
        )
        .await
        .map_err(|_| ClientError::Timeout(limit))??;
        Self::head_version(name, &a)
    }

    /// The version of a `HEAD` answer. A refusal has no body to carry the API's error code:
    /// the status tells it (docs/socket-api.md, errors), so that an unknown or denied secret
    /// is told from an unavailable one.
    fn head_version(name: &str, a: &Answer) -> Result<u64, ClientError> {
        let what = format!("secret {name}");
        if a.status != StatusCode::OK {
            let (code, detail) = match a.status.as_u16() {
                404 => ("unknown_secret", "no secret of that name is declared"),
                403 => ("denied", "the caller's uid may not read it"),
                400 => ("bad_request", "the request was refused as malformed"),
                503 => (
                    "unavailable",
                    "not fetched yet, or the broker cannot serve it now",
                ),
                _ => ("", "(HEAD: no detail)"),
            };
            return Err(ClientError::Status {
                what,
                status: a.status.as_u16(),
                code: code.into(),
                detail: detail.into(),
            });
        }
        a.version.ok_or(ClientError::Malformed {
            what,
            why: "no X-Keyward-Version header".into(),
        })
    }

    /// Asks the broker to audit `event` (`POST /v1/events`); an error means it is not recorded.
    pub async fn record(&self, event: &Event<'_>) -> Result<(), ClientError> {
        let what = format!("event {}", event.event);
        let body = serde_json::to_vec(event).map_err(|e| ClientError::Malformed {
            what: what.clone(),
            why: e.to_string(),
        })?;
        let a = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request(Method::POST, "/v1/events", Some(body)),
        )
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(Self::refusal(what, &a))
        }
    }
}
