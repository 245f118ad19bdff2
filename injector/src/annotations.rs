//! The `keyward.io/*` pod annotations: parsing and validation.
//!
//! Every key under `keyward.io/` must be one this module knows; a typo is an error rather than a
//! silently ignored setting. Errors name the annotation and say what was expected, so the user
//! sees the problem at `kubectl apply` time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use keyward_identity::{IdPattern, SpiffeId};

use crate::quantity;

/// Prefix of every annotation the injector reads.
pub const PREFIX: &str = "keyward.io/";
/// Pod opt-out: `"false"` leaves the pod alone.
pub const INJECT: &str = "keyward.io/inject";
/// Written by the injector; `injected` makes a second pass a no-op.
pub const STATUS: &str = "keyward.io/status";
/// Value of [`STATUS`] on injected pods.
pub const STATUS_INJECTED: &str = "injected";

/// The annotation keys that take no name or port suffix.
const FIXED_KEYS: &[&str] = &[
    "inject",
    "status",
    "role",
    "vault-namespace",
    "inbound",
    "log-level",
    "kv-refresh",
    "identity-uids",
    "identity-files",
    "containers",
    "cpu-request",
    "memory-request",
    "cpu-limit",
    "memory-limit",
];

/// A `keyward.io/*` annotation that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {problem}")]
pub struct AnnotationError {
    /// The full annotation key, e.g. `keyward.io/secret-db`.
    pub key: String,
    /// What is wrong and what was expected.
    pub problem: String,
}

impl AnnotationError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The sidecar's log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Parses `trace|debug|info|warn|error`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" => Self::Warn,
            "error" => Self::Error,
            _ => return None,
        })
    }

    /// The level as written in `KEYWARD_LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret the broker fetches: `keyward.io/secret-NAME: PATH[#KEY]`, as the sidecar config
/// declares it (the contract's own type).
pub use keyward_config::SecretSpec;

/// One inbound mTLS port: `keyward.io/inbound: "TLS_PORT:APP_PORT"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The port the sidecar terminates mTLS on.
    pub tls_port: u16,
    /// The app's plaintext port on 127.0.0.1.
    pub app_port: u16,
    /// Peers allowed to connect (`keyward.io/inbound-allow-TLS_PORT`).
    pub allow: Vec<IdPattern>,
}

/// One outbound upstream: `keyward.io/outbound-NAME: "LOCAL_PORT=HOST:PORT"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The annotation's NAME.
    pub name: String,
    /// The plaintext port on 127.0.0.1 the app connects to.
    pub local_port: u16,
    /// The mTLS upstream, `host:port`.
    pub upstream: String,
    /// Exact identities the upstream may present (`keyward.io/outbound-NAME-id`). Patterns are
    /// refused: a client names the one service it means to reach, and a pattern would let any
    /// workload it matches answer in that service's place.
    pub expect: Vec<SpiffeId>,
}

/// Resource overrides for the sidecar, each a Kubernetes quantity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceOverrides {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// Everything a pod asks of the injector through its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSettings {
    /// Vault role (`keyward.io/role`); the sidecar defaults to the service account name.
    pub role: Option<String>,
    /// Vault namespace (`keyward.io/vault-namespace`), where the injector's
    /// `policy.allow_pod_vault_namespace` allows it; else the injector's `vault.namespace`.
    pub vault_namespace: Option<String>,
    /// Secrets, ordered by name.
    pub secrets: Vec<SecretSpec>,
    /// Inbound mTLS ports, ordered by TLS port.
    pub inbound: Vec<Inbound>,
    /// Outbound upstreams, ordered by name.
    pub outbound: Vec<Outbound>,
    /// Sidecar resource overrides.
    pub resources: ResourceOverrides,
    /// Sidecar log level.
    pub log_level: Option<LogLevel>,
    /// App containers that get the socket; all when absent.
    pub containers: Option<Vec<String>>,
    /// How often the broker re-reads unleased (KV) secrets (`keyward.io/kv-refresh`); the
    /// broker's default (60s) when absent.
    pub kv_refresh: Option<std::time::Duration>,
    /// Uids that may read the pod's SVID private key from the broker
    /// (`keyward.io/identity-uids`); nobody when absent.
    pub identity_uids: Option<Vec<u32>>,
    /// Containers run under `keyward exec`, by name (`keyward.io/env-CONTAINER`,
    /// `keyward.io/on-change-CONTAINER`).
    pub exec: BTreeMap<String, ExecSettings>,
    /// Rendered files, ordered by name (`keyward.io/file-NAME…`).
    pub files: Vec<FileSettings>,
}

/// What `keyward exec` does in one container: its `--env` and `--on-change` declarations, in
/// the order the annotations give them, checked with the wrapper's own parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSettings {
    /// `NAME=SECRET[#KEY]` (`keyward.io/env-CONTAINER`).
    pub env: Vec<String>,
    /// `SECRET=ACTION` (`keyward.io/on-change-CONTAINER`).
    pub on_change: Vec<String>,
}

impl ExecSettings {
    /// The wrapper's arguments before `--`, as separate exec-form elements.
    pub fn flags(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|e| format!("--env={e}"))
            .chain(self.on_change.iter().map(|o| format!("--on-change={o}")))
            .collect()
    }
}

/// One rendered file: `keyward.io/file-NAME: CONTAINER/FILE` with `-secret` or `-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// The annotation's NAME.
    pub name: String,
    /// The container whose volume holds the file.
    pub container: String,
    /// The file's name in that volume.
    pub path: String,
    /// Octal mode (`keyward.io/file-NAME-mode`, default 0440).
    pub mode: String,
    /// `keyward.io/file-NAME-secret: SECRET[#KEY]`.
    pub secret: Option<(String, Option<String>)>,
    /// `keyward.io/file-NAME-template`.
    pub template: Option<String>,
    /// A part of the workload's SVID (`keyward.io/identity-files`).
    pub identity: Option<keyward_config::IdentityPart>,
}

/// What the annotations say about injecting at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod alone, for this reason.
    Skip(SkipReason),
    /// Inject with these settings.
    Inject(Box<PodSettings>),
}

/// Why a pod is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `keyward.io/inject: "false"`.
    OptedOut,
    /// `keyward.io/status: injected`.
    AlreadyInjected,
    /// kube-system or kube-public.
    SystemNamespace,
}

impl SkipReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptedOut => "opted out",
            Self::AlreadyInjected => "already injected",
            Self::SystemNamespace => "system namespace",
        }
    }
}

/// Namespaces that are never injected.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public"];

/// Decides whether to inject a pod in `namespace` with these annotations, validating every
/// `keyward.io/*` annotation when it does.
pub fn decide(
    namespace: Option<&str>,
    annotations: &BTreeMap<String, String>,
) -> Result<Decision, AnnotationError> {
    if namespace.is_some_and(|ns| SYSTEM_NAMESPACES.contains(&ns)) {
        return Ok(Decision::Skip(SkipReason::SystemNamespace));
    }
    if let Some(v) = annotations.get(INJECT) {
        match v.as_str() {
            "false" => return Ok(Decision::Skip(SkipReason::OptedOut)),
            "true" => {}
            other => {
                return Err(AnnotationError::new(
                    INJECT,
                    format!("expected \"true\" or \"false\", got '{other}'"),
                ))
            }
        }
    }
    if let Some(v) = annotations.get(STATUS) {
        if v == STATUS_INJECTED {
            return Ok(Decision::Skip(SkipReason::AlreadyInjected));
        }
        return Err(AnnotationError::new(
            STATUS,
            format!("is set by the injector and may only be '{STATUS_INJECTED}', got '{v}'"),
        ));
    }
    parse_settings(annotations).map(|s| Decision::Inject(Box::new(s)))
}

#[derive(Default)]
struct SecretParts {
    value: Option<(String, String)>,
    uids: Option<(String, String)>,
    optional: Option<(String, String)>,
}

#[derive(Default)]
struct FileParts {
    value: Option<(String, String)>,
    secret: Option<(String, String)>,
    template: Option<(String, String)>,
    mode: Option<(String, String)>,
}

/// `keyward.io/cert-NAME…` (certificates; see [`build_cert`]).
#[derive(Default)]
struct CertParts {
    value: Option<(String, String)>,
    common_name: Option<(String, String)>,
    alt_names: Option<(String, String)>,
    ttl: Option<(String, String)>,
    container: Option<(String, String)>,
}

#[derive(Default)]
struct OutboundParts {
    value: Option<(String, String)>,
    id: Option<(String, String)>,
}

/// Parses and validates every `keyward.io/*` annotation (other than `inject` and `status`).
pub fn parse_settings(
    annotations: &BTreeMap<String, String>,
) -> Result<PodSettings, AnnotationError> {
    let mut settings = PodSettings::default();
    let mut secrets: BTreeMap<String, SecretParts> = BTreeMap::new();
    let mut outbound: BTreeMap<String, OutboundParts> = BTreeMap::new();
    let mut inbound_value: Option<(String, String)> = None;
    let mut inbound_allow: BTreeMap<u16, (String, String)> = BTreeMap::new();
    let mut files: BTreeMap<String, FileParts> = BTreeMap::new();
    let mut certs: BTreeMap<String, CertParts> = BTreeMap::new();
    let mut identity_files: Option<(String, Vec<String>)> = None;
    let mut exec_keys: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();

    for (key, value) in annotations {
        let Some(suffix) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let entry = (key.clone(), value.clone());
        match suffix {
            "inject" | "status" => {}
            "role" => settings.role = Some(parse_role(key, value)?),
            "vault-namespace" => {
                if !keyward_config::valid_vault_namespace(value) {
                    return Err(AnnotationError::new(
                        key,
                        format!(
                            "expected a Vault namespace (path segments of [A-Za-z0-9_.-] joined \
                             by '/'), got '{value}'"
                        ),
                    ));
                }
                settings.vault_namespace = Some(value.clone());
            }
            "inbound" => inbound_value = Some(entry),
            "log-level" => {
                settings.log_level = Some(LogLevel::parse(value).ok_or_else(|| {
                    AnnotationError::new(
                        key,
                        format!("expected one of trace, debug, info, warn, error, got '{value}'"),
                    )
                })?)
            }
            "containers" => settings.containers = Some(parse_name_list(key, value)?),
            "kv-refresh" => settings.kv_refresh = Some(parse_kv_refresh(key, value)?),
            "identity-uids" => settings.identity_uids = Some(parse_uids(key, value)?),
            "identity-files" => identity_files = Some((key.clone(), parse_name_list(key, value)?)),
            "cpu-request" => settings.resources.cpu_request = Some(parse_quantity(key, value)?),
            "memory-request" => {
                settings.resources.memory_request = Some(parse_quantity(key, value)?)
            }
            "cpu-limit" => settings.resources.cpu_limit = Some(parse_quantity(key, value)?),
            "memory-limit" => settings.resources.memory_limit = Some(parse_quantity(key, value)?),
            _ => {
                if let Some(container) = suffix.strip_prefix("env-") {
                    check_name(key, container, "container")?;
                    settings.exec.entry(container.to_owned()).or_default().env =
                        parse_words(key, value, "NAME=SECRET[#KEY]")?;
                    exec_keys.entry(container.to_owned()).or_default().0 = Some(key.clone());
                } else if let Some(container) = suffix.strip_prefix("on-change-") {
                    check_name(key, container, "container")?;
                    settings
                        .exec
                        .entry(container.to_owned())
                        .or_default()
                        .on_change = parse_words(key, value, "SECRET=ACTION")?;
                    exec_keys.entry(container.to_owned()).or_default().1 = Some(key.clone());
                } else if let Some(rest) = suffix.strip_prefix("file-") {
                    let (name, slot) = if let Some(n) = rest.strip_suffix("-secret") {
                        (n, 1)
                    } else if let Some(n) = rest.strip_suffix("-template") {
                        (n, 2)
                    } else if let Some(n) = rest.strip_suffix("-mode") {
                        (n, 3)
                    } else {
                        (rest, 0)
                    };
                    let parts = files.entry(name.to_owned()).or_default();
                    *match slot {
                        1 => &mut parts.secret,
                        2 => &mut parts.template,
                        3 => &mut parts.mode,
                        _ => &mut parts.value,
                    } = Some(entry);
                } else if let Some(rest) = suffix.strip_prefix("cert-") {
                    let (name, slot) = [
                        ("-common-name", 1),
                        ("-alt-names", 2),
                        ("-ttl", 3),
                        ("-container", 4),
                    ]
                    .iter()
                    .find_map(|(sfx, slot)| rest.strip_suffix(sfx).map(|n| (n, *slot)))
                    .unwrap_or((rest, 0));
                    let parts = certs.entry(name.to_owned()).or_default();
                    *match slot {
                        1 => &mut parts.common_name,
                        2 => &mut parts.alt_names,
                        3 => &mut parts.ttl,
                        4 => &mut parts.container,
                        _ => &mut parts.value,
                    } = Some(entry);
                } else if let Some(rest) = suffix.strip_prefix("secret-") {
                    if let Some(name) = rest.strip_suffix("-uids") {
                        secrets.entry(name.to_owned()).or_default().uids = Some(entry);
                    } else if let Some(name) = rest.strip_suffix("-optional") {
                        secrets.entry(name.to_owned()).or_default().optional = Some(entry);
                    } else {
                        secrets.entry(rest.to_owned()).or_default().value = Some(entry);
                    }
                } else if let Some(port) = suffix.strip_prefix("inbound-allow-") {
                    let port = parse_port(port).ok_or_else(|| {
                        AnnotationError::new(
                            key,
                            format!("expected keyward.io/inbound-allow-TLS_PORT with a port 1-65535, got port '{port}'"),
                        )
                    })?;
                    inbound_allow.insert(port, entry);
                } else if let Some(rest) = suffix.strip_prefix("outbound-") {
                    if let Some(name) = rest.strip_suffix("-id") {
                        outbound.entry(name.to_owned()).or_default().id = Some(entry);
                    } else {
                        outbound.entry(rest.to_owned()).or_default().value = Some(entry);
                    }
                } else {
                    return Err(AnnotationError::new(
                        key,
                        format!(
                            "unknown keyward.io annotation; known: {}, secret-NAME, secret-NAME-uids, \
                             secret-NAME-optional, inbound-allow-PORT, outbound-NAME, outbound-NAME-id, \
                             env-CONTAINER, on-change-CONTAINER, file-NAME, file-NAME-secret, \
                             file-NAME-template, file-NAME-mode, cert-NAME, cert-NAME-common-name, \
                             cert-NAME-alt-names, cert-NAME-ttl, cert-NAME-container",
                            FIXED_KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
    }

    for (name, parts) in secrets {
        settings.secrets.push(build_secret(&name, parts)?);
    }
    let mut cert_files = Vec::new();
    for (name, parts) in certs {
        let (secret, files) = build_cert(&name, parts, &settings.secrets)?;
        settings.secrets.push(secret);
        cert_files.extend(files);
    }
    settings.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    // A certificate's container that keyward.io/containers leaves without a socket gets only
    // the files: no socket may read the certificate.
    if let Some(selected) = &settings.containers {
        for s in &mut settings.secrets {
            if let Some(allowed) = &mut s.allow_containers {
                allowed.retain(|c| selected.contains(c));
            }
        }
    }
    for (name, parts) in outbound {
        settings.outbound.push(build_outbound(&name, parts)?);
    }
    settings.inbound = build_inbound(inbound_value, inbound_allow)?;
    for (container, exec) in &settings.exec {
        check_exec(container, exec, &exec_keys, &settings.secrets)?;
    }
    for (name, parts) in files {
        settings
            .files
            .push(build_file(&name, parts, &settings.secrets)?);
    }
    if let Some((key, containers)) = identity_files {
        if settings.identity_uids.as_ref().is_none_or(|u| u.is_empty()) {
            return Err(AnnotationError::new(
                &key,
                "needs keyward.io/identity-uids naming the uids the containers run as: the SVID's private key is theirs only",
            ));
        }
        for c in containers {
            cert_files.extend(identity_file_settings(&c));
        }
    }
    for f in cert_files {
        if settings.files.iter().any(|g| g.name == f.name) {
            return Err(AnnotationError::new(
                &format!("{PREFIX}file-{}", f.name),
                format!(
                    "file {} is also a file the injector adds for keyward.io/cert-{} or keyward.io/identity-files: rename it",
                    f.name,
                    f.secret.as_ref().map_or("NAME", |(s, _)| s.as_str())
                ),
            ));
        }
        settings.files.push(f);
    }
    settings.files.sort_by(|a, b| a.name.cmp(&b.name));
    check_ports(&settings)?;
    if settings.identity_uids.is_some()
        && settings.inbound.is_empty()
        && settings.outbound.is_empty()
    {
        return Err(AnnotationError::new(
            &format!("{PREFIX}identity-uids"),
            "needs keyward.io/inbound or a keyward.io/outbound-NAME port: no identity is issued to a pod without one",
        ));
    }
    check_resources(&settings.resources)?;
    Ok(settings)
}

fn build_secret(name: &str, parts: SecretParts) -> Result<SecretSpec, AnnotationError> {
    let Some((key, value)) = parts.value else {
        let (key, _) = parts
            .uids
            .or(parts.optional)
            .unwrap_or_else(|| (format!("{PREFIX}secret-{name}"), String::new()));
        return Err(AnnotationError::new(
            &key,
            format!("there is no keyward.io/secret-{name} annotation for it to apply to"),
        ));
    };
    check_name(&key, name, "secret")?;
    let (path, item) = match value.split_once('#') {
        Some((p, k)) => (p, Some(k)),
        None => (value.as_str(), None),
    };
    if !valid_vault_path(path) || item.is_some_and(|k| !valid_key(k)) {
        return Err(AnnotationError::new(
            &key,
            format!(
                "expected PATH[#KEY] with PATH a Vault API path such as secret/data/db \
                 (segments of letters, digits, '.', '_', '-', no leading '/'), got '{value}'"
            ),
        ));
    }
    let mut spec = SecretSpec {
        name: name.to_owned(),
        path: path.to_owned(),
        key: item.map(str::to_owned),
        required: true,
        issue: None,
        allow_uids: None,
        allow_containers: None,
    };
    if let Some((k, v)) = parts.optional {
        spec.required = match v.as_str() {
            "true" => false,
            "false" => true,
            other => {
                return Err(AnnotationError::new(
                    &k,
                    format!("expected \"true\" or \"false\", got '{other}'"),
                ))
            }
        };
    }
    if let Some((k, v)) = parts.uids {
        spec.allow_uids = Some(parse_uids(&k, &v)?);
    }
    Ok(spec)
}

/// Whitespace-separated declarations (`keyward.io/env-CONTAINER`, `keyward.io/on-change-CONTAINER`).
/// Not commas: a secret key may contain a comma, but never a space.
fn parse_words(key: &str, value: &str, what: &str) -> Result<Vec<String>, AnnotationError> {
    let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err(AnnotationError::new(
            key,
            format!("expected {what} declarations separated by spaces or newlines, got '{value}'"),
        ));
    }
    Ok(words)
}

/// The `keyward exec` declarations of one container, checked with the wrapper's own parser
/// (what it accepts at start, the injector accepts here), and every secret declared. The error
/// names the annotation at fault: an `--on-change` problem is the on-change annotation's. An
/// on-change annotation alone is valid: it may name secrets the container gets only as files
/// or certificates (the wrapper then watches their versions, it does not read them).
fn check_exec(
    container: &str,
    exec: &ExecSettings,
    keys: &BTreeMap<String, (Option<String>, Option<String>)>,
    secrets: &[SecretSpec],
) -> Result<(), AnnotationError> {
    let (env_key, change_key) = keys.get(container).cloned().unwrap_or_default();
    let env_key = env_key.unwrap_or_else(|| format!("{PREFIX}env-{container}"));
    let change_key = change_key.unwrap_or_else(|| format!("{PREFIX}on-change-{container}"));
    // The env annotation is checked alone first, so that an error in it is named as its own;
    // then with on-change, which may name secrets the env does not.
    let declared = |key: &str, on_change: &[String]| {
        let spec = keyward_exec::spec::build(&exec.env, on_change)
            .map_err(|e| AnnotationError::new(key, e.0))?;
        match spec
            .secrets()
            .into_iter()
            .find(|s| !secrets.iter().any(|d| d.name == *s))
        {
            Some(s) => Err(AnnotationError::new(
                key,
                format!(
                    "secret '{s}' is not declared: add a keyward.io/secret-{s} (or keyward.io/cert-{s}) annotation"
                ),
            )),
            None => Ok(()),
        }
    };
    if !exec.env.is_empty() {
        declared(&env_key, &[])?;
    }
    declared(&change_key, &exec.on_change)
}

fn build_file(
    name: &str,
    parts: FileParts,
    secrets: &[SecretSpec],
) -> Result<FileSettings, AnnotationError> {
    let Some((key, value)) = parts.value else {
        let (key, _) = parts
            .secret
            .or(parts.template)
            .or(parts.mode)
            .unwrap_or_else(|| (format!("{PREFIX}file-{name}"), String::new()));
        return Err(AnnotationError::new(
            &key,
            format!("there is no keyward.io/file-{name} annotation for it to apply to"),
        ));
    };
    check_name(&key, name, "file")?;
    let (container, path) = value.split_once('/').unwrap_or(("", ""));
    if !is_dns_label(container) || !keyward_config::valid_file_name(path) {
        return Err(AnnotationError::new(
            &key,
            format!(
                "expected CONTAINER/FILE with FILE a plain file name in the container's directory \
                 (1-255 bytes of letters, digits, '.', '_', '-', not . or .., no '/'), got '{}'",
                value.escape_debug()
            ),
        ));
    }
    let mut file = FileSettings {
        name: name.to_owned(),
        container: container.to_owned(),
        path: path.to_owned(),
        mode: keyward_config::DEFAULT_FILE_MODE.to_owned(),
        secret: None,
        template: None,
        identity: None,
    };
    if let Some((k, v)) = parts.mode {
        if keyward_config::file_mode(&v).is_none() {
            return Err(AnnotationError::new(
                &k,
                format!("expected an octal mode with owner read and no write bit such as 0440 or 0400, got '{v}'"),
            ));
        }
        file.mode = v;
    }
    match (parts.secret, parts.template) {
        (Some((k, v)), None) => {
            let (secret, item) = match v.split_once('#') {
                Some((s, i)) => (s, Some(i)),
                None => (v.as_str(), None),
            };
            if item.is_some_and(|i| !valid_key(i)) {
                return Err(AnnotationError::new(
                    &k,
                    format!("expected SECRET[#KEY] with KEY printable ASCII without space or '#', got '{v}'"),
                ));
            }
            if !secrets.iter().any(|s| s.name == secret) {
                return Err(AnnotationError::new(
                    &k,
                    format!("secret '{secret}' is not declared: add a keyward.io/secret-{secret} annotation"),
                ));
            }
            file.secret = Some((secret.to_owned(), item.map(str::to_owned)));
        }
        (None, Some((k, t))) => {
            let used = keyward_config::template_secrets(&t).map_err(|e| AnnotationError::new(&k, e))?;
            for ident in used {
                if !secrets
                    .iter()
                    .any(|s| keyward_config::template_ident(&s.name) == ident)
                {
                    return Err(AnnotationError::new(
                        &k,
                        format!(
                            "secrets.{ident} is not a declared secret (declare it with keyward.io/secret-{}; write '-' as '_' in templates)",
                            ident.replace('_', "-")
                        ),
                    ));
                }
            }
            file.template = Some(t);
        }
        (Some((k, _)), Some(_)) => {
            return Err(AnnotationError::new(
                &k,
                format!("a file has either keyward.io/file-{name}-secret or keyward.io/file-{name}-template, not both"),
            ))
        }
        (None, None) => {
            return Err(AnnotationError::new(
                &key,
                format!("say what goes in the file: keyward.io/file-{name}-secret: SECRET[#KEY] or keyward.io/file-{name}-template"),
            ))
        }
    }
    Ok(file)
}

/// A certificate (issue 13 §4): `keyward.io/cert-NAME: MOUNT/issue/ROLE` with
/// `-common-name` (a DNS name of the pod, required), `-alt-names` (more DNS names, separated
/// by commas or spaces), `-ttl` (a duration, at least 10s; the role's default when absent) and
/// `-container` (the container that gets the files, required). It becomes the secret NAME
/// (`issue` block, served on the socket like any secret) and three files in the container's
/// directory: `NAME.crt` (the certificate), `NAME.key` (its private key) and `NAME.ca.crt` (the
/// issuing CA chain), files `NAME-cert`, `NAME-key` and `NAME-chain`.
fn build_cert(
    name: &str,
    parts: CertParts,
    secrets: &[SecretSpec],
) -> Result<(SecretSpec, Vec<FileSettings>), AnnotationError> {
    let Some((key, path)) = parts.value else {
        let (key, _) = parts
            .common_name
            .or(parts.alt_names)
            .or(parts.ttl)
            .or(parts.container)
            .unwrap_or_else(|| (format!("{PREFIX}cert-{name}"), String::new()));
        return Err(AnnotationError::new(
            &key,
            format!("there is no keyward.io/cert-{name} annotation for it to apply to"),
        ));
    };
    check_name(&key, name, "certificate")?;
    if secrets.iter().any(|s| s.name == name) {
        return Err(AnnotationError::new(
            &key,
            format!("keyward.io/secret-{name} declares a secret of the same name: rename one"),
        ));
    }
    if !keyward_config::valid_vault_path(&path) || !keyward_config::is_pki_issue_path(&path) {
        return Err(AnnotationError::new(
            &key,
            format!(
                "expected a PKI issue path MOUNT/issue/ROLE such as pki_web/issue/web, got '{}'",
                path.escape_debug()
            ),
        ));
    }
    let missing = |what: &str, example: &str| {
        AnnotationError::new(
            &key,
            format!("a certificate needs keyward.io/cert-{name}-{what} (for example {example})"),
        )
    };
    let (cn_key, common_name) = parts
        .common_name
        .ok_or_else(|| missing("common-name", "web.shop.svc"))?;
    if !keyward_config::valid_dns_name(&common_name) {
        return Err(AnnotationError::new(
            &cn_key,
            format!(
                "expected a DNS name such as web.shop.svc, got '{}'",
                common_name.escape_debug()
            ),
        ));
    }
    let mut alt_names = Vec::new();
    if let Some((k, v)) = parts.alt_names {
        for n in v
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if !keyward_config::valid_dns_name(n) {
                return Err(AnnotationError::new(
                    &k,
                    format!(
                        "expected DNS names separated by commas, got '{}'",
                        n.escape_debug()
                    ),
                ));
            }
            if !alt_names.iter().any(|a: &String| a == n) {
                alt_names.push(n.to_owned());
            }
        }
        if alt_names.len() > keyward_config::MAX_ALT_NAMES {
            return Err(AnnotationError::new(
                &k,
                format!("at most {} names", keyward_config::MAX_ALT_NAMES),
            ));
        }
    }
    let ttl = match parts.ttl {
        None => None,
        Some((k, v)) => {
            let d = humantime::parse_duration(v.trim()).map_err(|_| {
                AnnotationError::new(
                    &k,
                    format!("expected a duration such as 24h or 90m, got '{v}'"),
                )
            })?;
            if d < keyward_config::MIN_CERT_TTL {
                return Err(AnnotationError::new(
                    &k,
                    format!("must be at least 10s, got '{v}'"),
                ));
            }
            Some(d)
        }
    };
    let (c_key, container) = parts.container.ok_or_else(|| missing("container", "app"))?;
    check_name(&c_key, &container, "container")?;
    let secret = SecretSpec {
        name: name.to_owned(),
        path: path.clone(),
        key: None,
        required: true,
        allow_uids: None,
        // Its private key is the container's: only requests on its socket read it (cleared by
        // the mutation when that container gets no socket).
        allow_containers: Some(vec![container.clone()]),
        issue: Some(keyward_config::CertIssue {
            common_name,
            alt_names,
            ttl,
        }),
    };
    let file = |suffix: &str, path: String, item: &str| FileSettings {
        name: format!("{name}-{suffix}"),
        container: container.clone(),
        path,
        mode: keyward_config::DEFAULT_FILE_MODE.to_owned(),
        secret: Some((name.to_owned(), Some(item.to_owned()))),
        template: None,
        identity: None,
    };
    Ok((
        secret,
        vec![
            file("cert", format!("{name}.crt"), "certificate"),
            file("key", format!("{name}.key"), "private_key"),
            file("chain", format!("{name}.ca.crt"), "ca_chain"),
        ],
    ))
}

/// The files of the workload's SVID in `container` (`keyward.io/identity-files`): `svid.crt`
/// (the certificate chain), `svid.key` (its private key) and `svid-bundle.crt` (the trust
/// bundle), files `svid-CONTAINER-cert`, `-key`, `-bundle`. Whether the container runs as a uid
/// of `keyward.io/identity-uids` is checked against the pod spec (`mutate::delivery`).
fn identity_file_settings(container: &str) -> Vec<FileSettings> {
    use keyward_config::IdentityPart;
    [
        ("cert", "svid.crt", IdentityPart::Certificate),
        ("key", "svid.key", IdentityPart::PrivateKey),
        ("bundle", "svid-bundle.crt", IdentityPart::Bundle),
    ]
    .into_iter()
    .map(|(suffix, path, part)| FileSettings {
        name: format!("svid-{container}-{suffix}"),
        container: container.to_owned(),
        path: path.to_owned(),
        mode: keyward_config::DEFAULT_FILE_MODE.to_owned(),
        secret: None,
        template: None,
        identity: Some(part),
    })
    .collect()
}

/// A comma-separated list of numeric uids (`keyward.io/secret-NAME-uids`,
/// `keyward.io/identity-uids`), duplicates dropped.
fn parse_uids(key: &str, value: &str) -> Result<Vec<u32>, AnnotationError> {
    let mut uids = Vec::new();
    for part in value.split(',').map(str::trim) {
        match part.parse::<u32>() {
            Ok(uid) if !part.starts_with('+') => {
                if !uids.contains(&uid) {
                    uids.push(uid)
                }
            }
            _ => {
                return Err(AnnotationError::new(
                    key,
                    format!("expected a comma-separated list of numeric uids such as 1000,1001, got '{value}'"),
                ))
            }
        }
    }
    Ok(uids)
}

fn build_outbound(name: &str, parts: OutboundParts) -> Result<Outbound, AnnotationError> {
    let Some((key, value)) = parts.value else {
        let key = parts
            .id
            .map(|(k, _)| k)
            .unwrap_or_else(|| format!("{PREFIX}outbound-{name}-id"));
        return Err(AnnotationError::new(
            &key,
            format!("there is no keyward.io/outbound-{name} annotation for it to apply to"),
        ));
    };
    check_name(&key, name, "outbound")?;
    let bad = || {
        AnnotationError::new(
            &key,
            format!(
                "expected LOCAL_PORT=HOST:PORT such as 15001=orders.shop.svc:15443, got '{value}'"
            ),
        )
    };
    let (local, upstream) = value.split_once('=').ok_or_else(bad)?;
    let local_port = parse_port(local.trim()).ok_or_else(bad)?;
    let upstream = upstream.trim();
    let (host, port) = upstream.rsplit_once(':').ok_or_else(bad)?;
    if parse_port(port).is_none() || !valid_host(host) {
        return Err(bad());
    }
    let Some((id_key, id_value)) = parts.id else {
        return Err(AnnotationError::new(
            &key,
            format!(
                "needs keyward.io/outbound-{name}-id with the SPIFFE ID the upstream must present"
            ),
        ));
    };
    let expect = parse_ids(&id_key, &id_value)?;
    Ok(Outbound {
        name: name.to_owned(),
        local_port,
        upstream: upstream.to_owned(),
        expect,
    })
}

fn build_inbound(
    value: Option<(String, String)>,
    mut allow: BTreeMap<u16, (String, String)>,
) -> Result<Vec<Inbound>, AnnotationError> {
    let mut out: Vec<Inbound> = Vec::new();
    if let Some((key, value)) = value {
        let bad = || {
            AnnotationError::new(
                &key,
                format!(
                    "expected a comma-separated list of TLS_PORT:APP_PORT such as 15443:8080, got '{value}'"
                ),
            )
        };
        for item in value.split(',').map(str::trim) {
            let (tls, app) = item.split_once(':').ok_or_else(bad)?;
            let tls_port = parse_port(tls.trim()).ok_or_else(bad)?;
            let app_port = parse_port(app.trim()).ok_or_else(bad)?;
            if out.iter().any(|i| i.tls_port == tls_port) {
                return Err(AnnotationError::new(
                    &key,
                    format!("TLS port {tls_port} is listed twice"),
                ));
            }
            let Some((allow_key, allow_value)) = allow.remove(&tls_port) else {
                return Err(AnnotationError::new(
                    &key,
                    format!(
                        "TLS port {tls_port} needs keyward.io/inbound-allow-{tls_port} listing the SPIFFE IDs or patterns allowed to connect"
                    ),
                ));
            };
            let allow = parse_patterns(&allow_key, &allow_value)?;
            out.push(Inbound {
                tls_port,
                app_port,
                allow,
            });
        }
    }
    if let Some((_, (key, _))) = allow.into_iter().next() {
        return Err(AnnotationError::new(
            &key,
            "its port is not a TLS port of keyward.io/inbound",
        ));
    }
    out.sort_by_key(|i| i.tls_port);
    Ok(out)
}

/// The sidecar's own loopback admin port, which inbound and outbound ports may not use.
pub const ADMIN_PORT: u16 = 15090;

fn check_ports(settings: &PodSettings) -> Result<(), AnnotationError> {
    let mut used: BTreeMap<u16, String> = BTreeMap::new();
    used.insert(ADMIN_PORT, "the sidecar's admin port".to_owned());
    for i in &settings.inbound {
        let key = format!("{PREFIX}inbound");
        if let Some(by) = used.insert(i.tls_port, format!("{key} TLS port")) {
            return Err(AnnotationError::new(
                &key,
                format!("port {} is already used by {by}", i.tls_port),
            ));
        }
    }
    for o in &settings.outbound {
        let key = format!("{PREFIX}outbound-{}", o.name);
        if let Some(by) = used.insert(o.local_port, key.clone()) {
            return Err(AnnotationError::new(
                &key,
                format!("local port {} is already used by {by}", o.local_port),
            ));
        }
    }
    // The inbound listener forwards every allowed peer to 127.0.0.1:APP_PORT. Pointing it at one
    // of the sidecar's own loopback ports would hand that peer the sidecar's powers: the admin
    // port, or an outbound port that reaches another service *as this pod*.
    for i in &settings.inbound {
        if let Some(by) = used.get(&i.app_port) {
            let (what, why) = if i.app_port == ADMIN_PORT {
                (
                    by.clone(),
                    "a peer allowed on the TLS port would reach the sidecar's admin API".to_owned(),
                )
            } else if by.ends_with("TLS port") {
                (
                    format!("a {by}"),
                    "the sidecar would forward the port to itself".to_owned(),
                )
            } else {
                (
                    format!("the local port of {by}"),
                    "a peer allowed on the TLS port would reach that upstream as this pod"
                        .to_owned(),
                )
            };
            return Err(AnnotationError::new(
                &format!("{PREFIX}inbound"),
                format!(
                    "app port {} (of TLS port {}) is {what}; {why}",
                    i.app_port, i.tls_port
                ),
            ));
        }
    }
    Ok(())
}

fn check_resources(r: &ResourceOverrides) -> Result<(), AnnotationError> {
    let pairs = [
        ("cpu", &r.cpu_request, &r.cpu_limit),
        ("memory", &r.memory_request, &r.memory_limit),
    ];
    for (what, req, lim) in pairs {
        if let (Some(req), Some(lim)) = (req, lim) {
            if let (Some(a), Some(b)) = (quantity::parse(req), quantity::parse(lim)) {
                if a > b {
                    return Err(AnnotationError::new(
                        &format!("{PREFIX}{what}-request"),
                        format!("request {req} is above the limit {lim} (keyward.io/{what}-limit)"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn parse_patterns(key: &str, value: &str) -> Result<Vec<IdPattern>, AnnotationError> {
    parse_list(
        key,
        value,
        "SPIFFE IDs or patterns such as spiffe://cluster.local/ns/shop/sa/frontend",
        |item| {
            IdPattern::parse(item)
                .map_err(|e| format!("'{item}' is not a SPIFFE ID or pattern: {e}"))
        },
    )
}

fn parse_ids(key: &str, value: &str) -> Result<Vec<SpiffeId>, AnnotationError> {
    parse_list(
        key,
        value,
        "SPIFFE IDs such as spiffe://cluster.local/ns/shop/sa/orders",
        |item| {
            if item.ends_with("/*") && IdPattern::parse(item).is_ok() {
                return Err(format!(
                    "'{item}' is a pattern; the upstream must present one of the exact SPIFFE IDs listed here (list each, comma-separated)"
                ));
            }
            SpiffeId::parse(item).map_err(|e| format!("'{item}' is not a SPIFFE ID: {e}"))
        },
    )
}

/// A non-empty comma-separated list, each item parsed by `parse`, duplicates dropped.
fn parse_list<T: PartialEq>(
    key: &str,
    value: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, AnnotationError> {
    if value.trim().is_empty() {
        return Err(AnnotationError::new(
            key,
            format!("expected a comma-separated list of {what}, got ''"),
        ));
    }
    let mut out: Vec<T> = Vec::new();
    for item in value.split(',').map(str::trim) {
        let parsed = parse(item).map_err(|problem| AnnotationError::new(key, problem))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// Bounds of `keyward.io/kv-refresh`: the broker's own floor, and a day (a longer interval
/// would keep a rotated KV secret stale for longer than anyone expects).
const KV_REFRESH_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const KV_REFRESH_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn parse_kv_refresh(key: &str, value: &str) -> Result<std::time::Duration, AnnotationError> {
    kv_refresh(value).map_err(|problem| AnnotationError::new(key, problem))
}

/// A KV re-read interval, as the annotation and the injector config take it.
pub(crate) fn kv_refresh(value: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|_| format!("expected a duration such as 30s, 5m or 1h, got '{value}'"))?;
    if !(KV_REFRESH_MIN..=KV_REFRESH_MAX).contains(&d) {
        return Err(format!("must be between 1s and 24h, got '{value}'"));
    }
    Ok(d)
}

fn parse_role(key: &str, value: &str) -> Result<String, AnnotationError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(AnnotationError::new(
            key,
            format!("expected a Vault role name (letters, digits, '-', '_', '.'), got '{value}'"),
        ))
    }
}

fn parse_name_list(key: &str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if !is_dns_label(item) {
            return Err(AnnotationError::new(
                key,
                format!("expected a comma-separated list of container names such as app,worker, got '{value}'"),
            ));
        }
        if !out.iter().any(|n| n == item) {
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

fn parse_quantity(key: &str, value: &str) -> Result<String, AnnotationError> {
    match quantity::parse(value) {
        Some(v) if v >= 0.0 => Ok(value.to_owned()),
        _ => Err(AnnotationError::new(
            key,
            format!("expected a Kubernetes quantity such as 10m, 0.5, 64Mi, got '{value}'"),
        )),
    }
}

fn check_name(key: &str, name: &str, what: &str) -> Result<(), AnnotationError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(AnnotationError::new(
            key,
            format!(
                "{what} name '{name}' must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Whether `s` is an RFC 1123 label (a container, secret or outbound name).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

// The path and key rules are the sidecar config contract's: one definition, so the injector
// never admits what the sidecar refuses.
use keyward_config::{valid_secret_key as valid_key, valid_vault_path};

fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Container names referenced by `keyward.io/containers` that the pod does not have.
pub fn unknown_containers<'a>(
    wanted: &'a [String],
    present: &BTreeSet<&str>,
) -> Option<&'a String> {
    wanted.iter().find(|w| !present.contains(w.as_str()))
}

/// Whether `s` is an RFC 1123 subdomain (a ConfigMap name).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    //! The rules one predicate at a time, at their boundaries (mutation testing showed which
    //! edges the admission tests leave open: docs/testing.md, "Mutation testing").
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<PodSettings, AnnotationError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned()))
            .collect();
        parse_settings(&map)
    }

    #[test]
    fn log_levels_parse_print_and_round_trip() {
        for name in ["trace", "debug", "info", "warn", "error"] {
            let level = LogLevel::parse(name).expect(name);
            assert_eq!(level.as_str(), name);
            assert_eq!(level.to_string(), name);
        }
        assert_eq!(LogLevel::parse("warn"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("WARN"), None);
        assert_eq!(LogLevel::parse("verbose"), None);
    }

    #[test]
    fn skip_reasons_have_distinct_labels() {
        assert_eq!(SkipReason::OptedOut.as_str(), "opted out");
        assert_eq!(SkipReason::AlreadyInjected.as_str(), "already injected");
        assert_eq!(SkipReason::SystemNamespace.as_str(), "system namespace");
    }

    #[test]
    fn dns_labels_are_1_to_63_lowercase_alnum_or_dash_not_at_the_ends() {
        for good in ["a", "0", "a-1", "web-2x", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            &"a".repeat(64),
            "-a",
            "a-",
            "-",
            "A",
            "a_b",
            "a.b",
            "a b",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn dns_subdomains_are_dot_separated_labels_of_at_most_253_bytes() {
        for good in ["a", "config.keyward", "a-1.b-2", &"a".repeat(253)] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            &"a".repeat(254),
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a-.b",
            "a.-b",
            "a.b-",
            "A.b",
            "a_b",
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn upstream_hosts_are_dns_names_ipv4_or_bracketed_ipv6() {
        let l63 = "a".repeat(63);
        let at_limit = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
        assert_eq!(at_limit.len(), 253);
        for good in [
            "orders.shop.svc",
            "Orders-1.svc",
            "10.0.0.1",
            "[::1]",
            "[fd00::2]",
            &l63,
            &at_limit,
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            "[::1",
            "[not-ipv6]",
            "[10.0.0.1]",
            "a..b",
            ".a",
            "-a.b",
            "a-.b",
            "a.-b",
            "a.b-",
            "a_b",
            "a b",
            &"a".repeat(64),
            &format!("{at_limit}b"),
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn ports_are_plain_decimal_1_to_65535() {
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("15443"), Some(15443));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["", "0", "00", "65536", "+1", "-1", " 1", "1a", "x"] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn roles_are_1_to_128_bytes_of_letters_digits_dash_underscore_dot() {
        let key = "keyward.io/role";
        assert_eq!(
            parse_role(key, "web-app_1.v2").as_deref(),
            Ok("web-app_1.v2")
        );
        let max = "r".repeat(128);
        assert_eq!(parse_role(key, &max), Ok(max.clone()));
        for bad in ["", "a/b", "a b", "a:b", &format!("{max}r")] {
            let err = parse_role(key, bad).expect_err(bad);
            assert_eq!(err.key, key);
        }
    }

    #[test]
    fn quantities_must_parse_and_be_non_negative() {
        let key = "keyward.io/cpu-request";
        assert_eq!(parse_quantity(key, "10m").as_deref(), Ok("10m"));
        assert_eq!(parse_quantity(key, "0").as_deref(), Ok("0"));
        assert_eq!(parse_quantity(key, "64Mi").as_deref(), Ok("64Mi"));
        for bad in ["-1", "-10m", "lots", ""] {
            assert!(parse_quantity(key, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uid_lists_are_unsigned_decimals_with_duplicates_dropped() {
        let key = "keyward.io/identity-uids";
        assert_eq!(parse_uids(key, "1000, 1001,1000"), Ok(vec![1000, 1001]));
        assert_eq!(parse_uids(key, "0"), Ok(vec![0]));
        assert_eq!(parse_uids(key, "4294967295"), Ok(vec![u32::MAX]));
        for bad in ["", "+1000", "-1", "1000,", "root", "4294967296", "1 000"] {
            assert!(parse_uids(key, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_lists_are_dns_labels_with_duplicates_dropped() {
        let key = "keyward.io/containers";
        assert_eq!(
            parse_name_list(key, "app, worker,app"),
            Ok(vec!["app".to_owned(), "worker".to_owned()])
        );
        for bad in ["", "app,,worker", "App", "app,-x"] {
            assert!(parse_name_list(key, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_containers_names_the_first_missing_one() {
        let wanted = ["app".to_owned(), "gone".to_owned(), "worker".to_owned()];
        let present: BTreeSet<&str> = ["app", "worker"].into();
        assert_eq!(unknown_containers(&wanted, &present), Some(&wanted[1]));
        let all: BTreeSet<&str> = ["app", "gone", "worker", "extra"].into();
        assert_eq!(unknown_containers(&wanted, &all), None);
    }

    #[test]
    fn kv_refresh_accepts_exactly_1s_to_24h() {
        use std::time::Duration;
        assert_eq!(kv_refresh("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(kv_refresh(" 24h "), Ok(Duration::from_secs(24 * 3600)));
        assert_eq!(kv_refresh("90m"), Ok(Duration::from_secs(5400)));
        for bad in ["999ms", "24h 1s", "0s", "soon", ""] {
            assert!(kv_refresh(bad).is_err(), "{bad:?}");
        }
        let err = parse_kv_refresh("keyward.io/kv-refresh", "2d").expect_err("2d");
        assert_eq!(err.key, "keyward.io/kv-refresh");
    }

    #[test]
    fn a_request_may_equal_but_not_exceed_its_limit() {
        let r = |req: &str, lim: &str| ResourceOverrides {
            cpu_request: Some(req.into()),
            cpu_limit: Some(lim.into()),
            ..Default::default()
        };
        assert!(check_resources(&r("100m", "200m")).is_ok());
        assert!(check_resources(&r("100m", "0.1")).is_ok(), "equal");
        let err = check_resources(&r("300m", "200m")).expect_err("above");
        assert_eq!(err.key, "keyward.io/cpu-request");
        let mem = ResourceOverrides {
            memory_request: Some("1Gi".into()),
            memory_limit: Some("512Mi".into()),
            ..Default::default()
        };
        assert_eq!(
            check_resources(&mem).expect_err("above").key,
            "keyward.io/memory-request"
        );
    }

    #[test]
    fn outbound_ids_must_be_exact_and_lists_must_not_be_empty() {
        let key = "keyward.io/outbound-orders-id";
        let ids = parse_ids(key, "spiffe://td/ns/a/sa/b, spiffe://td/ns/a/sa/b").expect("ids");
        assert_eq!(
            ids,
            vec![SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id")]
        );
        let err = parse_ids(key, "spiffe://td/ns/a/sa/*").expect_err("pattern");
        assert!(err.problem.contains("is a pattern"), "{err}");
        let err = parse_ids(key, "spiffe://td/ns/a/sa/b*").expect_err("bad");
        assert!(err.problem.contains("is not a SPIFFE ID"), "{err}");
        assert!(parse_ids(key, " ").is_err());
        let pats = parse_patterns("keyward.io/inbound-allow-15443", "spiffe://td/ns/a/*")
            .expect("pattern");
        assert_eq!(pats.len(), 1);
        assert!(parse_patterns("keyward.io/inbound-allow-15443", "").is_err());
    }

    #[test]
    fn every_fixed_annotation_key_is_read() {
        let s = settings(&[
            ("inject", "true"),
            ("role", "web"),
            ("log-level", "debug"),
            ("containers", "app"),
            ("kv-refresh", "30s"),
            ("cpu-request", "10m"),
            ("memory-request", "32Mi"),
            ("cpu-limit", "20m"),
            ("memory-limit", "64Mi"),
            ("inbound", "15443:8080"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
            ("identity-uids", "1000"),
        ])
        .expect("valid");
        assert_eq!(s.role.as_deref(), Some("web"));
        assert_eq!(s.log_level, Some(LogLevel::Debug));
        assert_eq!(s.containers, Some(vec!["app".to_owned()]));
        assert_eq!(s.kv_refresh, Some(std::time::Duration::from_secs(30)));
        assert_eq!(
            s.resources,
            ResourceOverrides {
                cpu_request: Some("10m".into()),
                memory_request: Some("32Mi".into()),
                cpu_limit: Some("20m".into()),
                memory_limit: Some("64Mi".into()),
            }
        );
        assert_eq!(s.inbound.len(), 1);
        assert_eq!(s.identity_uids, Some(vec![1000]));
        assert!(settings(&[("status", "injected")]).is_ok());
    }

    #[test]
    fn identity_uids_need_an_inbound_or_an_outbound_port() {
        assert!(settings(&[("identity-uids", "1000")]).is_err());
        let outbound_only = settings(&[
            ("identity-uids", "1000"),
            ("outbound-orders", "15001=orders.shop.svc:15443"),
            ("outbound-orders-id", "spiffe://td/ns/shop/sa/orders"),
        ])
        .expect("an outbound port is enough");
        assert_eq!(outbound_only.outbound[0].local_port, 15001);
        let inbound_only = settings(&[
            ("identity-uids", "1000"),
            ("inbound", "15443:8080"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
        ])
        .expect("an inbound port is enough");
        assert_eq!(inbound_only.inbound[0].app_port, 8080);
    }

    #[test]
    fn secret_keys_after_hash_follow_the_contract() {
        let ok = settings(&[("secret-db", "secret/data/db#password")]).expect("valid");
        assert_eq!(ok.secrets[0].key.as_deref(), Some("password"));
        assert!(settings(&[("secret-db", "secret/data/db#a b")]).is_err());
        assert!(settings(&[("secret-db", "secret/data/db#")]).is_err());
        assert!(settings(&[("secret-db", "/secret/data/db#password")]).is_err());
        let whole = settings(&[("secret-db", "secret/data/db")]).expect("valid");
        assert_eq!(whole.secrets[0].key, None);
    }

    #[test]
    fn outbound_upstreams_need_a_valid_host_and_port() {
        let out = |v: &str| {
            settings(&[
                ("outbound-orders", v),
                ("outbound-orders-id", "spiffe://td/ns/shop/sa/orders"),
            ])
        };
        assert_eq!(
            out("15001 = orders.shop.svc:15443")
                .expect("valid")
                .outbound[0]
                .upstream,
            "orders.shop.svc:15443"
        );
        assert!(out("15001=[::1]:15443").is_ok());
        for bad in [
            "15001=orders.shop.svc",
            "15001=orders.shop.svc:0",
            "15001=orders_shop:15443",
            "15001=:15443",
            "0=orders:15443",
            "orders:15443",
        ] {
            assert!(out(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_inbound_tls_port_may_be_listed_once() {
        let err = settings(&[
            ("inbound", "15443:8080,15443:8081"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
        ])
        .expect_err("twice");
        assert!(err.problem.contains("listed twice"), "{err}");
        let two = settings(&[
            ("inbound", "15444:8081, 15443:8080"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
            ("inbound-allow-15444", "spiffe://td/ns/b/*"),
        ])
        .expect("two ports");
        let ports: Vec<u16> = two.inbound.iter().map(|i| i.tls_port).collect();
        assert_eq!(ports, [15443, 15444], "ordered by TLS port");
    }

    #[test]
    fn an_app_port_on_the_admin_port_is_refused_as_the_admin_api() {
        let err = settings(&[
            ("inbound", "15443:15090"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
        ])
        .expect_err("admin port");
        assert!(err.problem.contains("admin API"), "{err}");
        let err = settings(&[
            ("inbound", "15443:15444,15444:8080"),
            ("inbound-allow-15443", "spiffe://td/ns/a/*"),
            ("inbound-allow-15444", "spiffe://td/ns/a/*"),
        ])
        .expect_err("own TLS port");
        assert!(err.problem.contains("forward the port to itself"), "{err}");
    }

    #[test]
    fn a_certificate_becomes_a_secret_with_an_issue_block_and_three_files() {
        let s = settings(&[
            ("cert-web", "pki_web/issue/web"),
            ("cert-web-common-name", "web.shop.svc"),
            ("cert-web-alt-names", "web, web.shop.svc.cluster.local web"),
            ("cert-web-ttl", "24h"),
            ("cert-web-container", "app"),
            ("secret-db", "secret/data/db"),
        ])
        .expect("valid");
        let web = s.secrets.iter().find(|x| x.name == "web").expect("secret");
        assert_eq!(web.path, "pki_web/issue/web");
        assert_eq!(
            web.issue,
            Some(keyward_config::CertIssue {
                common_name: "web.shop.svc".into(),
                alt_names: vec!["web".into(), "web.shop.svc.cluster.local".into()],
                ttl: Some(std::time::Duration::from_secs(24 * 3600)),
            })
        );
        let files: Vec<(&str, &str, &str)> = s
            .files
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.path.as_str(),
                    f.secret
                        .as_ref()
                        .and_then(|(_, k)| k.as_deref())
                        .unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            files,
            vec![
                ("web-cert", "web.crt", "certificate"),
                ("web-chain", "web.ca.crt", "ca_chain"),
                ("web-key", "web.key", "private_key"),
            ]
        );
        assert!(s
            .files
            .iter()
            .all(|f| f.container == "app" && f.mode == "0440"));
    }

    #[test]
    fn a_bad_certificate_annotation_is_refused_naming_it() {
        let base = [
            ("cert-web", "pki_web/issue/web"),
            ("cert-web-common-name", "web.shop.svc"),
            ("cert-web-container", "app"),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut a: Vec<(&str, &str)> = base.iter().filter(|(b, _)| *b != k).copied().collect();
            if !v.is_empty() {
                a.push((k, v));
            }
            settings(&a)
        };
        for (k, v, named) in [
            ("cert-web", "pki_web/sign/web", "cert-web"),
            ("cert-web", "/pki/issue/web", "cert-web"),
            ("cert-web-common-name", "web shop", "cert-web-common-name"),
            ("cert-web-common-name", "", "cert-web"),
            ("cert-web-alt-names", "ok,../x", "cert-web-alt-names"),
            ("cert-web-ttl", "soon", "cert-web-ttl"),
            ("cert-web-ttl", "5s", "cert-web-ttl"),
            ("cert-web-container", "App", "cert-web-container"),
            ("cert-web-container", "", "cert-web"),
        ] {
            let e = with(k, v).expect_err(&format!("{k}={v}"));
            assert_eq!(e.key, format!("{PREFIX}{named}"), "{k}={v}: {e}");
        }
        let e = settings(&[("cert-web-ttl", "1h")]).expect_err("no cert-web");
        assert_eq!(e.key, format!("{PREFIX}cert-web-ttl"));
        let mut clash = base.to_vec();
        clash.push(("secret-web", "secret/data/web"));
        assert_eq!(
            settings(&clash).expect_err("same name").key,
            format!("{PREFIX}cert-web")
        );
    }
}
