//! The Vault session: login with the service-account token (vaultrs), the current Vault token,
//! and raw logical calls for what vaultrs does not expose (request ids, leases, renewals).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keyward_audit::PodIdentity;
use serde::Deserialize;
use tokio::sync::watch;
use zeroize::Zeroize;

use crate::claims;
use crate::config::{AuthMethod, Config};
use crate::secret::SecretString;

/// Where a Vault call failed: reaching Vault, Vault's answer, or our side.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    #[error("Vault unreachable: {0}")]
    Unreachable(String),
    #[error("Vault answered {status}: {}", errors.join("; "))]
    Status { status: u16, errors: Vec<String> },
    #[error("Vault answer could not be read: {0}")]
    Decode(String),
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

/// A logical response. `data` may hold secret values: scrub it once sealed.
pub struct VaultResponse {
    pub request_id: String,
    pub lease_id: Option<SecretString>,
    pub lease_duration: Duration,
    pub renewable: bool,
    pub data: serde_json::Value,
    pub warnings: Vec<String>,
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

#[derive(Deserialize)]
struct RawErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// The Vault token the broker holds.
#[derive(Debug, Clone)]
pub struct TokenState {
    pub token: SecretString,
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
    login_client: vaultrs::client::VaultClient,
    addr: String,
    namespace: Option<String>,
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
    /// Builds the HTTP clients; does not contact Vault.
    pub fn new(config: &Config) -> Result<Self, VaultError> {
        let addr = config.vault.addr.trim_end_matches('/').to_owned();
        let mut builder = reqwest::Client::builder()
            .timeout(config.vault.timeout)
            .connect_timeout(config.vault.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30));
        let mut ca_certs = Vec::new();
        if let Some(ca) = &config.vault.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| VaultError::Setup(format!("vault.ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| VaultError::Setup(format!("vault.ca_file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
            ca_certs.push(ca.display().to_string());
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let mut settings = vaultrs::client::VaultClientSettingsBuilder::default();
        settings
            .address(&addr)
            .ca_certs(ca_certs)
            .timeout(Some(config.vault.timeout))
            .token("");
        if let Some(ns) = &config.vault.namespace {
            settings.namespace(Some(ns.clone()));
        }
        let settings = settings
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let login_client = vaultrs::client::VaultClient::new(settings)
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            login_client,
            addr,
            namespace: config.vault.namespace.clone(),
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

    /// Reads the token file and logs in with the configured method; stores the new token.
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
        let result = match self.method {
            AuthMethod::Jwt => {
                vaultrs::auth::oidc::login(
                    &self.login_client,
                    &self.mount,
                    jwt.expose(),
                    Some(role),
                )
                .await
            }
            AuthMethod::Kubernetes => {
                vaultrs::auth::kubernetes::login(
                    &self.login_client,
                    &self.mount,
                    &role,
                    jwt.expose(),
                )
                .await
            }
        };
        let mut auth = result.map_err(map_vaultrs)?;
        let token = SecretString::new(std::mem::take(&mut auth.client_token));
        auth.client_token.zeroize();
        let state = TokenState {
            token,
            accessor: auth.accessor.clone(),
            ttl: Duration::from_secs(auth.lease_duration.max(1)),
            renewable: auth.renewable,
            obtained: Instant::now(),
        };
        let login = Login {
            accessor: auth.accessor,
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
        let body =
            serde_json::json!({"lease_id": lease_id.expose(), "increment": increment.as_secs()});
        self.call(reqwest::Method::PUT, "sys/leases/renew", Some(&body))
            .await
    }

    /// Revokes a lease.
    pub async fn revoke_lease(&self, lease_id: &SecretString) -> Result<VaultResponse, VaultError> {
        let body = serde_json::json!({"lease_id": lease_id.expose()});
        self.call(reqwest::Method::PUT, "sys/leases/revoke", Some(&body))
            .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<VaultResponse, VaultError> {
        let token = self.token().ok_or(VaultError::NoToken)?;
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", token.token.expose())
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| VaultError::Unreachable(describe_reqwest(&e)))?;
        let status = resp.status();
        let mut bytes = resp
            .bytes()
            .await
            .map_err(|e| VaultError::Unreachable(describe_reqwest(&e)))?
            .to_vec();
        if status.as_u16() == 403 {
            // The token may have been revoked or expired out of band.
            self.token_refused(&token.accessor);
        }
        let result = if status.is_success() {
            if bytes.is_empty() {
                Ok(VaultResponse {
                    request_id: String::new(),
                    lease_id: None,
                    lease_duration: Duration::ZERO,
                    renewable: false,
                    data: serde_json::Value::Null,
                    warnings: Vec::new(),
                })
            } else {
                parse_response(&bytes)
            }
        } else {
            let errors = serde_json::from_slice::<RawErrors>(&bytes)
                .map(|e| e.errors)
                .unwrap_or_default();
            Err(VaultError::Status {
                status: status.as_u16(),
                errors,
            })
        };
        bytes.zeroize();
        result
    }
}

fn parse_response(bytes: &[u8]) -> Result<VaultResponse, VaultError> {
    let mut raw: RawResponse =
        serde_json::from_slice(bytes).map_err(|e| VaultError::Decode(e.to_string()))?;
    let (lease_duration, renewable) = match &raw.auth {
        Some(a) => (a.lease_duration, a.renewable),
        None => (raw.lease_duration, raw.renewable),
    };
    if let Some(a) = raw.auth.as_mut() {
        a.client_token.zeroize();
        a.accessor.zeroize();
    }
    let lease_id =
        (!raw.lease_id.is_empty()).then(|| SecretString::new(std::mem::take(&mut raw.lease_id)));
    Ok(VaultResponse {
        request_id: raw.request_id,
        lease_id,
        lease_duration: Duration::from_secs(lease_duration),
        renewable,
        data: raw.data.unwrap_or(serde_json::Value::Null),
        warnings: raw.warnings.unwrap_or_default(),
    })
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

fn map_vaultrs(e: vaultrs::error::ClientError) -> VaultError {
    match e {
        vaultrs::error::ClientError::APIError { code, errors } => VaultError::Status {
            status: code,
            errors,
        },
        other => VaultError::Unreachable(other.to_string()),
    }
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
            "vault: {addr: \"http://127.0.0.1:1\"}\nauth: {role: r, token_file: /nonexistent}\nsecrets: []\n",
            &BTreeMap::<String, String>::new(),
        )
        .expect("config");
        Vault::new(&config).expect("vault")
    }

    fn token(accessor: &str) -> TokenState {
        TokenState {
            token: SecretString::new("t".into()),
            accessor: accessor.to_owned(),
            ttl: Duration::from_secs(60),
            renewable: true,
            obtained: Instant::now(),
        }
    }

    fn ready<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
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
