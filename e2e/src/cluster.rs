//! A "cluster" on one machine: the network, a node host for the servers pods talk to
//! (OpenBao, PostgreSQL), the service-account token issuer, and the pods.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::Manifests;
use crate::net::{Host, NetMode, Network};
use crate::pod::{Image, Pod, PodEnv};
use crate::{jwt, Error, Result};

/// The pods of a run and everything they share. Dropping it stops every pod and removes the
/// namespaces, links, mounts (they die with the processes) and directories.
pub struct Cluster {
    pub node: Host,
    pub issuer: Arc<jwt::Issuer>,
    pods: Vec<Pod>,
    env: PodEnv,
    net: Option<Network>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Creates the network and the node host. `images` maps image references (prefixes) to
    /// the binary standing in for the image's entrypoint.
    pub fn new(images: &[(String, PathBuf)]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("keyward-podrun.")
            .tempdir()
            .map_err(Error::io("creating the run directory"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod run directory"))?;
        let mut imgs = Vec::new();
        for (i, (prefix, bin)) in images.iter().enumerate() {
            let entrypoint = bin
                .file_name()
                .ok_or_else(|| {
                    Error::Setup(format!("image binary {} has no file name", bin.display()))
                })?
                .to_string_lossy()
                .into_owned();
            let bin_dir = dir.path().join("images").join(i.to_string());
            std::fs::create_dir_all(&bin_dir).map_err(Error::io("image dir"))?;
            let dst = bin_dir.join(&entrypoint);
            // "Pulling" the image: a copy every container uid can execute.
            if std::fs::hard_link(bin, &dst).is_err() {
                std::fs::copy(bin, &dst)
                    .map_err(Error::io(format!("copying {}", bin.display())))?;
            }
            for d in [dir.path().join("images"), bin_dir.clone()] {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                    .map_err(Error::io("chmod image dir"))?;
            }
            imgs.push(Image {
                prefix: prefix.clone(),
                bin_dir,
                entrypoint,
            });
        }
        let mut net = Network::create()?;
        let node = net.add_host("node")?;
        let hosts_file = dir.path().join("hosts");
        let issuer = Arc::new(jwt::Issuer::new());
        Ok(Cluster {
            node,
            issuer: issuer.clone(),
            pods: Vec::new(),
            env: PodEnv {
                images: imgs,
                issuer,
                hosts_file,
                run_dir: dir.path().to_path_buf(),
                config_maps: BTreeMap::new(),
            },
            net: Some(net),
            dir: Some(dir),
        })
    }

    pub fn mode(&self) -> NetMode {
        self.net
            .as_ref()
            .map(|n| n.mode)
            .unwrap_or(NetMode::Loopback)
    }

    /// The run's directory (pods, images, hosts file).
    pub fn dir(&self) -> &Path {
        &self.env.run_dir
    }

    /// Starts every pod of `manifests` in order. `node_names` resolve to the node host in
    /// every pod's `/etc/hosts`; Services resolve to the pods they select.
    pub async fn apply(&mut self, manifests: &Manifests, node_names: &[&str]) -> Result<()> {
        let net = self
            .net
            .as_mut()
            .ok_or_else(|| Error::Setup("network gone".into()))?;
        let mut hosts = Vec::new();
        for p in &manifests.pods {
            hosts.push(net.add_host(&format!("{}/{}", p.namespace, p.name))?);
        }
        let mut lines = vec![
            "127.0.0.1\tlocalhost".to_owned(),
            "::1\tlocalhost ip6-localhost ip6-loopback".to_owned(),
            format!("{}\tnode {}", self.node.ip, node_names.join(" ")),
        ];
        for (p, h) in manifests.pods.iter().zip(&hosts) {
            let mut names = vec![p.name.clone()];
            for svc in &manifests.services {
                if manifests
                    .selected(svc)
                    .any(|s| s.name == p.name && s.namespace == p.namespace)
                {
                    names.push(format!("{}.{}.svc", svc.name, svc.namespace));
                    names.push(format!("{}.{}.svc.cluster.local", svc.name, svc.namespace));
                }
            }
            lines.push(format!("{}\t{}", h.ip, names.join(" ")));
        }
        std::fs::write(&self.env.hosts_file, lines.join("\n") + "\n")
            .map_err(Error::io("writing the hosts file"))?;
        std::fs::set_permissions(&self.env.hosts_file, std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io("chmod hosts file"))?;
        self.env.config_maps = manifests.config_maps.clone();
        for (p, h) in manifests.pods.iter().zip(hosts) {
            let pod = Pod::start(p.clone(), h, &self.env).await?;
            self.pods.push(pod);
        }
        Ok(())
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Prints every pod's sidecar and app logs to stderr (after a failed scenario).
    pub fn dump_logs(&self) {
        for p in &self.pods {
            for c in ["keyward", "app"] {
                eprintln!(
                    "--- {}/{} {c} ---\n{}",
                    p.def.namespace,
                    p.def.name,
                    p.logs(c)
                );
            }
        }
    }

    /// The pod in `namespace` whose name is `name` or starts with `name-` (Deployment pods).
    pub fn pod(&self, namespace: &str, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| matches(p, namespace, name))
            .ok_or_else(|| Error::Setup(format!("no pod {namespace}/{name}")))
    }

    pub fn pod_mut(&mut self, namespace: &str, name: &str) -> Result<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| matches(p, namespace, name))
            .ok_or_else(|| Error::Setup(format!("no pod {namespace}/{name}")))
    }

    /// Stops every pod (last started first).
    pub async fn stop_all(&mut self) {
        for p in self.pods.iter_mut().rev() {
            p.stop().await;
        }
    }
}

fn matches(p: &Pod, namespace: &str, name: &str) -> bool {
    p.def.namespace == namespace
        && (p.def.name == name
            || p.def
                .name
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with('-') && r.len() == 6))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pods first (their processes), then the namespaces, then the directory.
        while let Some(p) = self.pods.pop() {
            drop(p);
        }
        self.net.take();
        self.dir.take();
    }
}
