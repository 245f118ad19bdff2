//! A stand-in for the Kubernetes API server's service-account token issuer: it signs tokens
//! with a test ES256 key carrying the claims a projected token carries, and configures
//! OpenBao's jwt auth method to trust that key.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

use crate::bao::Bao;

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Issuer {
    key: EncodingKey,
    pub public_pem: String,
}

/// What a token says about its pod.
#[derive(Clone, Debug)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub audience: String,
    /// Seconds from now; negative for an expired token.
    pub expires_in: i64,
    /// Seconds the issuer's clock is ahead of ours (iat, nbf and exp move with it).
    pub clock_skew: i64,
}

impl Claims {
    pub fn new(namespace: &str, service_account: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod: format!("{service_account}-pod-1"),
            audience: "vault".into(),
            expires_in: 3600,
            clock_skew: 0,
        }
    }
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Issuer {
    pub fn new() -> Self {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("spki");
        Self {
            key: EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key"),
            public_pem,
        }
    }

    /// Signs a projected service-account token.
    pub fn mint(&self, c: &Claims) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + c.clock_skew;
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{}:{}", c.namespace, c.service_account),
            "aud": [c.audience],
            "iat": now.min(now + c.expires_in - 60),
            "nbf": now.min(now + c.expires_in - 60),
            "exp": now + c.expires_in,
            "kubernetes.io": {
                "namespace": c.namespace,
                "pod": {"name": c.pod, "uid": format!("uid-{}", c.pod)},
                "serviceaccount": {"name": c.service_account, "uid": format!("uid-sa-{}", c.service_account)},
            },
        });
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).expect("sign")
    }

    /// Enables jwt auth at `auth/jwt` trusting this issuer.
    pub async fn configure(&self, bao: &Bao) {
        bao.api("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
            .await;
        bao.api(
            "POST",
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": [self.public_pem], "bound_issuer": ISSUER})),
        )
        .await;
    }
}

/// The body of a jwt role bound to one namespace and service account, as docs/vault-setup.md §3
/// configures it: the pod's uid is the user claim (each pod its own entity alias, whose metadata
/// holds the pod's namespace, service account and name).
pub fn role_body(ns: &str, sa: &str, ttl: &str, max_ttl: &str, policies: &[&str]) -> Value {
    json!({
        "role_type": "jwt",
        "bound_audiences": ["vault"],
        "user_claim": "/kubernetes.io/pod/uid",
        "user_claim_json_pointer": true,
        "bound_claims_type": "string",
        "bound_claims": {"/kubernetes.io/namespace": ns, "/kubernetes.io/serviceaccount/name": sa},
        "claim_mappings": {
            "/kubernetes.io/namespace": "namespace",
            "/kubernetes.io/serviceaccount/name": "service_account_name",
            "/kubernetes.io/pod/name": "pod_name"
        },
        "token_ttl": ttl,
        "token_max_ttl": max_ttl,
        "token_policies": policies,
    })
}

/// Creates the jwt role `name` ([`role_body`]) bound to one namespace and service account.
pub async fn role(
    bao: &Bao,
    name: &str,
    ns: &str,
    sa: &str,
    ttl: &str,
    max_ttl: &str,
    policies: &[&str],
) {
    bao.api(
        "POST",
        &format!("auth/jwt/role/{name}"),
        Some(role_body(ns, sa, ttl, max_ttl, policies)),
    )
    .await;
}
