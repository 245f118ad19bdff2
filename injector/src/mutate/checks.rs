//! What a pod may not ask for: the operator's ceilings (`policy:` of the injector config) and
//! conflicts between the pod and what the injector adds. Pure checks on the pod and its parsed
//! annotations; a refusal names the annotation or the pod field.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;

use super::sidecar::{
    CA_VOLUME, CLIENT_CERT_VOLUME, MESH_INBOUND, MESH_LABEL, SIDECAR_NAME, SOCKET_DIR,
    SOCKET_VOLUME, TOKEN_VOLUME,
};
use super::{MutateError, PodView};
use crate::annotations::{self, AnnotationError, PodSettings};
use crate::config::{InjectorConfig, SidecarMode};

/// The socket's group: the pod's own fsGroup, else the injector's `security.fs_group`. The
/// sidecar config carries it as a gid (`socket.group`, 0 to 4294967295), so a pod whose fsGroup
/// is not one is refused here rather than given a config the sidecar cannot load.
pub(super) fn fs_group(spec: &PodSpec, cfg: &InjectorConfig) -> Result<u32, MutateError> {
    let (field, value) = match spec.security_context.as_ref().and_then(|sc| sc.fs_group) {
        Some(g) => ("spec.securityContext.fsGroup", g),
        None => ("the injector's security.fs_group", cfg.security.fs_group),
    };
    u32::try_from(value).map_err(|_| {
        MutateError::Conflict(format!(
            "{field} is {value}: not a group id (0 to {}), which the sidecar's socket is given",
            u32::MAX
        ))
    })
}

/// The operator's ceilings (`policy:` of the injector config) and what no pod may ask for.
pub(super) fn policy(
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
    if settings.vault_namespace.is_some() && !policy.allow_pod_vault_namespace {
        return Err(AnnotationError {
            key: format!("{}vault-namespace", annotations::PREFIX),
            problem: "a per-pod Vault namespace is not allowed in this cluster (the injector's \
                      policy.allow_pod_vault_namespace is false; every sidecar uses its \
                      vault.namespace)"
                .to_owned(),
        }
        .into());
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
                if m.name == CLIENT_CERT_VOLUME {
                    return Err(MutateError::Conflict(format!(
                        "{field}: container '{}' mounts the volume '{CLIENT_CERT_VOLUME}', the sidecar's client certificate and key for Vault; only the sidecar may mount it",
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

pub(super) fn conflicts(
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
    // The sidecar's metrics port is bound on all of the pod's addresses.
    let metrics = cfg.metrics.port;
    let taken = settings
        .inbound
        .iter()
        .any(|i| i.tls_port == metrics)
        .then(|| format!("{}inbound", annotations::PREFIX))
        .or_else(|| {
            settings
                .outbound
                .iter()
                .find(|o| o.local_port == metrics)
                .map(|o| format!("{}outbound-{}", annotations::PREFIX, o.name))
        })
        .or_else(|| {
            all()
                .find(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .any(|p| p.container_port == i32::from(metrics))
                })
                .map(|c| format!("container '{}' (containerPort)", c.name))
        });
    if let Some(by) = taken {
        return Err(MutateError::Conflict(format!(
            "{by} uses port {metrics}, the sidecar's metrics port (the injector's metrics.port)"
        )));
    }
    for v in spec.volumes.as_deref().unwrap_or(&[]) {
        if [TOKEN_VOLUME, SOCKET_VOLUME, CA_VOLUME, CLIENT_CERT_VOLUME].contains(&v.name.as_str()) {
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
    let outside = |p: &keyward_identity::IdPattern| !keyward_config::pattern_in_domain(p, td);
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
