//! What the injector adds for the sidecar: its config document (the typed contract of
//! `keyward_config`, built from the pod's settings and the injector config), its container and
//! its volumes, and the names and paths they share with the app containers.

use std::net::SocketAddr;
use std::path::PathBuf;

use keyward_config::{
    AuditSettings, AuthConfig, IdentityConfig, InboundConfig, OutboundConfig, ProxyConfig,
    SidecarConfig, SocketConfig, VaultConfig,
};
use serde_json::{json, Value};

use crate::annotations::{self, PodSettings};
use crate::config::{ExposedAppPort, InjectorConfig, SidecarMode};

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
/// The broker socket, as every container sees it: the sidecar's own (its probe's), and in each
/// app container its own socket (see [`container_socket`]).
pub const SOCKET_PATH: &str = "/run/keyward/broker.sock";
/// Directory of the socket volume holding one subdirectory per app container; each app
/// container mounts only its own (`subPath`) at [`SOCKET_DIR`].
pub const CONTAINER_SOCKETS_DIR: &str = "c";
/// The audit log, in the socket volume.
pub const AUDIT_PATH: &str = "/run/keyward/audit.log";
/// Where the token volume is mounted (sidecar only).
pub const TOKEN_DIR: &str = "/var/run/secrets/keyward";
/// Where the Vault CA volume is mounted (sidecar only).
pub const CA_DIR: &str = "/etc/keyward/vault-ca";
/// Volume holding the client certificate presented to Vault, when configured.
pub const CLIENT_CERT_VOLUME: &str = "keyward-vault-client";
/// Where the client certificate volume is mounted (sidecar only): `tls.crt` and `tls.key`.
pub const CLIENT_CERT_DIR: &str = "/etc/keyward/vault-client";
/// Env var naming the socket, set in the sidecar and every selected app container.
pub const SOCKET_ENV: &str = "KEYWARD_SOCKET";
/// Label set on injected pods that accept inbound mTLS, value [`MESH_INBOUND`], so that a
/// NetworkPolicy can select them.
pub const MESH_LABEL: &str = "keyward.io/mesh";
/// Value of [`MESH_LABEL`].
pub const MESH_INBOUND: &str = "inbound";

/// The sidecar config for a pod: the document written into `KEYWARD_CONFIG` (no secrets in it).
/// `fs_group` is the pod's fsGroup, which every container of the pod has as a supplementary
/// group, given to the socket.
pub fn sidecar_config(
    settings: &PodSettings,
    cfg: &InjectorConfig,
    fs_group: u32,
) -> SidecarConfig {
    let mesh = !settings.inbound.is_empty() || !settings.outbound.is_empty();
    let td = &cfg.identity.trust_domain;
    SidecarConfig {
        // Set below to the lowest version that holds the document.
        version: 1,
        vault: VaultConfig {
            ca_file: cfg
                .vault
                .ca_config_map
                .as_ref()
                .map(|_| PathBuf::from(format!("{CA_DIR}/ca.crt"))),
            allow_insecure_http: cfg.vault.allow_insecure_http,
            // The pod's annotation (allowed by policy.allow_pod_vault_namespace, checked
            // before), else the injector's.
            namespace: settings
                .vault_namespace
                .clone()
                .or_else(|| cfg.vault.namespace.clone()),
            tls_server_name: cfg.vault.tls_server_name.clone(),
            client_cert_file: cfg
                .vault
                .client_cert_secret
                .as_ref()
                .map(|_| PathBuf::from(format!("{CLIENT_CERT_DIR}/tls.crt"))),
            client_key_file: cfg
                .vault
                .client_cert_secret
                .as_ref()
                .map(|_| PathBuf::from(format!("{CLIENT_CERT_DIR}/tls.key"))),
            ..VaultConfig::new(cfg.vault.addr.clone())
        },
        auth: AuthConfig {
            method: cfg.auth.method,
            mount: Some(cfg.auth.mount.clone()),
            role: settings.role.clone(),
            token_file: PathBuf::from(format!("{TOKEN_DIR}/token")),
            ..AuthConfig::default()
        },
        secrets: settings.secrets.clone(),
        socket: SocketConfig {
            path: PathBuf::from(SOCKET_PATH),
            group: Some(fs_group),
            ..SocketConfig::default()
        },
        audit: AuditSettings {
            file: PathBuf::from(AUDIT_PATH),
            stdout: cfg.audit_stdout,
            checkpoint: cfg.audit_checkpoint.clone(),
            ..AuditSettings::default()
        },
        // The pod's annotation, else the injector's default (validated at start-up); absent,
        // the broker's default.
        kv_refresh: settings.kv_refresh.or_else(|| {
            cfg.kv_refresh
                .as_deref()
                .and_then(|d| annotations::kv_refresh(d).ok())
        }),
        revoke_on_shutdown: true,
        identity: mesh.then(|| IdentityConfig {
            pki_mount: cfg.identity.pki_mount.clone(),
            pki_role: cfg.identity.pki_role.clone(),
            // `keyward.io/identity-uids`: uids that may read the SVID private key; nobody when
            // absent (the annotation never gives an empty list).
            allow_uids: settings.identity_uids.clone().unwrap_or_default(),
            ..IdentityConfig::new(td.clone())
        }),
        proxy: mesh.then(|| ProxyConfig {
            admin: SocketAddr::from(([127, 0, 0, 1], annotations::ADMIN_PORT)),
            exposed_app_port: match cfg.exposed_app_port {
                ExposedAppPort::Warn => keyward_config::ExposedAppPort::Warn,
                ExposedAppPort::Refuse => keyward_config::ExposedAppPort::Refuse,
            },
            inbound: settings
                .inbound
                .iter()
                .map(|i| InboundConfig {
                    listen: SocketAddr::from(([0, 0, 0, 0], i.tls_port)),
                    forward: format!("127.0.0.1:{}", i.app_port),
                    allow: i.allow.clone(),
                    proxy_protocol: false,
                })
                .collect(),
            outbound: settings
                .outbound
                .iter()
                .map(|o| OutboundConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], o.local_port)),
                    upstream: o.upstream.clone(),
                    expect: o.expect.clone(),
                })
                .collect(),
            ..ProxyConfig::default()
        }),
        metrics: Some(keyward_config::MetricsConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], cfg.metrics.port)),
        }),
        files: super::delivery::file_specs(settings),
    }
    .with_required_version()
}

/// The pod volumes the sidecar needs: the projected token, the in-memory socket directory, and
/// Vault's CA when the injector config names one.
pub(super) fn volumes(cfg: &InjectorConfig) -> Vec<Value> {
    let mut volumes = vec![
        json!({
            "name": TOKEN_VOLUME,
            "projected": {
                // Readable by the sidecar's uid whatever the pod's fsGroup: without one the
                // kubelet writes the token as root. Only the sidecar container mounts it.
                "defaultMode": 0o444,
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
    if let Some(c) = &cfg.vault.client_cert_secret {
        volumes.push(json!({
            "name": CLIENT_CERT_VOLUME,
            // Readable by the sidecar's uid whatever the pod's fsGroup (the kubelet writes
            // Secret files as root); only the sidecar container mounts it.
            "secret": {
                "secretName": c.name,
                "items": [
                    {"key": c.cert_key, "path": "tls.crt"},
                    {"key": c.key_key, "path": "tls.key"},
                ],
                "defaultMode": 0o444,
            },
        }));
    }
    volumes
}

/// The sidecar's side of app container `name`'s socket (`socket.containers`):
/// `/run/keyward/c/NAME/broker.sock`, which the container sees as [`SOCKET_PATH`].
pub fn container_socket(name: &str) -> keyward_config::ContainerSocket {
    keyward_config::ContainerSocket {
        name: name.to_owned(),
        path: PathBuf::from(format!(
            "{SOCKET_DIR}/{CONTAINER_SOCKETS_DIR}/{name}/broker.sock"
        )),
    }
}

/// What an app container selected by `keyward.io/containers` gets: the socket's env var (unless
/// it sets it itself) and its own directory of the socket volume, read-only.
pub(super) fn app_env() -> Value {
    json!({"name": SOCKET_ENV, "value": SOCKET_PATH})
}

/// The read-only mount of container `name`'s own directory of the socket volume (`subPath`) at
/// [`SOCKET_DIR`]: it sees its own socket at [`SOCKET_PATH`], and neither the other containers'
/// sockets nor the audit log, so the broker knows from the socket which container called.
pub(super) fn app_mount(name: &str) -> Value {
    json!({
        "name": SOCKET_VOLUME,
        "mountPath": SOCKET_DIR,
        "subPath": format!("{CONTAINER_SOCKETS_DIR}/{name}"),
        "readOnly": true,
    })
}

/// The sidecar container, running with `config` as its `KEYWARD_CONFIG`.
pub(super) fn container(
    settings: &PodSettings,
    cfg: &InjectorConfig,
    config: &SidecarConfig,
) -> Value {
    // Serializing plain strings, numbers and lists cannot fail; an empty document would only
    // make the sidecar refuse to start, never the pod be admitted without secrets silently.
    let config_yaml = config.to_yaml().unwrap_or_default();
    let log_level = settings
        .log_level
        .map(|l| l.as_str().to_owned())
        .unwrap_or_else(|| cfg.log_level.clone());
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let env = json!([
        {"name": "KEYWARD_CONFIG", "value": config_yaml},
        {"name": SOCKET_ENV, "value": SOCKET_PATH},
        {"name": "KEYWARD_LOG", "value": log_level},
        {"name": "KEYWARD_LOG_FORMAT", "value": "json"},
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
    if cfg.vault.client_cert_secret.is_some() {
        mounts.push(
            json!({"name": CLIENT_CERT_VOLUME, "mountPath": CLIENT_CERT_DIR, "readOnly": true}),
        );
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
        // The mTLS ports, then the metrics port (every sidecar, broker-only ones included).
        let mut ports: Vec<Value> = settings
            .inbound
            .iter()
            .map(|i| {
                json!({"name": format!("kw-tls-{}", i.tls_port), "containerPort": i.tls_port, "protocol": "TCP"})
            })
            .collect();
        ports.push(json!({
            "name": cfg.metrics.port_name,
            "containerPort": cfg.metrics.port,
            "protocol": "TCP",
        }));
        map.insert("ports".to_owned(), Value::Array(ports));
        // Ready once, at start: secrets and identity in place. No readinessProbe: a Vault
        // outage longer than the token's TTL makes every sidecar unready at once while their
        // cached secrets still serve, and would take every injected pod out of its Services
        // (docs/operations.md "Probes"); alerts carry that signal instead.
        map.insert(
            "startupProbe".to_owned(),
            json!({
                "exec": {"command": ["keyward", "probe"]},
                "periodSeconds": 1,
                "timeoutSeconds": 2,
                "failureThreshold": 120,
            }),
        );
        match cfg.mode {
            SidecarMode::Native => {
                map.insert("restartPolicy".to_owned(), json!("Always"));
            }
            SidecarMode::Legacy => {
                // The kubelet starts the next container only once this hook returns, so app
                // containers start after the broker is ready (or after the wait runs out).
                map.insert(
                    "lifecycle".to_owned(),
                    json!({"postStart": {"exec": {"command": ["keyward", "probe", "--wait", "120s"]}}}),
                );
            }
        }
    }
    c
}
