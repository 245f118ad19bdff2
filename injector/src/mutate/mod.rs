//! The mutation itself: from a pod's metadata and spec to the JSON Patch that adds the sidecar.
//!
//! The same function serves the webhook (paths rooted at the Pod) and `keyward inject` (paths
//! rooted at a workload's pod template, see [`PatchOp::prefixed`]). Every operation is an `add`;
//! a missing parent list or map (`/metadata/annotations`, `/spec/initContainers`, `/spec/volumes`,
//! a container's `env` or `volumeMounts`) is created with its first element instead of appended to.
//!
//! The steps, each in its own module: the annotations are parsed (`crate::annotations`), the
//! pod is checked against the operator's policy and for conflicts (`checks`), the sidecar's
//! config is built as the typed contract [`keyward_config::SidecarConfig`] and the sidecar's
//! container and volumes around it (`sidecar`), and this module turns them into the patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{json, Value};

use crate::annotations::{self, AnnotationError, Decision, SkipReason};
use crate::config::{InjectorConfig, SidecarMode};

mod checks;
mod delivery;
mod sidecar;

pub use delivery::{
    file_specs, BIN_DIR, BIN_VOLUME, EXEC_PATH, FILES_DIR, FILES_VOLUME_PREFIX, INSTALL_NAME,
    SIDECAR_FILES_DIR,
};

pub use sidecar::{
    container_socket, sidecar_config, AUDIT_PATH, CA_DIR, CA_VOLUME, CONTAINER_SOCKETS_DIR,
    MESH_INBOUND, MESH_LABEL, SIDECAR_NAME, SOCKET_DIR, SOCKET_ENV, SOCKET_PATH, SOCKET_VOLUME,
    TOKEN_DIR, TOKEN_VOLUME,
};

/// One JSON Patch operation (only `add` is ever produced).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    /// Always `add`.
    pub op: &'static str,
    /// JSON pointer, tokens escaped with [`escape`].
    pub path: String,
    /// The value added.
    pub value: Value,
}

impl PatchOp {
    fn add(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: "add",
            path: path.into(),
            value,
        }
    }

    /// The same operation with `prefix` (a JSON pointer such as `/spec/template`) in front.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

/// Escapes one JSON pointer token (RFC 6901): `~` as `~0`, `/` as `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Converts operations to the json-patch crate's type (for `AdmissionResponse::with_patch` and
/// for applying).
pub fn to_json_patch(ops: &[PatchOp]) -> Result<json_patch::Patch, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(ops)?)
}

/// Why a pod is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutateError {
    /// A `keyward.io/*` annotation is wrong.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The pod already has something the injector would add.
    #[error("{0}")]
    Conflict(String),
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Leave it unchanged.
    Skipped(SkipReason),
    /// Apply these operations.
    Patch(Vec<PatchOp>),
}

/// The parts of a pod (or pod template) the mutation reads.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// Namespace of the pod (from the admission request, or the workload's metadata).
    pub namespace: Option<&'a str>,
    /// Pod or template metadata.
    pub metadata: &'a ObjectMeta,
    /// Pod or template spec.
    pub spec: &'a PodSpec,
}

/// Computes the patch for one pod.
pub fn mutate(pod: PodView<'_>, cfg: &InjectorConfig) -> Result<Outcome, MutateError> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let system = pod
        .namespace
        .is_some_and(|ns| annotations::SYSTEM_NAMESPACES.contains(&ns));
    if !cfg.policy.allow_opt_out
        && !system
        && annotations.get(annotations::INJECT).map(String::as_str) == Some("false")
    {
        return Err(AnnotationError {
            key: annotations::INJECT.to_owned(),
            problem: "opting out is not allowed in this cluster (the injector's policy.allow_opt_out is false)".to_owned(),
        }
        .into());
    }
    let settings = match annotations::decide(pod.namespace, annotations)? {
        Decision::Skip(reason) => return Ok(Outcome::Skipped(reason)),
        Decision::Inject(s) => s,
    };
    if pod.spec.containers.is_empty() {
        // The API server would refuse such a pod anyway; saying so here beats a patch that
        // cannot apply (`add /spec/containers/0` below a missing array, in legacy mode).
        return Err(MutateError::Conflict(
            "the pod has no containers (spec.containers is empty or missing); there is nothing to inject into".into(),
        ));
    }
    checks::conflicts(pod.spec, &settings, cfg)?;
    checks::policy(pod, annotations, &settings, cfg)?;
    let fs_group = checks::fs_group(pod.spec, cfg)?;
    let native = cfg.mode == SidecarMode::Native;
    let spec = pod.spec;
    let init = spec.init_containers.as_deref().unwrap_or(&[]);
    let selected = |name: &str, is_init: bool| -> bool {
        match &settings.containers {
            Some(list) => list.iter().any(|n| n == name),
            None => !is_init || native,
        }
    };
    delivery::checks(spec, &settings, |n| selected(n, false))?;

    let mut ops = Vec::new();
    // Each selected container gets its own socket (the broker names it in every record).
    let mut sockets = Vec::new();
    // Existing containers first, at their original indices; the sidecar is inserted afterwards.
    for (i, c) in spec.containers.iter().enumerate() {
        if selected(&c.name, false) {
            app_container_ops(&mut ops, &format!("/spec/containers/{i}"), c);
            sockets.push(container_socket(&c.name));
        }
    }
    for (i, c) in init.iter().enumerate() {
        if selected(&c.name, true) {
            app_container_ops(&mut ops, &format!("/spec/initContainers/{i}"), c);
            sockets.push(container_socket(&c.name));
        }
    }
    let mut config = sidecar_config(&settings, cfg, fs_group);
    config.socket.containers = sockets;
    // Written in the lowest version that holds it; refused when the image cannot read that.
    let config = config.with_required_version();
    if config.version > cfg.sidecar_contract_version {
        return Err(MutateError::Conflict(format!(
            "the sidecar config for this pod needs config contract version {} (per-container \
             sockets, the metrics listener, rendered files), and the injector's \
             sidecar_contract_version says the sidecar image ({}) reads only up to version {}: \
             upgrade the sidecar image, then raise sidecar_contract_version",
            config.version, cfg.image, cfg.sidecar_contract_version
        )));
    }
    delivery::container_ops(&mut ops, spec, &settings, |n| selected(n, false));
    let mut sidecar = sidecar::container(&settings, cfg, &config);
    delivery::sidecar_mounts(&mut sidecar, spec, &settings);
    match cfg.mode {
        SidecarMode::Native => match &spec.init_containers {
            None => ops.push(PatchOp::add("/spec/initContainers", json!([sidecar]))),
            Some(_) => ops.push(PatchOp::add("/spec/initContainers/0", sidecar)),
        },
        SidecarMode::Legacy => ops.push(PatchOp::add("/spec/containers/0", sidecar)),
    }
    // The binary's copy: right after the native sidecar, or first in legacy mode (where the
    // sidecar is a regular container).
    if let Some(install) = delivery::install_container(&settings, cfg) {
        ops.push(match (cfg.mode, &spec.init_containers) {
            (SidecarMode::Native, _) => PatchOp::add("/spec/initContainers/1", install),
            (SidecarMode::Legacy, None) => PatchOp::add("/spec/initContainers", json!([install])),
            (SidecarMode::Legacy, Some(_)) => PatchOp::add("/spec/initContainers/0", install),
        });
    }
    let mut volumes = sidecar::volumes(cfg);
    volumes.extend(delivery::volumes(spec, &settings));
    append_all(&mut ops, "/spec/volumes", spec.volumes.is_some(), volumes);
    // A pod without fsGroup gets none: it would change the group of every volume of the pod (a
    // StatefulSet's data included). The socket's group reaches the containers as a
    // supplementary group instead, which changes no file.
    let gid = cfg.security.fs_group;
    match &spec.security_context {
        None => ops.push(PatchOp::add(
            "/spec/securityContext",
            json!({"supplementalGroups": [gid]}),
        )),
        Some(sc) if sc.fs_group.is_none() => match &sc.supplemental_groups {
            None => ops.push(PatchOp::add(
                "/spec/securityContext/supplementalGroups",
                json!([gid]),
            )),
            Some(groups) if groups.contains(&gid) => {}
            Some(_) => ops.push(PatchOp::add(
                "/spec/securityContext/supplementalGroups/-",
                json!(gid),
            )),
        },
        Some(_) => {}
    }
    if !settings.inbound.is_empty() {
        match &pod.metadata.labels {
            None => ops.push(PatchOp::add(
                "/metadata/labels",
                json!({ MESH_LABEL: MESH_INBOUND }),
            )),
            Some(_) => ops.push(PatchOp::add(
                format!("/metadata/labels/{}", escape(MESH_LABEL)),
                json!(MESH_INBOUND),
            )),
        }
    }
    let mut added = vec![(
        annotations::STATUS.to_owned(),
        json!(annotations::STATUS_INJECTED),
    )];
    if cfg.metrics.scrape_annotations {
        // For Prometheus set-ups that discover pods by annotation (without the operator's
        // PodMonitor); a pod's own prometheus.io annotations are its app's and are kept.
        for (key, value) in [
            ("prometheus.io/scrape", "true".to_owned()),
            ("prometheus.io/port", cfg.metrics.port.to_string()),
            ("prometheus.io/path", "/metrics".to_owned()),
        ] {
            if !annotations.contains_key(key) {
                added.push((key.to_owned(), json!(value)));
            }
        }
    }
    match &pod.metadata.annotations {
        None => ops.push(PatchOp::add(
            "/metadata/annotations",
            Value::Object(added.into_iter().collect()),
        )),
        Some(_) => {
            for (key, value) in added {
                ops.push(PatchOp::add(
                    format!("/metadata/annotations/{}", escape(&key)),
                    value,
                ));
            }
        }
    }
    Ok(Outcome::Patch(ops))
}

/// Adds `items` to the list at `path`, creating the list when it does not exist.
fn append_all(ops: &mut Vec<PatchOp>, path: &str, exists: bool, items: Vec<Value>) {
    if exists {
        for item in items {
            ops.push(PatchOp::add(format!("{path}/-"), item));
        }
    } else {
        ops.push(PatchOp::add(path, Value::Array(items)));
    }
}

fn app_container_ops(ops: &mut Vec<PatchOp>, base: &str, c: &Container) {
    let has_env = c
        .env
        .as_ref()
        .is_some_and(|env| env.iter().any(|e| e.name == SOCKET_ENV));
    if !has_env {
        append_all(
            ops,
            &format!("{base}/env"),
            c.env.is_some(),
            vec![sidecar::app_env()],
        );
    }
    append_all(
        ops,
        &format!("{base}/volumeMounts"),
        c.volume_mounts.is_some(),
        vec![sidecar::app_mount(&c.name)],
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn kv_refresh_in_config(annotation: Option<&str>, default: Option<&str>) -> Option<String> {
        let mut annotations = BTreeMap::new();
        if let Some(v) = annotation {
            annotations.insert("keyward.io/kv-refresh".to_owned(), v.to_owned());
        }
        let settings = annotations::parse_settings(&annotations).expect("valid annotations");
        let cfg = InjectorConfig {
            kv_refresh: default.map(str::to_owned),
            ..InjectorConfig::default()
        };
        cfg.validate().expect("valid config");
        sidecar_config(&settings, &cfg, 1000)
            .kv_refresh
            .map(|d| humantime::format_duration(d).to_string())
    }

    #[test]
    fn allow_insecure_http_reaches_the_sidecar_config_only_when_set() {
        let settings = annotations::parse_settings(&BTreeMap::new()).expect("settings");
        let mut cfg = InjectorConfig::default();
        let yaml = |cfg: &InjectorConfig| {
            serde_yaml_ng::to_string(&sidecar_config(&settings, cfg, 1000)).expect("yaml")
        };
        assert!(!yaml(&cfg).contains("allow_insecure_http"));
        cfg.vault.addr = "http://vault.vault.svc:8200".to_owned();
        cfg.vault.allow_insecure_http = true;
        assert!(yaml(&cfg).contains("allow_insecure_http: true"));
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/injector-config.yaml"
        ))
        .expect("example config");
        InjectorConfig::from_yaml(&text).expect("the example config loads");
    }

    #[test]
    fn audit_checkpoints_reach_every_sidecar_config_only_when_the_injector_config_sets_them() {
        let settings = annotations::parse_settings(&BTreeMap::new()).expect("settings");
        let mut cfg = InjectorConfig::default();
        let written = |cfg: &InjectorConfig| sidecar_config(&settings, cfg, 1000);
        let off = written(&cfg);
        assert_eq!(off.audit.checkpoint, None);
        assert!(!serde_yaml_ng::to_string(&off)
            .expect("yaml")
            .contains("checkpoint"));
        cfg = InjectorConfig::from_yaml(
            "image: ghcr.io/x/keyward@sha256:0000000000000000000000000000000000000000000000000000000000000000\n\
             audit_checkpoint: {mount: audit-kv, prefix: cp, every_records: 50, every: 30s}\n",
        )
        .expect("an injector config with checkpoints loads");
        let on = written(&cfg);
        let cp = on.audit.checkpoint.as_ref().expect("checkpoint written");
        assert_eq!(
            (cp.mount.as_str(), cp.prefix.as_str(), cp.every_records),
            ("audit-kv", "cp", 50)
        );
        assert_eq!(cp.every, std::time::Duration::from_secs(30));
        assert_eq!(on.required_version(), 2);
        let bad = InjectorConfig::from_yaml(
            "image: ghcr.io/x/keyward@sha256:0000000000000000000000000000000000000000000000000000000000000000\n\
             audit_checkpoint: {mount: ../x}\n",
        )
        .expect_err("a checkpoint mount that is not a path segment");
        assert!(bad.to_string().contains("audit_checkpoint"), "{bad}");
    }

    #[test]
    fn kv_refresh_comes_from_the_annotation_else_the_injector_default() {
        assert_eq!(
            kv_refresh_in_config(None, None),
            None,
            "the broker's default"
        );
        assert_eq!(
            kv_refresh_in_config(None, Some("5m")).as_deref(),
            Some("5m")
        );
        assert_eq!(
            kv_refresh_in_config(Some("30s"), Some("5m")).as_deref(),
            Some("30s"),
            "the pod's annotation wins"
        );
        assert_eq!(
            kv_refresh_in_config(Some("90s"), None).as_deref(),
            Some("1m 30s")
        );
    }

    /// The patch for a pod with this securityContext (`None`: none), as JSON text.
    fn patch_for(security_context: Option<Value>) -> Vec<Value> {
        let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
        if let Some(sc) = security_context {
            spec["securityContext"] = sc;
        }
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"keyward.io/secret-db": "secret/data/db"}},
            "spec": spec,
        }))
        .expect("pod");
        let spec = pod.spec.expect("spec");
        let view = PodView {
            namespace: Some("shop"),
            metadata: &pod.metadata,
            spec: &spec,
        };
        let Ok(Outcome::Patch(ops)) = mutate(view, &InjectorConfig::default()) else {
            panic!("not injected");
        };
        serde_json::from_str(&serde_json::to_string(&ops).expect("json")).expect("ops")
    }

    /// fsGroup changes the group (and the setgid bit) of every volume of the pod, a
    /// StatefulSet's data included: the injector never adds it. The socket's group (65532)
    /// becomes a supplementary group of the pod's containers instead.
    #[test]
    fn a_pod_without_fs_group_gets_a_supplementary_group_and_no_fs_group() {
        for (sc, op, path, value) in [
            (
                None,
                "add",
                "/spec/securityContext",
                json!({"supplementalGroups": [65532]}),
            ),
            (
                Some(json!({"runAsUser": 1000})),
                "add",
                "/spec/securityContext/supplementalGroups",
                json!([65532]),
            ),
            (
                Some(json!({"supplementalGroups": [7]})),
                "add",
                "/spec/securityContext/supplementalGroups/-",
                json!(65532),
            ),
        ] {
            let ops = patch_for(sc.clone());
            let text = Value::Array(ops.clone()).to_string();
            assert!(!text.contains("fsGroup"), "{sc:?}: {text}");
            assert!(
                ops.iter()
                    .any(|o| o["op"] == op && o["path"] == path && o["value"] == value),
                "{sc:?}: no {op} {path} {value} in {text}"
            );
            assert!(
                text.contains("group: 65532\\n"),
                "{sc:?}: socket group: {text}"
            );
        }
        // Already a member: nothing to add. A pod's own fsGroup is kept and used.
        let ops = Value::Array(patch_for(Some(json!({"supplementalGroups": [65532]})))).to_string();
        assert!(
            !ops.contains("supplementalGroups") && !ops.contains("fsGroup"),
            "{ops}"
        );
        let ops = Value::Array(patch_for(Some(json!({"fsGroup": 3000})))).to_string();
        assert!(
            !ops.contains("supplementalGroups") && !ops.contains("/fsGroup"),
            "{ops}"
        );
        assert!(ops.contains("group: 3000\\n"), "{ops}");
    }

    fn pod_with_fs_group(fs_group: i64) -> (ObjectMeta, PodSpec) {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"keyward.io/secret-db": "secret/data/db"}},
            "spec": {
                "securityContext": {"fsGroup": fs_group},
                "containers": [{"name": "app", "image": "app:1"}],
            },
        }))
        .expect("pod");
        (pod.metadata, pod.spec.expect("spec"))
    }

    /// The socket's group is a gid in the sidecar config (`socket.group`): a pod whose fsGroup
    /// is none is refused at admission, naming the field, instead of being given a config the
    /// sidecar refuses at start.
    #[test]
    fn a_pod_fs_group_that_is_not_a_gid_is_refused_naming_the_field() {
        let cfg = InjectorConfig::default();
        for bad in [-1, i64::from(u32::MAX) + 1] {
            let (metadata, spec) = pod_with_fs_group(bad);
            let view = PodView {
                namespace: Some("shop"),
                metadata: &metadata,
                spec: &spec,
            };
            match mutate(view, &cfg) {
                Err(MutateError::Conflict(m)) => {
                    assert!(m.contains("spec.securityContext.fsGroup is"), "{m}");
                    assert!(m.contains(&bad.to_string()), "{m}");
                }
                other => panic!("fsGroup {bad}: {other:?}"),
            }
        }
        for good in [0, 2000, i64::from(u32::MAX)] {
            let (metadata, spec) = pod_with_fs_group(good);
            let view = PodView {
                namespace: Some("shop"),
                metadata: &metadata,
                spec: &spec,
            };
            let Ok(Outcome::Patch(ops)) = mutate(view, &cfg) else {
                panic!("fsGroup {good} is a gid");
            };
            let text = serde_json::to_string(&ops).expect("json");
            assert!(text.contains(&format!("group: {good}\\n")), "{text}");
        }
    }
}
