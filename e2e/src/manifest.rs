//! The parts of a Kubernetes YAML stream the runner uses: pods (from Pods and the pod
//! templates of Deployments, Jobs, ...), ConfigMaps (for configMap volumes) and Services (for
//! `/etc/hosts` names).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Error, Result};

/// A pod to run.
#[derive(Clone, Debug)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    /// `uid-NAME`, the uid the token issuer puts in the token's claims.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The pod's `spec`.
    pub spec: Value,
}

/// A Service: the pods its selector matches are reachable as `NAME.NS.svc`.
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
}

/// Everything the runner takes from a YAML stream.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub pods: Vec<PodDef>,
    /// (namespace, name) → data.
    pub config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
    pub services: Vec<Service>,
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

impl Manifests {
    /// Parses a multi-document YAML stream (`List`s are flattened).
    pub fn parse(yaml: &str) -> Result<Manifests> {
        let mut m = Manifests::default();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| Error::Manifest(format!("document {i}: {e}")))?;
            m.add(v, i)?;
        }
        Ok(m)
    }

    fn add(&mut self, v: Value, index: usize) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        let kind = v["kind"].as_str().unwrap_or_default();
        let meta = &v["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        match kind {
            "List" => {
                for item in v["items"].as_array().cloned().unwrap_or_default() {
                    self.add(item, index)?;
                }
            }
            "ConfigMap" => {
                self.config_maps
                    .insert((namespace, name), str_map(&v["data"]));
            }
            "Service" => self.services.push(Service {
                namespace,
                name,
                selector: str_map(&v["spec"]["selector"]),
            }),
            "Pod" => self.push_pod(namespace, name, meta, &v["spec"], index)?,
            _ => {
                let template = match kind {
                    "CronJob" => &v["spec"]["jobTemplate"]["spec"]["template"],
                    _ => &v["spec"]["template"],
                };
                if template.is_object() {
                    // One replica, named like a ReplicaSet's pod.
                    let suffix: String = (0..5)
                        .map(|_| (b'a' + rand::random::<u8>() % 26) as char)
                        .collect();
                    self.push_pod(
                        namespace,
                        format!("{name}-{suffix}"),
                        &template["metadata"],
                        &template["spec"],
                        index,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn push_pod(
        &mut self,
        namespace: String,
        name: String,
        meta: &Value,
        spec: &Value,
        index: usize,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Manifest(format!(
                "document {index}: a pod without a name"
            )));
        }
        if !spec["containers"].is_array() {
            return Err(Error::Manifest(format!(
                "document {index}: pod {namespace}/{name} has no spec.containers"
            )));
        }
        let service_account = spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        self.pods.push(PodDef {
            uid: format!("uid-{name}"),
            namespace,
            name,
            labels: str_map(&meta["labels"]),
            service_account,
            spec: spec.clone(),
        });
        Ok(())
    }

    /// The pods a Service selects.
    pub fn selected<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a PodDef> + 'a {
        self.pods.iter().filter(move |p| {
            p.namespace == svc.namespace
                && !svc.selector.is_empty()
                && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }
}
