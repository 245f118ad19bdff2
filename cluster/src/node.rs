//! Credentials for a node agent: a client certificate for `system:node:NAME` in group
//! `system:nodes`, signed by the cluster CA, so the API server's Node authorizer and the
//! NodeRestriction admission plugin treat the agent as that node's kubelet (it may register
//! its own Node, renew its own Lease, read and update the pods bound to it, request tokens for
//! their service accounts, and delete them). Additive: nothing here changes how the cluster
//! starts.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{Cluster, Error, Result};

/// What a node agent needs to talk to the API server as node `name`.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The cluster CA (PEM file) that signs the API server's certificate.
    pub ca: PathBuf,
    /// Client certificate and key (PEM files) for `system:node:NAME`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A kubeconfig with these credentials (for kubectl as the node).
    pub kubeconfig: PathBuf,
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: format!("openssl {}", args.join(" ")),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            what: format!("openssl {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
    }
}

impl Cluster {
    /// Creates credentials for node `name` (a client certificate `CN=system:node:NAME,
    /// O=system:nodes` signed by the cluster CA) and binds the ClusterRole kube-proxy gets
    /// (`system:node-proxier`: read Services, EndpointSlices and Nodes) to that user, for the
    /// node agent's Service name resolution. Calling it again for the same name reuses the
    /// files.
    pub fn node_credentials(&self, name: &str) -> Result<NodeCredentials> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(Error::Io {
                what: format!("node name {name:?}"),
                source: std::io::Error::other("not a DNS subdomain"),
            });
        }
        let pki = self.dir().join("pki");
        let cert = pki.join(format!("node-{name}.crt"));
        let key = pki.join(format!("node-{name}.key"));
        let kubeconfig = self.dir().join(format!("node-{name}.kubeconfig"));
        if !cert.is_file() {
            let csr = pki.join(format!("node-{name}.csr"));
            let ext = pki.join(format!("node-{name}.ext"));
            std::fs::write(
                &ext,
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
            )
            .map_err(|source| Error::Io {
                what: format!("writing {}", ext.display()),
                source,
            })?;
            let subj = format!("/O=system:nodes/CN=system:node:{name}");
            let s = |p: &PathBuf| p.to_string_lossy().into_owned();
            openssl(&[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
                "-subj",
                &subj,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&pki.join("ca.crt")),
                "-CAkey",
                &s(&pki.join("ca.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ])?;
            let _ = std::fs::remove_file(&csr);
            let _ = std::fs::remove_file(&ext);
            std::fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: keyward-test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                     users:\n- name: node\n  user:\n    client-certificate: {}\n    client-key: {}\n\
                     contexts:\n- name: keyward-test\n  context: {{cluster: keyward-test, user: node}}\ncurrent-context: keyward-test\n",
                    self.server,
                    self.ca.display(),
                    cert.display(),
                    key.display()
                ),
            )
            .map_err(|source| Error::Io {
                what: format!("writing {}", kubeconfig.display()),
                source,
            })?;
        }
        self.apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: keyward-node-proxier-{name}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: \"system:node:{name}\"}}]\n"
        ))?;
        Ok(NodeCredentials {
            name: name.to_owned(),
            server: self.server.clone(),
            ca: self.ca.clone(),
            cert,
            key,
            kubeconfig,
        })
    }
}
