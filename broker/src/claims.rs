//! Reads the pod identity from a projected service-account token's claims. The token is only
//! decoded here, for the record: Vault validates it at login.

use base64::Engine;
use keyward_audit::PodIdentity;
use serde::Deserialize;

/// Why a token's claims could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error("service-account token is not a JWT (expected three dot-separated parts)")]
    NotJwt,
    #[error("service-account token payload is not base64url JSON: {0}")]
    Payload(String),
    #[error("service-account token has no kubernetes.io namespace/serviceaccount claims and its sub is not system:serviceaccount:NS:SA")]
    NoIdentity,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    k8s: Option<K8s>,
}

#[derive(Deserialize)]
struct K8s {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    pod: Option<Named>,
    #[serde(default)]
    serviceaccount: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

/// What the broker learns from the token without validating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub pod: PodIdentity,
    /// `exp` claim, seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Decodes the claims of a service-account JWT.
pub fn decode(jwt: &str) -> Result<TokenInfo, ClaimsError> {
    let mut parts = jwt.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClaimsError::NotJwt);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| ClaimsError::Payload(e.to_string()))?;
    let claims: Claims =
        serde_json::from_slice(&bytes).map_err(|e| ClaimsError::Payload(e.to_string()))?;
    let from_sub = claims.sub.as_deref().and_then(|s| {
        let rest = s.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        Some((ns.to_owned(), sa.to_owned()))
    });
    let k8s = claims.k8s;
    let namespace = k8s
        .as_ref()
        .and_then(|k| k.namespace.clone())
        .or_else(|| from_sub.as_ref().map(|(ns, _)| ns.clone()));
    let service_account = k8s
        .as_ref()
        .and_then(|k| k.serviceaccount.as_ref())
        .and_then(|s| s.name.clone())
        .or_else(|| from_sub.as_ref().map(|(_, sa)| sa.clone()));
    let (Some(namespace), Some(service_account)) = (namespace, service_account) else {
        return Err(ClaimsError::NoIdentity);
    };
    let pod = k8s.as_ref().and_then(|k| k.pod.as_ref());
    Ok(TokenInfo {
        pod: PodIdentity {
            namespace,
            service_account,
            pod_name: pod.and_then(|p| p.name.clone()).unwrap_or_default(),
            pod_uid: pod.and_then(|p| p.uid.clone()).unwrap_or_default(),
        },
        expires_at: claims.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &serde_json::Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b(br#"{"alg":"RS256"}"#),
            b(payload.to_string().as_bytes()),
            b(b"sig")
        )
    }

    #[test]
    fn reads_kubernetes_claims() {
        let t = jwt(&serde_json::json!({
            "sub": "system:serviceaccount:shop:orders", "exp": 1700000000,
            "kubernetes.io": {"namespace": "shop", "pod": {"name": "orders-1", "uid": "u-1"},
                              "serviceaccount": {"name": "orders", "uid": "sa-1"}}
        }));
        let info = decode(&t).expect("valid");
        assert_eq!(info.pod.namespace, "shop");
        assert_eq!(info.pod.service_account, "orders");
        assert_eq!(info.pod.pod_name, "orders-1");
        assert_eq!(info.pod.pod_uid, "u-1");
        assert_eq!(info.expires_at, Some(1700000000));
    }

    #[test]
    fn falls_back_to_sub() {
        let t = jwt(&serde_json::json!({"sub": "system:serviceaccount:a:b"}));
        let info = decode(&t).expect("valid");
        assert_eq!(
            (
                info.pod.namespace.as_str(),
                info.pod.service_account.as_str()
            ),
            ("a", "b")
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(decode("abc"), Err(ClaimsError::NotJwt)));
        assert!(matches!(decode("a.b.c.d"), Err(ClaimsError::NotJwt)));
        assert!(matches!(decode("a.!!!.c"), Err(ClaimsError::Payload(_))));
        let t = jwt(&serde_json::json!({"sub": "user"}));
        assert!(matches!(decode(&t), Err(ClaimsError::NoIdentity)));
    }
}
