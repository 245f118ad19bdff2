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

#[cfg(test)]
mod tests {
    use super::Manifests;

    #[test]
    fn pods_from_pods_and_templates_with_services_and_config_maps() {
        let m = Manifests::parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             kind: ConfigMap\nmetadata: {name: apps, namespace: shop}\ndata: {run.sh: echo hi}\n---\n\
             kind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {selector: {app: orders}}\n---\n\
             kind: Deployment\nmetadata: {name: orders, namespace: shop}\n\
             spec: {template: {metadata: {labels: {app: orders}}, spec: {serviceAccountName: orders, containers: [{name: app}]}}}\n---\n\
             kind: Pod\nmetadata: {name: client, namespace: other}\nspec: {containers: [{name: app}]}\n",
        )
        .expect("parse");
        assert_eq!(m.pods.len(), 2);
        let orders = &m.pods[0];
        assert!(orders.name.starts_with("orders-") && orders.name.len() == "orders-".len() + 5);
        assert_eq!(orders.service_account, "orders");
        assert_eq!(orders.uid, format!("uid-{}", orders.name));
        assert_eq!(m.pods[1].service_account, "default");
        let selected: Vec<_> = m.selected(&m.services[0]).map(|p| p.name.clone()).collect();
        assert_eq!(selected, vec![orders.name.clone()]);
        assert_eq!(
            m.config_maps[&("shop".to_owned(), "apps".to_owned())]["run.sh"],
            "echo hi"
        );
    }

    #[test]
    fn a_pod_without_containers_is_refused() {
        let e = Manifests::parse("kind: Pod\nmetadata: {name: x}\nspec: {}\n")
            .expect_err("no containers");
        assert!(
            e.to_string().contains("default/x has no spec.containers"),
            "{e}"
        );
    }
}
