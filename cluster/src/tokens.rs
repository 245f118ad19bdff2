//! Service-account tokens from the API server, for Vault/OpenBao auth tests: TokenRequest
//! (`kubectl create token`), TokenReview, the issuer's discovery endpoints, and a reviewer
//! account for Vault's kubernetes auth method. Additive: nothing here changes how the cluster
//! starts.

use std::path::Path;
use std::time::Duration;

use crate::{Cluster, Error, Result};

/// The issuer the API server signs service-account tokens with (`--service-account-issuer` in
/// scripts/cluster.sh). It is not an address anything can reach: Vault fetches the keys from
/// [`Cluster::jwks_url`] instead.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

impl Cluster {
    /// The cluster CA, PEM: it signs the API server's serving certificate.
    pub fn ca_pem(&self) -> Result<String> {
        read(&self.ca, "the cluster CA")
    }

    /// The public half of the service-account signing key, PEM (what kubeadm keeps in
    /// /etc/kubernetes/pki/sa.pub).
    pub fn sa_public_key_pem(&self) -> Result<String> {
        read(
            &self.dir.join("pki/sa.pub"),
            "the service-account public key",
        )
    }

    /// The API server's JWKS endpoint (`/openid/v1/jwks`), on loopback.
    pub fn jwks_url(&self) -> String {
        format!("{}/openid/v1/jwks", self.server)
    }

    /// Lets unauthenticated clients read `/.well-known/openid-configuration` and
    /// `/openid/v1/jwks` (the API server answers 403 to `system:anonymous` by default): binds
    /// `system:service-account-issuer-discovery` to `system:unauthenticated`, as
    /// docs/vault-setup.md tells operators to.
    pub fn allow_anonymous_issuer_discovery(&self) -> Result<()> {
        self.kubectl(&[
            "create",
            "clusterrolebinding",
            "keyward-oidc-discovery",
            "--clusterrole=system:service-account-issuer-discovery",
            "--group=system:unauthenticated",
        ])
        .map(drop)
    }

    /// `kubectl create token SA -n NS [--audience AUD] [--bound-object-kind Pod
    /// --bound-object-name POD]`: a TokenRequest token, trimmed. Without an audience the token
    /// is for the API server's own audience (the issuer).
    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: Option<&str>,
        bound_pod: Option<&str>,
    ) -> Result<String> {
        let mut args = vec!["-n", namespace, "create", "token", service_account];
        if let Some(aud) = audience {
            args.extend_from_slice(&["--audience", aud]);
        }
        if let Some(pod) = bound_pod {
            args.extend_from_slice(&["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        Ok(self.kubectl(&args)?.trim().to_owned())
    }

    /// A TokenReview of `token` for `audiences` as the cluster admin; its `status`
    /// (`authenticated`, `user`, `error`). The token goes through kubectl's stdin, never its
    /// arguments.
    pub fn token_review(&self, token: &str, audiences: &[&str]) -> Result<serde_json::Value> {
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        let args = ["create", "-f", "-", "-o", "json"];
        let out = self.kubectl_stdin(&args, Some(&review.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Json {
            args: args.join(" "),
            problem: e.to_string(),
        })?;
        Ok(v["status"].clone())
    }

    /// Creates (if missing) namespace `namespace` and service account `service_account` in it,
    /// binds it to `system:auth-delegator` (TokenReview and SubjectAccessReview), and returns a
    /// token for it: what Vault's kubernetes auth method needs as `token_reviewer_jwt` when it
    /// runs outside the cluster.
    pub fn token_reviewer(&self, namespace: &str, service_account: &str) -> Result<String> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {service_account}, namespace: {namespace}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: keyward-tokenreview-{namespace}-{service_account}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}}\n\
             subjects: [{{kind: ServiceAccount, name: {service_account}, namespace: {namespace}}}]\n"
        ))?;
        self.create_token(namespace, service_account, None, None)
    }

    /// Waits until service account `name` exists in `namespace` (the controllers create each
    /// namespace's `default` account a moment after the namespace).
    pub fn wait_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for(
            &format!("ServiceAccount {namespace}/{name}"),
            timeout,
            || {
                self.kubectl(&["-n", namespace, "get", "serviceaccount", name])
                    .ok()
            },
        )
        .map(drop)
    }
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("reading {what} ({})", path.display()),
        source,
    })
}
