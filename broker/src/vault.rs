//! The Vault session: login with the service-account token, the current Vault token, and the
//! logical calls (reads, writes, lease renewals), all through one HTTP client configured only
//! from the broker's own settings: no `VAULT_*`, `SSL_CERT_FILE` or proxy variable of the
//! environment changes where it connects or which certificates it trusts.
//!
//! Secret material is kept out of freed memory as far as the broker's own code goes: response
//! bodies are read into a bounded [`ZeroBuf`], request bodies are serialized into one, the
//! token lives in a wiped buffer shared with the header values built from it, and the parsed
//! `data` of a response is wiped when the response is dropped. What the HTTP and TLS libraries
//! copy into their own buffers is beyond reach; `docs/threat-model.md` lists it.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keyward_audit::PodIdentity;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;
use zeroize::{Zeroize, Zeroizing};

use crate::claims;
use crate::config::{AuthMethod, Config};
use crate::secret::{scrub_json, SecretString, ZeroBuf};

/// Bounds of `vault.max_response_bytes`.
pub const MIN_RESPONSE_LIMIT: usize = 4 << 10;
pub const MAX_RESPONSE_LIMIT: usize = 64 << 20;

/// Where a Vault call failed: reaching Vault, Vault's answer, or our side.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    #[error("Vault unreachable: {0}")]
    Unreachable(String),
    #[error("Vault answered {status}: {}", errors.join("; "))]
    Status { status: u16, errors: Vec<String> },
    #[error("Vault answer could not be read: {0}")]
    Decode(String),
    #[error(
        "Vault answer refused: {what} is larger than vault.max_response_bytes ({limit} bytes)"
    )]
    TooLarge { what: String, limit: usize },
    #[error("not logged in to Vault")]
    NoToken,
    #[error("cannot read service-account token {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("invalid service-account token: {0}")]
    Claims(String),
    #[error("invalid Vault settings: {0}")]
    Setup(String),
}

impl VaultError {
    /// The HTTP status Vault answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A logical response. `data` may hold secret values: every string in it is wiped when the
/// response is dropped.
pub struct VaultResponse {
    pub request_id: String,
    pub lease_id: Option<SecretString>,
    pub lease_duration: Duration,
    pub renewable: bool,
    pub data: serde_json::Value,
    pub warnings: Vec<String>,
}

impl VaultResponse {
    fn empty() -> Self {
        Self {
            request_id: String::new(),
            lease_id: None,
            lease_duration: Duration::ZERO,
            renewable: false,
            data: serde_json::Value::Null,
            warnings: Vec::new(),
        }
    }
}

impl Drop for VaultResponse {
    fn drop(&mut self) {
        scrub_json(&mut self.data);
    }
}

impl std::fmt::Debug for VaultResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultResponse")
            .field("request_id", &self.request_id)
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("data", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
    #[serde(default)]
    auth: Option<RawAuth>,
}

impl Drop for RawResponse {
    fn drop(&mut self) {
        self.lease_id.zeroize();
        if let Some(d) = self.data.as_mut() {
            scrub_json(d);
        }
    }
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    client_token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl Drop for RawAuth {
    fn drop(&mut self) {
        self.client_token.zeroize();
    }
}

#[derive(Deserialize)]
struct RawErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// The body of `POST auth/MOUNT/login` (jwt and kubernetes methods alike).
#[derive(Serialize)]
struct LoginRequest<'a> {
    jwt: &'a str,
    role: &'a str,
}

/// The Vault token the broker holds.
#[derive(Debug, Clone)]
pub struct TokenState {
    /// The token as the `X-Vault-Token` value: marked sensitive, and backed by one wiped
    /// buffer that every clone (and every request header built from it) shares, so the
    /// token is wiped when the last of them is dropped.
    header: HeaderValue,
    /// HMAC of the accessor is what gets audited; the accessor itself stays here.
    pub accessor: String,
    pub ttl: Duration,
    pub renewable: bool,
    pub obtained: Instant,
}

impl TokenState {
    pub fn expires_at(&self) -> Instant {
        self.obtained + self.ttl
    }

    /// The token as it is sent (for the fuzz seam's oracle, `crate::fuzzing`).
    pub(crate) fn header_bytes(&self) -> &[u8] {
        self.header.as_bytes()
    }

    /// Takes the token out of a parsed answer (wiping the string it was parsed into).
    fn new(
        mut token: String,
        accessor: String,
        ttl: Duration,
        renewable: bool,
    ) -> Result<Self, VaultError> {
        let buf = Zeroizing::new(std::mem::take(&mut token).into_bytes());
        // No copy: the header value keeps the buffer, which is wiped when the last clone goes.
        let mut header = HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).map_err(|_| {
            VaultError::Decode("the client token Vault returned is not a valid header value".into())
        })?;
        header.set_sensitive(true);
        if header.is_empty() {
            return Err(VaultError::Decode(
                "Vault returned an empty client token".into(),
            ));
        }
        Ok(Self {
            header,
            accessor,
            ttl,
            renewable,
            obtained: Instant::now(),
        })
    }
}

/// Outcome of a login, for the record.
#[derive(Debug)]
pub struct Login {
    pub accessor: String,
    pub ttl: Duration,
    pub pod: PodIdentity,
}

/// The broker's connection to Vault and its current token. Shared (`Arc<Vault>`) by the
/// broker's loops and the proxy's identity issuer.
pub struct Vault {
    http: reqwest::Client,
    addr: String,
    /// What request URLs start with: `addr`, or `addr` with the host replaced by
    /// `vault.tls_server_name` (the SNI; see [`crate::vault_tls::sni_route`]).
    base: String,
    /// The TLS settings in force, named, for the reason of a failed handshake.
    tls_hint: String,
    namespace: Option<HeaderValue>,
    max_response: usize,
    method: AuthMethod,
    mount: String,
    role: Option<String>,
    token_file: std::path::PathBuf,
    token: RwLock<Option<TokenState>>,
    pod: RwLock<Option<PodIdentity>>,
    logged_in: watch::Sender<bool>,
    /// Accessor of the token Vault last refused (403), and a wake-up for the auth loop. Keyed by
    /// token so that a 403 for a token already replaced (a request in flight across a login)
    /// does not cause one more login.
    refused: std::sync::Mutex<Option<String>>,
    relogin: tokio::sync::Notify,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.addr)
            .field("method", &self.method)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Builds the HTTP client from the configuration alone; does not contact Vault. Refuses an
    /// `http://` address unless `vault.allow_insecure_http` is set, and warns when it is.
    pub fn new(config: &Config) -> Result<Self, VaultError> {
        let v = &config.vault;
        let addr = v.addr.trim().trim_end_matches('/').to_owned();
        let insecure = addr
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        if insecure && !v.allow_insecure_http {
            return Err(VaultError::Setup(format!(
                "vault.addr {addr} is plain http: tokens and secrets would cross the network \
                 unencrypted; use https://, or set vault.allow_insecure_http: true for a dev \
                 server on loopback"
            )));
        }
        if insecure {
            warn!(
                addr = %addr,
                "vault.allow_insecure_http is set: the Vault token and secrets travel unencrypted"
            );
        }
        if !(MIN_RESPONSE_LIMIT..=MAX_RESPONSE_LIMIT).contains(&v.max_response_bytes) {
            return Err(VaultError::Setup(format!(
                "vault.max_response_bytes must be between {MIN_RESPONSE_LIMIT} and \
                 {MAX_RESPONSE_LIMIT}, got {}",
                v.max_response_bytes
            )));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // Only what the config says: no HTTP(S)_PROXY/ALL_PROXY from the environment.
            .no_proxy()
            // Never downgraded to http by a redirect unless http was explicitly allowed.
            .https_only(!v.allow_insecure_http)
            .timeout(v.timeout)
            .connect_timeout(v.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            // The token (and a login's service-account token, in the body a 307 re-sends) go
            // to vault.addr only: a redirect is followed within that origin, never to another.
            .redirect(reqwest::redirect::Policy::custom(same_origin_redirects));
        if let Some(tls) = crate::vault_tls::client_config(v)? {
            builder = builder.use_preconfigured_tls(tls);
        }
        let mut base = addr.clone();
        if let Some(route) = crate::vault_tls::sni_route(v, &addr)? {
            builder = builder.dns_resolver(route.resolver);
            base = route.base;
        }
        let tls_hint = crate::vault_tls::hint(v);
        let http = builder
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let namespace = v
            .namespace
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| VaultError::Setup("vault.namespace is not a valid header value".into()))?;
        Ok(Self {
            http,
            addr,
            base,
            tls_hint,
            namespace,
            max_response: v.max_response_bytes,
            method: config.auth.method,
            mount: config.auth.mount().to_owned(),
            role: config.auth.role.clone(),
            token_file: config.auth.token_file.clone(),
            token: RwLock::new(None),
            pod: RwLock::new(None),
            logged_in: watch::channel(false).0,
            refused: std::sync::Mutex::new(None),
            relogin: tokio::sync::Notify::new(),
        })
    }

    /// The pod identity from the last token read, if any.
    pub fn pod_identity(&self) -> Option<PodIdentity> {
        self.pod.read().ok().and_then(|p| p.clone())
    }

    /// The current token, if logged in and not expired.
    pub fn token(&self) -> Option<TokenState> {
        let t = self.token.read().ok()?.clone()?;
        (t.expires_at() > Instant::now()).then_some(t)
    }

    /// Whether a valid token is held.
    pub fn is_logged_in(&self) -> bool {
        self.token().is_some()
    }

    /// Waits until a token is held.
    pub async fn wait_logged_in(&self) {
        let mut rx = self.logged_in.subscribe();
        loop {
            if self.is_logged_in() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that changes whenever the login state changes.
    pub fn login_events(&self) -> watch::Receiver<bool> {
        self.logged_in.subscribe()
    }

    /// Reports that Vault refused the token with this accessor (a 403): the auth loop logs in
    /// again if that is still the current token, and ignores it otherwise.
    pub fn token_refused(&self, accessor: &str) {
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(accessor.to_owned());
        }
        self.relogin.notify_waiters();
    }

    /// Resolves once Vault has refused the token with this accessor.
    pub(crate) async fn refusal_of(&self, accessor: &str) {
        loop {
            let notified = self.relogin.notified();
            tokio::pin!(notified);
            // Registered before the check, so a refusal between the two is not missed.
            notified.as_mut().enable();
            let refused = self
                .refused
                .lock()
                .map(|r| r.as_deref() == Some(accessor))
                .unwrap_or(false);
            if refused {
                return;
            }
            notified.await;
        }
    }

    /// Reads the token file and logs in with the configured method
    /// (`POST auth/MOUNT/login` with `{jwt, role}`); stores the new token.
    pub async fn login(&self) -> Result<Login, VaultError> {
        let path = &self.token_file;
        let jwt = read_token_file(path)?;
        let info = claims::decode(jwt.expose()).map_err(|e| VaultError::Claims(e.to_string()))?;
        if let Ok(mut p) = self.pod.write() {
            *p = Some(info.pod.clone());
        }
        let role = self
            .role
            .clone()
            .unwrap_or_else(|| info.pod.service_account.clone());
        let body = ZeroBuf::json(&LoginRequest {
            jwt: jwt.expose(),
            role: &role,
        });
        drop(jwt);
        let login_path = format!("auth/{}/login", self.mount.trim_matches('/'));
        let (status, bytes) = self
            .send(reqwest::Method::POST, &login_path, None, Some(body))
            .await?;
        let (state, accessor) = login_answer(&login_path, status, bytes)?;
        let login = Login {
            accessor,
            ttl: state.ttl,
            pod: info.pod,
        };
        self.set_token(Some(state));
        Ok(login)
    }

    /// Renews the current token; returns the TTL granted.
    pub async fn renew_self(&self) -> Result<Duration, VaultError> {
        let resp = self
            .call(
                reqwest::Method::POST,
                "auth/token/renew-self",
                Some(&serde_json::json!({})),
            )
            .await?;
        let ttl = resp.lease_duration.max(Duration::from_secs(1));
        if let Ok(mut t) = self.token.write() {
            if let Some(t) = t.as_mut() {
                t.ttl = ttl;
                t.obtained = Instant::now();
            }
        }
        Ok(ttl)
    }

    /// Revokes the current token and forgets it.
    pub async fn revoke_self(&self) -> Result<(), VaultError> {
        let r = self
            .call(reqwest::Method::POST, "auth/token/revoke-self", None)
            .await
            .map(|_| ());
        self.set_token(None);
        r
    }

    /// Drops the token (it expired or was refused).
    pub fn forget_token(&self) {
        self.set_token(None);
    }

    fn set_token(&self, t: Option<TokenState>) {
        let logged_in = t.is_some();
        if let Ok(mut slot) = self.token.write() {
            *slot = t;
        }
        self.logged_in.send_replace(logged_in);
    }

    /// `GET /v1/PATH` with the current token.
    pub async fn read(&self, path: &str) -> Result<VaultResponse, VaultError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST /v1/PATH` with a JSON body and the current token.
    pub async fn write(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<VaultResponse, VaultError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Renews a lease; returns the TTL granted.
    pub async fn renew_lease(
        &self,
        lease_id: &SecretString,
        increment: Duration,
    ) -> Result<VaultResponse, VaultError> {
        #[derive(Serialize)]
        struct Renew<'a> {
            lease_id: &'a str,
            increment: u64,
        }
        let body = ZeroBuf::json(&Renew {
            lease_id: lease_id.expose(),
            increment: increment.as_secs(),
        });
        self.call_raw(reqwest::Method::PUT, "sys/leases/renew", Some(body))
            .await
    }

    /// Revokes a lease.
    pub async fn revoke_lease(&self, lease_id: &SecretString) -> Result<VaultResponse, VaultError> {
        #[derive(Serialize)]
        struct Revoke<'a> {
            lease_id: &'a str,
        }
        let body = ZeroBuf::json(&Revoke {
            lease_id: lease_id.expose(),
        });
        self.call_raw(reqwest::Method::PUT, "sys/leases/revoke", Some(body))
            .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<VaultResponse, VaultError> {
        self.call_raw(method, path, body.map(ZeroBuf::json)).await
    }

    /// A logical call with the current token; a 403 tells the auth loop.
    async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<ZeroBuf>,
    ) -> Result<VaultResponse, VaultError> {
        let token = self.token().ok_or(VaultError::NoToken)?;
        let (status, bytes) = self.send(method, path, Some(&token), body).await?;
        if status.as_u16() == 403 {
            // The token may have been revoked or expired out of band.
            self.token_refused(&token.accessor);
        }
        drop(token);
        answer(status, bytes)
    }

    /// Sends one request and reads the whole answer into a wiped buffer of at most
    /// `vault.max_response_bytes`.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&TokenState>,
        body: Option<ZeroBuf>,
    ) -> Result<(reqwest::StatusCode, ZeroBuf), VaultError> {
        let url = format!("{}/v1/{}", self.base, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Request", "true");
        if let Some(t) = token {
            // Shares the token's buffer (no copy) and stays marked sensitive.
            req = req.header("X-Vault-Token", t.header.clone());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns.clone());
        }
        if let Some(b) = body {
            // The body's buffer is wiped once the request is sent and dropped.
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(Bytes::from_owner(b));
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| VaultError::Unreachable(self.describe(&e)))?;
        let status = resp.status();
        let limit = self.max_response;
        let too_large = |what: String| VaultError::TooLarge { what, limit };
        let announced = resp.content_length();
        if let Some(n) = announced.filter(|n| *n > limit as u64) {
            return Err(too_large(format!("{path}: announced body of {n} bytes")));
        }
        let mut buf = ZeroBuf::new(announced.map_or(8 << 10, |n| n as usize), limit);
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| VaultError::Unreachable(describe_reqwest(&e)))?;
            let Some(chunk) = chunk else { break };
            buf.extend(&chunk)
                .map_err(|_| too_large(format!("{path}: body")))?;
        }
        Ok((status, buf))
    }
}

/// Redirects Vault answers are followed only to the origin (scheme, host, port) of the request
/// that was redirected, at most 5 times. Anything else fails the call naming the target: the
/// token in `X-Vault-Token` and a login's JWT are never sent to another host.
fn same_origin_redirects(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let from = attempt.previous().first().map(|u| u.origin());
    let to = attempt.url().origin();
    if attempt.previous().len() > 5 {
        attempt.error("more than 5 redirects from Vault")
    } else if from.as_ref() == Some(&to) {
        attempt.follow()
    } else {
        let target = to.ascii_serialization();
        attempt.error(format!(
            "Vault redirected to another host ({target}), which keyward does not follow: its \
             token goes to vault.addr only; point vault.addr at the active node or at a load \
             balancer that forwards"
        ))
    }
}

/// The longest lease or token TTL taken from an answer (about 10 years): a longer one is held to
/// it, so that `now + ttl` stays representable wherever a TTL is added to a clock.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn granted_ttl(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(MAX_LEASE_DURATION)
}

/// What a logical call makes of Vault's answer (status and whole body), e.g. a read, a lease
/// renewal or `auth/token/renew-self`.
pub(crate) fn answer(
    status: reqwest::StatusCode,
    bytes: ZeroBuf,
) -> Result<VaultResponse, VaultError> {
    if !status.is_success() {
        return Err(status_error(status, &bytes));
    }
    if bytes.is_empty() {
        return Ok(VaultResponse::empty());
    }
    let raw = parse_raw(&bytes)?;
    drop(bytes);
    Ok(into_response(raw))
}

/// What a login makes of Vault's answer to `POST login_path`: the token (taken out of the
/// parsed answer) and its accessor.
pub(crate) fn login_answer(
    login_path: &str,
    status: reqwest::StatusCode,
    bytes: ZeroBuf,
) -> Result<(TokenState, String), VaultError> {
    if !status.is_success() {
        return Err(status_error(status, &bytes));
    }
    let mut raw = parse_raw(&bytes)?;
    drop(bytes);
    let mut auth = raw
        .auth
        .take()
        .ok_or_else(|| VaultError::Decode(format!("{login_path}: no auth in the answer")))?;
    let state = TokenState::new(
        std::mem::take(&mut auth.client_token),
        auth.accessor.clone(),
        granted_ttl(auth.lease_duration).max(Duration::from_secs(1)),
        auth.renewable,
    )?;
    Ok((state, std::mem::take(&mut auth.accessor)))
}

impl Vault {
    /// A failed request's reason, with the TLS settings it was made with when the TLS
    /// handshake failed (which setting to look at: `vault.ca_file`, `vault.tls_server_name`,
    /// `vault.client_cert_file`).
    fn describe(&self, e: &reqwest::Error) -> String {
        let mut s = describe_reqwest(e);
        if crate::vault_tls::is_tls_failure(&s) {
            s.push_str(" (");
            s.push_str(&self.tls_hint);
            s.push(')');
        }
        s
    }
}

fn status_error(status: reqwest::StatusCode, bytes: &ZeroBuf) -> VaultError {
    let errors = serde_json::from_slice::<RawErrors>(bytes.as_slice())
        .map(|e| e.errors)
        .unwrap_or_default();
    VaultError::Status {
        status: status.as_u16(),
        errors,
    }
}

fn parse_raw(bytes: &ZeroBuf) -> Result<RawResponse, VaultError> {
    // serde_json's own error text names a line and column, never the input.
    serde_json::from_slice(bytes.as_slice()).map_err(|e| VaultError::Decode(e.to_string()))
}

fn into_response(mut raw: RawResponse) -> VaultResponse {
    let (lease_duration, renewable) = match &raw.auth {
        Some(a) => (a.lease_duration, a.renewable),
        None => (raw.lease_duration, raw.renewable),
    };
    let lease_id =
        (!raw.lease_id.is_empty()).then(|| SecretString::new(std::mem::take(&mut raw.lease_id)));
    VaultResponse {
        request_id: std::mem::take(&mut raw.request_id),
        lease_id,
        lease_duration: granted_ttl(lease_duration),
        renewable,
        data: raw.data.take().unwrap_or(serde_json::Value::Null),
        warnings: raw.warnings.take().unwrap_or_default(),
    }
}

/// A reqwest error without its URL's query (there is none) and with its cause chain.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Reads the projected token (re-read at every login: the kubelet rotates it).
pub fn read_token_file(path: &Path) -> Result<SecretString, VaultError> {
    let mut text = std::fs::read_to_string(path).map_err(|e| VaultError::TokenFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let token = SecretString::new(text.trim().to_owned());
    text.zeroize();
    if token.expose().is_empty() {
        return Err(VaultError::TokenFile {
            path: path.display().to_string(),
            reason: "file is empty".into(),
        });
    }
    Ok(token)
}

/// A shared handle.
pub type SharedVault = Arc<Vault>;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn vault() -> Vault {
        let config = Config::from_yaml(
            "vault: {addr: \"http://127.0.0.1:1\", allow_insecure_http: true}\nauth: {role: r, token_file: /nonexistent}\nsecrets: []\n",
            &BTreeMap::<String, String>::new(),
        )
        .expect("config");
        Vault::new(&config).expect("vault")
    }

    fn token(accessor: &str) -> TokenState {
        TokenState::new(
            "t".into(),
            accessor.to_owned(),
            Duration::from_secs(60),
            true,
        )
        .expect("token")
    }

    fn ready<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    /// A loopback HTTP server answering each request with the next of `answers` (status line
    /// and headers, `{port}` replaced by its own port); returns its address and the request
    /// heads it received.
    fn http_server(
        answers: Vec<String>,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut buf = [0u8; 8192];
                let n = c.read(&mut buf).unwrap_or(0);
                heads
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let answer = answer.replace("{port}", &addr.port().to_string());
                let _ = c.write_all(answer.as_bytes());
            }
        });
        (addr, seen)
    }

    fn vault_at(addr: std::net::SocketAddr) -> Vault {
        let config = Config::from_yaml(
            &format!("vault: {{addr: \"http://{addr}\", allow_insecure_http: true}}\nauth: {{role: r, token_file: /nonexistent}}\nsecrets: []\n"),
            &BTreeMap::<String, String>::new(),
        )
        .expect("config");
        Vault::new(&config).expect("vault")
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed_and_the_token_stays_home() {
        // The other origin: anything it receives is a leak.
        let (other, other_seen) = http_server(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".into(),
        ]);
        let (vault_addr, seen) = http_server(vec![format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{other}/v1/secret/data/app\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )]);
        let v = vault_at(vault_addr);
        v.set_token(Some(token("a")));
        let e = v.read("secret/data/app").await.expect_err("not followed");
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "Vault redirected to another host (http://{other})"
            )),
            "{text}"
        );
        assert!(
            !text.contains("X-Vault-Token") && !text.contains(": t"),
            "{text}"
        );
        assert_eq!(
            seen.lock().expect("lock").len(),
            1,
            "the request to vault.addr"
        );
        assert!(
            other_seen.lock().expect("lock").is_empty(),
            "the other host received: {:?}",
            other_seen.lock().expect("lock")
        );
    }

    #[tokio::test]
    async fn a_redirect_within_vaults_origin_is_followed_with_the_token() {
        let (vault_addr, seen) = http_server(vec![
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{port}/v1/secret/data/moved\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
                .into(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 24\r\n\
             connection: close\r\n\r\n{\"data\":{\"k\":\"v\"},\"x\":1}"
                .into(),
        ]);
        let v = vault_at(vault_addr);
        v.set_token(Some(token("a")));
        v.read("secret/data/app").await.expect("followed");
        let heads = seen.lock().expect("lock");
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(
            heads[1].starts_with("GET /v1/secret/data/moved "),
            "{}",
            heads[1]
        );
        assert!(
            heads[1]
                .to_ascii_lowercase()
                .contains("x-vault-token: t\r\n"),
            "{}",
            heads[1]
        );
    }

    #[test]
    fn a_refusal_wakes_the_auth_loop_only_for_the_token_it_holds() {
        let v = vault();
        // A 403 for an earlier token, arriving while no one waits (during a login): stored,
        // but not for the token logged in afterwards.
        v.token_refused("old");
        v.set_token(Some(token("new")));
        let mut waiting = pin!(v.refusal_of("new"));
        assert!(
            !ready(waiting.as_mut()),
            "a stale refusal must not cause a login"
        );
        // Another stale one while waiting: still nothing.
        v.token_refused("old");
        assert!(!ready(waiting.as_mut()));
        // The current token refused: the loop wakes.
        v.token_refused("new");
        assert!(ready(waiting.as_mut()));
        // A refusal that came while the loop was busy (renewing) is not lost.
        v.token_refused("new");
        assert!(ready(pin!(v.refusal_of("new")).as_mut()));
    }
}
