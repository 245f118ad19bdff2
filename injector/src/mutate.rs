//! The mutation itself: from a pod's metadata and spec to the JSON Patch that adds the sidecar.
//!
//! The same function serves the webhook (paths rooted at the Pod) and `keyward inject` (paths
//! rooted at a workload's pod template, see [`PatchOp::prefixed`]). Every operation is an `add`;
//! a missing parent list or map (`/metadata/annotations`, `/spec/initContainers`, `/spec/volumes`,
//! a container's `env` or `volumeMounts`) is created with its first element instead of appended to.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{json, Value};

use crate::annotations::{self, AnnotationError, Decision, PodSettings, SkipReason};
use crate::config::{InjectorConfig, SidecarMode};

/// Name of the injected container.
pub const SIDECAR_NAME: &str = "keyward";
/// Volume holding the projected service-account token.
pub const TOKEN_VOLUME: &str = "keyward-token";
/// Volume holding the broker socket and the audit log.
pub const SOCKET_VOLUME: &str = "keyward-socket";
/// Volume holding Vault's CA, when configured.
pub const CA_VOLUME: &str = "keyward-vault-ca";
/// Where the socket volume is mounted.
pub const SOCKET_DIR: &str = "/run/keyward";
/// The broker socket.
pub const SOCKET_PATH: &str = "/run/keyward/broker.sock";
/// The audit log, in the socket volume.
pub const AUDIT_PATH: &str = "/run/keyward/audit.log";
/// Where the token volume is mounted (sidecar only).
pub const TOKEN_DIR: &str = "/var/run/secrets/keyward";
/// Where the Vault CA volume is mounted (sidecar only).
pub const CA_DIR: &str = "/etc/keyward/vault-ca";
/// Env var naming the socket, set in the sidecar and every selected app container.
pub const SOCKET_ENV: &str = "KEYWARD_SOCKET";
/// Label set on injected pods that accept inbound mTLS, value [`MESH_INBOUND`], so that a
/// NetworkPolicy can select them.
pub const MESH_LABEL: &str = "keyward.io/mesh";
/// Value of [`MESH_LABEL`].
pub const MESH_INBOUND: &str = "inbound";

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
    check_conflicts(pod.spec, &settings, cfg)?;
    check_policy(pod, annotations, &settings, cfg)?;
    let native = cfg.mode == SidecarMode::Native;
    let spec = pod.spec;
    let init = spec.init_containers.as_deref().unwrap_or(&[]);
    let selected = |name: &str, is_init: bool| -> bool {
        match &settings.containers {
            Some(list) => list.iter().any(|n| n == name),
            None => !is_init || native,
        }
    };

    let mut ops = Vec::new();
    // Existing containers first, at their original indices; the sidecar is inserted afterwards.
    for (i, c) in spec.containers.iter().enumerate() {
        if selected(&c.name, false) {
            app_container_ops(&mut ops, &format!("/spec/containers/{i}"), c);
        }
    }
    for (i, c) in init.iter().enumerate() {
        if selected(&c.name, true) {
            app_container_ops(&mut ops, &format!("/spec/initContainers/{i}"), c);
        }
    }
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.fs_group)
        .unwrap_or(cfg.security.fs_group);
    let sidecar = sidecar_container(&settings, cfg, fs_group);
    match cfg.mode {
        SidecarMode::Native => match &spec.init_containers {
            None => ops.push(PatchOp::add("/spec/initContainers", json!([sidecar]))),
            Some(_) => ops.push(PatchOp::add("/spec/initContainers/0", sidecar)),
        },
        SidecarMode::Legacy => ops.push(PatchOp::add("/spec/containers/0", sidecar)),
    }
    let mut volumes = vec![
        json!({
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o440,
                "sources": [{"serviceAccountToken": {
                    "audience": cfg.token.audience,
                    "expirationSeconds": cfg.token.expiration_seconds,
                    "path": "token",
                }}],
            },
        }),
        json!({
            "name": SOCKET_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": cfg.socket.size_limit},
        }),
    ];
    if let Some(ca) = &cfg.vault.ca_config_map {
        volumes.push(json!({
            "name": CA_VOLUME,
            "configMap": {"name": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}], "defaultMode": 0o444},
        }));
    }
    append_all(&mut ops, "/spec/volumes", spec.volumes.is_some(), volumes);
    match &spec.security_context {
        None => ops.push(PatchOp::add(
            "/spec/securityContext",
            json!({"fsGroup": cfg.security.fs_group, "fsGroupChangePolicy": "OnRootMismatch"}),
        )),
        Some(sc) if sc.fs_group.is_none() => {
            ops.push(PatchOp::add(
                "/spec/securityContext/fsGroup",
                json!(cfg.security.fs_group),
            ));
            if sc.fs_group_change_policy.is_none() {
                ops.push(PatchOp::add(
                    "/spec/securityContext/fsGroupChangePolicy",
                    json!("OnRootMismatch"),
                ));
            }
        }
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
    match &pod.metadata.annotations {
        None => ops.push(PatchOp::add(
            "/metadata/annotations",
            json!({ annotations::STATUS: annotations::STATUS_INJECTED }),
        )),
        Some(_) => ops.push(PatchOp::add(
            format!("/metadata/annotations/{}", escape(annotations::STATUS)),
            json!(annotations::STATUS_INJECTED),
        )),
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
            vec![json!({"name": SOCKET_ENV, "value": SOCKET_PATH})],
        );
    }
    append_all(
        ops,
        &format!("{base}/volumeMounts"),
        c.volume_mounts.is_some(),
        vec![json!({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "readOnly": true})],
    );
}

/// The operator's ceilings (`policy:` of the injector config) and what no pod may ask for.
fn check_policy(
    pod: PodView<'_>,
    annotations: &BTreeMap<String, String>,
    settings: &PodSettings,
    cfg: &InjectorConfig,
) -> Result<(), MutateError> {
    let spec = pod.spec;
    let policy = &cfg.policy;
    if !policy.allow_host_namespaces {
        for (field, on) in [
            ("spec.hostNetwork", spec.host_network),
            ("spec.hostPID", spec.host_pid),
        ] {
            if on == Some(true) {
                return Err(MutateError::Conflict(format!(
                    "{field} is true: the sidecar's plaintext outbound ports and admin port would \
                     listen on the node, and its socket peers would share the node's processes; \
                     such pods are refused unless the injector's policy.allow_host_namespaces is true"
                )));
            }
        }
    }
    if let Some(d) = settings.kv_refresh {
        let min = policy.min_kv_refresh();
        if d < min {
            let key = format!("{}kv-refresh", annotations::PREFIX);
            let value = annotations.get(&key).cloned().unwrap_or_default();
            return Err(AnnotationError {
                key,
                problem: format!(
                    "must be at least {} (the injector's policy.min_kv_refresh), got '{value}'",
                    policy.min_kv_refresh
                ),
            }
            .into());
        }
    }
    if !policy.allow_trust_domain_wide_patterns {
        for i in &settings.inbound {
            if let Some(p) = i.allow.iter().find(|p| names_no_namespace(p)) {
                return Err(AnnotationError {
                    key: format!("{}inbound-allow-{}", annotations::PREFIX, i.tls_port),
                    problem: format!(
                        "'{p}' names no namespace and would let every workload of the trust domain in; \
                         list namespaces (spiffe://TD/ns/NS/*) or identities, or ask the operator to set \
                         policy.allow_trust_domain_wide_patterns"
                    ),
                }
                .into());
            }
        }
    }
    if let Some(v) = pod.metadata.labels.as_ref().and_then(|l| l.get(MESH_LABEL)) {
        if settings.inbound.is_empty() || v != MESH_INBOUND {
            return Err(MutateError::Conflict(format!(
                "label {MESH_LABEL} is set by the injector (to '{MESH_INBOUND}' on pods with keyward.io/inbound ports); remove it from the pod, got '{v}'"
            )));
        }
    }
    // The token logs in to Vault as the pod: it is the sidecar's alone. The socket directory is
    // the sidecar's to write: an app that could write it could replace the socket.
    let groups = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", &spec.containers[..]),
    ];
    for (list, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            for (j, m) in c.volume_mounts.as_deref().unwrap_or(&[]).iter().enumerate() {
                let field = format!("spec.{list}[{i}].volumeMounts[{j}]");
                if m.name == TOKEN_VOLUME {
                    return Err(MutateError::Conflict(format!(
                        "{field}: container '{}' mounts the volume '{TOKEN_VOLUME}', the sidecar's Vault login token; only the sidecar may mount it",
                        c.name
                    )));
                }
                if m.name == SOCKET_VOLUME && m.read_only != Some(true) {
                    return Err(MutateError::Conflict(format!(
                        "{field}: container '{}' mounts the volume '{SOCKET_VOLUME}' read-write; mount it with readOnly: true (connecting to the socket works on a read-only mount)",
                        c.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether an allow-list pattern matches identities of more than one namespace
/// (`spiffe://TD/*`, `spiffe://TD/ns/*`).
fn names_no_namespace(p: &keyward_identity::IdPattern) -> bool {
    let s = p.as_str();
    let Some(prefix) = s.strip_suffix("/*") else {
        return false;
    };
    let path = prefix
        .strip_prefix("spiffe://")
        .and_then(|r| r.split_once('/'))
        .map(|(_, path)| path)
        .unwrap_or("");
    path.split('/').filter(|seg| !seg.is_empty()).count() < 2
}

fn check_conflicts(
    spec: &PodSpec,
    settings: &PodSettings,
    cfg: &InjectorConfig,
) -> Result<(), MutateError> {
    let init = spec.init_containers.as_deref().unwrap_or(&[]);
    let all = || spec.containers.iter().chain(init.iter());
    if all().any(|c| c.name == SIDECAR_NAME) {
        return Err(MutateError::Conflict(format!(
            "pod already has a container named '{SIDECAR_NAME}' but no keyward.io/status annotation; \
             remove the container or add keyward.io/inject: \"false\""
        )));
    }
    for v in spec.volumes.as_deref().unwrap_or(&[]) {
        if [TOKEN_VOLUME, SOCKET_VOLUME, CA_VOLUME].contains(&v.name.as_str()) {
            return Err(MutateError::Conflict(format!(
                "pod already has a volume named '{}', which the injector adds",
                v.name
            )));
        }
    }
    let key = format!("{}containers", annotations::PREFIX);
    if let Some(wanted) = &settings.containers {
        let app: BTreeSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        let inits: BTreeSet<&str> = init.iter().map(|c| c.name.as_str()).collect();
        for w in wanted {
            if app.contains(w.as_str()) {
                continue;
            }
            let problem = if inits.contains(w.as_str()) && cfg.mode == SidecarMode::Legacy {
                format!(
                    "'{w}' is an init container, which runs before the sidecar in legacy mode and cannot use the socket"
                )
            } else if inits.contains(w.as_str()) {
                continue;
            } else {
                let mut names: Vec<&str> = app.iter().chain(inits.iter()).copied().collect();
                names.sort_unstable();
                format!(
                    "the pod has no container named '{w}' (containers: {})",
                    names.join(", ")
                )
            };
            return Err(AnnotationError {
                key: key.clone(),
                problem,
            }
            .into());
        }
    }
    // The proxy refuses (and the sidecar then never starts with) patterns outside its trust
    // domain, so they are refused here, at admission.
    let td = cfg.identity.trust_domain.as_str();
    let outside = |p: &keyward_identity::IdPattern| {
        let rest = p.as_str().strip_prefix("spiffe://").unwrap_or_default();
        rest.split('/').next().unwrap_or_default() != td
    };
    let in_domain = |key: String, patterns: &[keyward_identity::IdPattern]| match patterns
        .iter()
        .find(|p| outside(p))
    {
        Some(p) => Err(AnnotationError {
            key,
            problem: format!("'{p}' is not in the trust domain {td}"),
        }),
        None => Ok(()),
    };
    for i in &settings.inbound {
        in_domain(
            format!("{}inbound-allow-{}", annotations::PREFIX, i.tls_port),
            &i.allow,
        )?;
    }
    for o in &settings.outbound {
        if let Some(id) = o.expect.iter().find(|id| id.trust_domain() != td) {
            return Err(AnnotationError {
                key: format!("{}outbound-{}-id", annotations::PREFIX, o.name),
                problem: format!("'{id}' is not in the trust domain {td}"),
            }
            .into());
        }
    }
    for c in all() {
        for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
            if m.mount_path.trim_end_matches('/') == SOCKET_DIR {
                return Err(MutateError::Conflict(format!(
                    "container '{}' already mounts {SOCKET_DIR}, where the injector mounts the socket",
                    c.name
                )));
            }
        }
    }
    for i in &settings.inbound {
        for c in all() {
            if c.ports
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .any(|p| p.container_port == i32::from(i.tls_port))
            {
                return Err(AnnotationError {
                    key: format!("{}inbound", annotations::PREFIX),
                    problem: format!(
                        "TLS port {} is already a containerPort of container '{}'; pick a free port for the sidecar",
                        i.tls_port, c.name
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The YAML document the sidecar reads from `KEYWARD_CONFIG` (no secrets in it).
#[derive(Debug, Serialize)]
pub struct SidecarConfig {
    pub vault: SidecarVault,
    pub auth: SidecarAuth,
    pub secrets: Vec<SidecarSecret>,
    pub socket: SidecarSocket,
    pub audit: SidecarAudit,
    /// `keyward.io/kv-refresh`, as a humantime duration (`30s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<SidecarIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SidecarProxy>,
}

/// `vault:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarVault {
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `vault.allow_insecure_http` of the injector config (written only when set).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
}

/// `auth:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarAuth {
    pub method: &'static str,
    pub mount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub token_file: String,
}

/// One entry of `secrets:`.
#[derive(Debug, Serialize)]
pub struct SidecarSecret {
    pub name: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_uids: Option<Vec<u32>>,
}

/// `socket:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarSocket {
    pub path: String,
    /// The pod's fsGroup, which every container of the pod has as a supplementary group.
    pub group: i64,
}

/// `audit:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarAudit {
    pub file: String,
    pub stdout: bool,
}

/// `identity:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarIdentity {
    pub trust_domain: String,
    pub pki_mount: String,
    pub pki_role: String,
    /// `keyward.io/identity-uids`: uids that may read the SVID private key; nobody when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_uids: Option<Vec<u32>>,
}

/// `proxy:` of the sidecar config.
#[derive(Debug, Serialize)]
pub struct SidecarProxy {
    pub admin: String,
    /// `warn` or `refuse`: the injector config's `exposed_app_port`.
    pub exposed_app_port: &'static str,
    pub inbound: Vec<SidecarInbound>,
    pub outbound: Vec<SidecarOutbound>,
}

/// One inbound listener.
#[derive(Debug, Serialize)]
pub struct SidecarInbound {
    pub listen: String,
    pub forward: String,
    pub allow: Vec<String>,
}

/// One outbound listener.
#[derive(Debug, Serialize)]
pub struct SidecarOutbound {
    pub listen: String,
    pub upstream: String,
    pub expect: Vec<String>,
}

/// Builds the sidecar config for a pod.
pub fn sidecar_config(
    settings: &PodSettings,
    cfg: &InjectorConfig,
    fs_group: i64,
) -> SidecarConfig {
    let mesh = !settings.inbound.is_empty() || !settings.outbound.is_empty();
    SidecarConfig {
        vault: SidecarVault {
            addr: cfg.vault.addr.clone(),
            ca_file: cfg
                .vault
                .ca_config_map
                .as_ref()
                .map(|_| format!("{CA_DIR}/ca.crt")),
            allow_insecure_http: cfg.vault.allow_insecure_http,
        },
        auth: SidecarAuth {
            method: cfg.auth.method.as_str(),
            mount: cfg.auth.mount.clone(),
            role: settings.role.clone(),
            token_file: format!("{TOKEN_DIR}/token"),
        },
        secrets: settings
            .secrets
            .iter()
            .map(|s| SidecarSecret {
                name: s.name.clone(),
                path: s.path.clone(),
                key: s.key.clone(),
                required: s.required,
                allow_uids: s.allow_uids.clone(),
            })
            .collect(),
        socket: SidecarSocket {
            path: SOCKET_PATH.to_owned(),
            group: fs_group,
        },
        audit: SidecarAudit {
            file: AUDIT_PATH.to_owned(),
            stdout: cfg.audit_stdout,
        },
        // The pod's annotation, else the injector's default (validated at start-up).
        kv_refresh: settings
            .kv_refresh
            .or_else(|| {
                cfg.kv_refresh
                    .as_deref()
                    .and_then(|d| annotations::kv_refresh(d).ok())
            })
            .map(|d| humantime::format_duration(d).to_string()),
        identity: mesh.then(|| SidecarIdentity {
            trust_domain: cfg.identity.trust_domain.clone(),
            pki_mount: cfg.identity.pki_mount.clone(),
            pki_role: cfg.identity.pki_role.clone(),
            allow_uids: settings.identity_uids.clone(),
        }),
        proxy: mesh.then(|| SidecarProxy {
            admin: format!("127.0.0.1:{}", annotations::ADMIN_PORT),
            exposed_app_port: cfg.exposed_app_port.as_str(),
            inbound: settings
                .inbound
                .iter()
                .map(|i| SidecarInbound {
                    listen: format!("0.0.0.0:{}", i.tls_port),
                    forward: format!("127.0.0.1:{}", i.app_port),
                    allow: i.allow.iter().map(|p| p.as_str().to_owned()).collect(),
                })
                .collect(),
            outbound: settings
                .outbound
                .iter()
                .map(|o| SidecarOutbound {
                    listen: format!("127.0.0.1:{}", o.local_port),
                    upstream: o.upstream.clone(),
                    expect: o.expect.iter().map(|id| id.as_str().to_owned()).collect(),
                })
                .collect(),
        }),
    }
}

/// The sidecar container.
fn sidecar_container(settings: &PodSettings, cfg: &InjectorConfig, fs_group: i64) -> Value {
    // Serializing plain strings, numbers and lists cannot fail; an empty document would only
    // make the sidecar refuse to start, never the pod be admitted without secrets silently.
    let config_yaml =
        serde_yaml_ng::to_string(&sidecar_config(settings, cfg, fs_group)).unwrap_or_default();
    let log_level = settings
        .log_level
        .map(|l| l.as_str().to_owned())
        .unwrap_or_else(|| cfg.log_level.clone());
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let env = json!([
        {"name": "KEYWARD_CONFIG", "value": config_yaml},
        {"name": SOCKET_ENV, "value": SOCKET_PATH},
        {"name": "KEYWARD_LOG", "value": log_level},
        {"name": "KEYWARD_POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "KEYWARD_POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        {"name": "KEYWARD_POD_UID", "valueFrom": field("metadata.uid")},
        {"name": "KEYWARD_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
    ]);
    let mut requests = cfg.resources.requests.clone();
    let mut limits = cfg.resources.limits.clone();
    let r = &settings.resources;
    for (is_limit, key, value) in [
        (false, "cpu", &r.cpu_request),
        (false, "memory", &r.memory_request),
        (true, "cpu", &r.cpu_limit),
        (true, "memory", &r.memory_limit),
    ] {
        if let Some(v) = value {
            let map = if is_limit { &mut limits } else { &mut requests };
            map.insert(key.to_owned(), v.clone());
        }
    }
    let mut mounts = vec![
        json!({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR}),
        json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}),
    ];
    if cfg.vault.ca_config_map.is_some() {
        mounts.push(json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true}));
    }
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["sidecar"],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": cfg.security.run_as_group,
            "runAsNonRoot": true,
            "runAsUser": cfg.security.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    });
    if let Value::Object(map) = &mut c {
        if !settings.inbound.is_empty() {
            let ports: Vec<Value> = settings
                .inbound
                .iter()
                .map(|i| {
                    json!({"name": format!("kw-tls-{}", i.tls_port), "containerPort": i.tls_port, "protocol": "TCP"})
                })
                .collect();
            map.insert("ports".to_owned(), Value::Array(ports));
        }
        match cfg.mode {
            SidecarMode::Native => {
                map.insert("restartPolicy".to_owned(), json!("Always"));
                map.insert(
                    "startupProbe".to_owned(),
                    json!({
                        "exec": {"command": ["keyward", "probe"]},
                        "periodSeconds": 1,
                        "timeoutSeconds": 2,
                        "failureThreshold": 120,
                    }),
                );
            }
            SidecarMode::Legacy => {
                // The kubelet starts the next container only once this hook returns, so app
                // containers start after the broker is ready (or after the wait runs out).
                map.insert(
                    "lifecycle".to_owned(),
                    json!({"postStart": {"exec": {"command": ["keyward", "probe", "--wait", "120s"]}}}),
                );
                map.insert(
                    "readinessProbe".to_owned(),
                    json!({
                        "exec": {"command": ["keyward", "probe"]},
                        "periodSeconds": 5,
                        "timeoutSeconds": 2,
                        "failureThreshold": 3,
                    }),
                );
            }
        }
    }
    c
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
        sidecar_config(&settings, &cfg, 1000).kv_refresh
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
}
