//! Delivery to apps that cannot speak HTTP (issue 13; docs/delivery.md): the `keyward exec`
//! wrapper (`keyward.io/env-CONTAINER`, `keyward.io/on-change-CONTAINER`) and rendered files
//! (`keyward.io/file-NAME…`).
//!
//! - exec: an init container from the keyward image copies the `keyward` binary into the
//!   `keyward-bin` volume (a disk `emptyDir`: the binary is tens of MiB and no secret, and a
//!   `medium: Memory` volume would charge it to the pod's memory limit for the pod's whole life),
//!   mounted read-only at `/keyward/bin` in each wrapped container, whose `command` becomes
//!   `/keyward/bin/keyward exec --env=… --on-change=… -- <command>` (`args` unchanged:
//!   Kubernetes appends them after the command). A container without `command` is refused:
//!   the image's entrypoint is not known at admission.
//! - files: one `emptyDir` `medium: Memory` per declaring container (`keyward-files-INDEX`),
//!   mounted read-only at `/keyward/files` in that container only and read-write into the
//!   sidecar at `/run/keyward-files/CONTAINER`, where the sidecar renders the files.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{json, Value};

use super::{MutateError, PatchOp};
use crate::annotations::{self, AnnotationError, PodSettings};
use crate::config::InjectorConfig;

/// The volume holding the copied `keyward` binary.
pub const BIN_VOLUME: &str = "keyward-bin";
/// Where [`BIN_VOLUME`] is mounted (read-only in app containers).
pub const BIN_DIR: &str = "/keyward/bin";
/// The wrapper as app containers run it.
pub const EXEC_PATH: &str = "/keyward/bin/keyward";
/// The init container that copies the binary.
pub const INSTALL_NAME: &str = "keyward-install";
/// Prefix of the per-container files volumes (`keyward-files-0`: index in `spec.containers`).
pub const FILES_VOLUME_PREFIX: &str = "keyward-files-";
/// Where a container sees its rendered files.
pub const FILES_DIR: &str = "/keyward/files";
/// Where the sidecar mounts each container's files volume (`/run/keyward-files/CONTAINER`).
pub const SIDECAR_FILES_DIR: &str = "/run/keyward-files";
/// Size of each files volume (tmpfs): rendered files are small (DSNs, config snippets, PEM).
pub const FILES_SIZE_LIMIT: &str = "4Mi";
/// Size limit of [`BIN_VOLUME`] (a release binary is about 30 MiB).
pub const BIN_SIZE_LIMIT: &str = "256Mi";

/// The files section of the sidecar config: each declared file in the sidecar's mount of its
/// container's volume.
pub fn file_specs(settings: &PodSettings) -> Vec<keyward_config::FileSpec> {
    settings
        .files
        .iter()
        .map(|f| keyward_config::FileSpec {
            name: f.name.clone(),
            container: f.container.clone(),
            dir: format!("{SIDECAR_FILES_DIR}/{}", f.container).into(),
            path: f.path.clone(),
            mode: f.mode.clone(),
            secret: f.secret.as_ref().map(|(s, _)| s.clone()),
            key: f.secret.as_ref().and_then(|(_, k)| k.clone()),
            template: f.template.clone(),
            identity: f.identity,
        })
        .collect()
}

/// Refuses what the wrapper and the files cannot work with: a wrapped or file-declaring
/// container that is not a regular container of the pod, a wrapped container without
/// `command` or without the socket, a file declared twice, names the injector adds.
pub(super) fn checks(
    spec: &PodSpec,
    settings: &PodSettings,
    selected: impl Fn(&str) -> bool,
) -> Result<(), MutateError> {
    let p = annotations::PREFIX;
    let find = |key: String, name: &str| -> Result<&Container, MutateError> {
        if let Some(c) = spec.containers.iter().find(|c| c.name == name) {
            return Ok(c);
        }
        let init = spec
            .init_containers
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|c| c.name == name);
        let mut names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        Err(AnnotationError {
            key,
            problem: if init {
                format!("'{name}' is an init container; only regular containers (spec.containers) can use keyward exec and rendered files")
            } else {
                format!(
                    "the pod has no container named '{name}' (containers: {})",
                    names.join(", ")
                )
            },
        }
        .into())
    };
    for (name, exec) in &settings.exec {
        let key = if exec.env.is_empty() {
            format!("{p}on-change-{name}")
        } else {
            format!("{p}env-{name}")
        };
        let c = find(key.clone(), name)?;
        if c.command.as_ref().is_none_or(|cmd| cmd.is_empty()) {
            return Err(AnnotationError {
                key,
                problem: format!(
                    "container '{name}' has no command in its spec; keyward exec must be given the app's command, \
                     and the image's entrypoint is not known at admission: set spec.containers[].command \
                     (the image's ENTRYPOINT, as exec-form) and keep args as they are"
                ),
            }
            .into());
        }
        if !selected(name) {
            return Err(AnnotationError {
                key,
                problem: format!(
                    "container '{name}' does not get the socket (keyward.io/containers leaves it out), which keyward exec reads the secrets from"
                ),
            }
            .into());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let specs = file_specs(settings);
    for (f, fspec) in settings.files.iter().zip(&specs) {
        // A certificate's files (`keyward.io/cert-NAME`) are placed by its -container.
        let cert = f.secret.as_ref().map(|(s, _)| s).filter(|s| {
            settings
                .secrets
                .iter()
                .any(|d| &&d.name == s && d.issue.is_some())
        });
        let key = match (cert, f.identity) {
            (_, Some(_)) => format!("{p}identity-files"),
            (Some(c), None) => format!("{p}cert-{c}-container"),
            (None, None) => format!("{p}file-{}", f.name),
        };
        let c = find(key.clone(), &f.container)?;
        // A file cannot tell who opens it: a uid rule holds only if the container runs as one
        // of the uids (its runAsUser, else the pod's).
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
        // The rule of GET /v1/secrets/NAME: a secret with keyward.io/secret-NAME-uids is read
        // only by those uids, so a file of it goes only into a container running as one.
        for name in fspec.secrets(&settings.secrets) {
            let Some(allowed) = settings
                .secrets
                .iter()
                .find(|d| d.name == name)
                .and_then(|d| d.allow_uids.as_deref())
            else {
                continue;
            };
            if !uid
                .and_then(|u| u32::try_from(u).ok())
                .is_some_and(|u| allowed.contains(&u))
            {
                return Err(AnnotationError {
                    key,
                    problem: format!(
                        "the secret {name} may be read only by the uids of keyward.io/secret-{name}-uids ({}), and container '{}' does not run as one of them: set its securityContext.runAsUser (or the pod's), got {}",
                        allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                        f.container,
                        uid.map_or("none".to_owned(), |u| u.to_string())
                    ),
                }
                .into());
            }
        }
        if f.identity.is_some() {
            // The rule of GET /v1/identity: only the uids of keyward.io/identity-uids may have
            // the SVID's private key.
            let allowed = settings.identity_uids.as_deref().unwrap_or(&[]);
            let ok = uid
                .and_then(|u| u32::try_from(u).ok())
                .is_some_and(|u| allowed.contains(&u));
            if !ok {
                return Err(AnnotationError {
                    key,
                    problem: format!(
                        "container '{}' must run as a uid of keyward.io/identity-uids ({}) to get the SVID's files: set its securityContext.runAsUser (or the pod's), got {}",
                        f.container,
                        allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                        uid.map_or("none".to_owned(), |u| u.to_string())
                    ),
                }
                .into());
            }
        }
        if !seen.insert((f.container.as_str(), f.path.as_str())) {
            return Err(AnnotationError {
                key,
                problem: format!(
                    "container '{}' already gets a file named '{}' from another keyward.io/file-* annotation",
                    f.container, f.path
                ),
            }
            .into());
        }
    }
    for v in spec.volumes.as_deref().unwrap_or(&[]) {
        if v.name == BIN_VOLUME || v.name.starts_with(FILES_VOLUME_PREFIX) {
            return Err(MutateError::Conflict(format!(
                "pod already has a volume named '{}', a name the injector uses",
                v.name
            )));
        }
    }
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.as_deref().unwrap_or(&[]));
    for c in all {
        if c.name == INSTALL_NAME {
            return Err(MutateError::Conflict(format!(
                "pod already has a container named '{INSTALL_NAME}', which the injector adds"
            )));
        }
        for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
            // A files volume is its container's own (docs/delivery.md "Who can read a file"),
            // and the binary's is what wrapped containers run: no other mount of either.
            if m.name == BIN_VOLUME || m.name.starts_with(FILES_VOLUME_PREFIX) {
                return Err(MutateError::Conflict(format!(
                    "container '{}' mounts the volume '{}', which the injector adds for keyward's files or wrapper; only the containers it is made for may mount it",
                    c.name, m.name
                )));
            }
            let path = m.mount_path.trim_end_matches('/');
            if path == "/keyward" || path.starts_with("/keyward/") {
                return Err(MutateError::Conflict(format!(
                    "container '{}' already mounts {}, below /keyward where the injector mounts the wrapper and the rendered files",
                    c.name, m.mount_path
                )));
            }
        }
    }
    Ok(())
}

/// What each regular container gets: the rewritten command and the binary's mount for wrapped
/// containers, the files volume for file-declaring ones.
pub(super) fn container_ops(
    ops: &mut Vec<PatchOp>,
    spec: &PodSpec,
    settings: &PodSettings,
    selected: impl Fn(&str) -> bool,
) {
    for (i, c) in spec.containers.iter().enumerate() {
        let base = format!("/spec/containers/{i}");
        let mut mounts = Vec::new();
        if let Some(exec) = settings.exec.get(&c.name) {
            let mut command = vec![Value::from(EXEC_PATH), Value::from("exec")];
            command.extend(exec.flags().into_iter().map(Value::from));
            command.push(Value::from("--"));
            command.extend(c.command.iter().flatten().map(|s| Value::from(s.as_str())));
            // `add` on an existing member replaces it (RFC 6902).
            ops.push(PatchOp::add(
                format!("{base}/command"),
                Value::Array(command),
            ));
            mounts.push(json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true}));
        }
        if settings.files.iter().any(|f| f.container == c.name) {
            mounts.push(json!({
                "name": format!("{FILES_VOLUME_PREFIX}{i}"),
                "mountPath": FILES_DIR,
                "readOnly": true,
            }));
        }
        if !mounts.is_empty() {
            // A selected container got the socket's mount before (app_container_ops), so its
            // list exists by now.
            let exists = c.volume_mounts.is_some() || selected(&c.name);
            super::append_all(ops, &format!("{base}/volumeMounts"), exists, mounts);
        }
    }
}

/// The volumes: the binary's (when a container is wrapped) and one files volume per declaring
/// container.
pub(super) fn volumes(spec: &PodSpec, settings: &PodSettings) -> Vec<Value> {
    let mut out = Vec::new();
    if !settings.exec.is_empty() {
        out.push(json!({"name": BIN_VOLUME, "emptyDir": {"sizeLimit": BIN_SIZE_LIMIT}}));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if settings.files.iter().any(|f| f.container == c.name) {
            out.push(json!({
                "name": format!("{FILES_VOLUME_PREFIX}{i}"),
                "emptyDir": {"medium": "Memory", "sizeLimit": FILES_SIZE_LIMIT},
            }));
        }
    }
    out
}

/// The sidecar's read-write mounts of the files volumes.
pub(super) fn sidecar_mounts(sidecar: &mut Value, spec: &PodSpec, settings: &PodSettings) {
    let Some(mounts) = sidecar
        .get_mut("volumeMounts")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for (i, c) in spec.containers.iter().enumerate() {
        if settings.files.iter().any(|f| f.container == c.name) {
            mounts.push(json!({
                "name": format!("{FILES_VOLUME_PREFIX}{i}"),
                "mountPath": format!("{SIDECAR_FILES_DIR}/{}", c.name),
            }));
        }
    }
}

/// The init container that copies the binary (`keyward install --to /keyward/bin/keyward`),
/// restricted like the sidecar; `None` when no container is wrapped.
pub(super) fn install_container(settings: &PodSettings, cfg: &InjectorConfig) -> Option<Value> {
    if settings.exec.is_empty() {
        return None;
    }
    Some(json!({
        "name": INSTALL_NAME,
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["install", "--to", EXEC_PATH],
        "resources": {"requests": cfg.resources.requests, "limits": cfg.resources.limits},
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
        "volumeMounts": [{"name": BIN_VOLUME, "mountPath": BIN_DIR}],
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::mutate::{mutate, to_json_patch, MutateError, Outcome, PodView};

    fn pod(annotations: &[(&str, &str)], containers: Value) -> (ObjectMeta, PodSpec) {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (format!("keyward.io/{k}"), (*v).to_owned()))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": containers},
        }))
        .expect("pod");
        (pod.metadata, pod.spec.expect("spec"))
    }

    fn run(annotations: &[(&str, &str)], containers: Value) -> Result<Value, MutateError> {
        let (metadata, spec) = pod(annotations, containers);
        let cfg = InjectorConfig::default();
        let view = PodView {
            namespace: Some("shop"),
            metadata: &metadata,
            spec: &spec,
        };
        match mutate(view, &cfg)? {
            Outcome::Patch(ops) => {
                let mut doc = json!({"metadata": metadata, "spec": spec});
                json_patch::patch(&mut doc, &to_json_patch(&ops).expect("patch")).expect("applies");
                Ok(doc)
            }
            Outcome::Skipped(r) => panic!("skipped: {r:?}"),
        }
    }

    fn refused(annotations: &[(&str, &str)], containers: Value) -> AnnotationError {
        match run(annotations, containers) {
            Err(MutateError::Annotation(e)) => e,
            other => panic!("expected an annotation error, got {other:?}"),
        }
    }

    /// The pod is refused with an annotation error naming `key`, whose problem contains each of
    /// `says`.
    fn assert_refused(annotations: &[(&str, &str)], containers: Value, key: &str, says: &[&str]) {
        let e = refused(annotations, containers);
        assert_eq!(e.key, key, "{e}");
        for s in says {
            assert!(e.problem.contains(s), "{s:?}: {e}");
        }
    }

    /// The files volume of `other`, the pod's second container: mounted read-only at
    /// [`FILES_DIR`] there, not named by the first container. Returns its name.
    fn files_volume_only_in_other(pod: &Value) -> String {
        let volume = format!("{FILES_VOLUME_PREFIX}1");
        assert!(!pod["spec"]["containers"][0].to_string().contains(&volume));
        assert!(pod["spec"]["containers"][1]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .contains(&json!({"name": volume, "mountPath": FILES_DIR, "readOnly": true})));
        volume
    }

    fn app() -> Value {
        json!([
            {"name": "app", "image": "app:1", "command": ["/app", "--serve"], "args": ["-v"]},
            {"name": "other", "image": "other:1", "command": ["/other"]},
        ])
    }

    #[test]
    fn a_wrapped_container_runs_its_command_under_keyward_exec_from_a_copied_binary() {
        let pod = run(
            &[
                ("secret-db", "secret/data/db"),
                ("env-app", "DB_PASSWORD=db#password\nDB_USER=db#user"),
                ("on-change-app", "db=restart"),
            ],
            app(),
        )
        .expect("admitted");
        let app = &pod["spec"]["containers"][0];
        assert_eq!(
            app["command"],
            json!([
                EXEC_PATH,
                "exec",
                "--env=DB_PASSWORD=db#password",
                "--env=DB_USER=db#user",
                "--on-change=db=restart",
                "--",
                "/app",
                "--serve"
            ])
        );
        assert_eq!(
            app["args"],
            json!(["-v"]),
            "args follow the original command"
        );
        assert!(app["volumeMounts"]
            .as_array()
            .expect("mounts")
            .contains(&json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true})));
        let other = &pod["spec"]["containers"][1];
        assert_eq!(
            other["command"],
            json!(["/other"]),
            "other containers keep theirs"
        );
        assert!(!other["volumeMounts"].to_string().contains(BIN_VOLUME));
        let init = pod["spec"]["initContainers"].as_array().expect("init");
        assert_eq!(init[0]["name"], "keyward", "the native sidecar first");
        assert_eq!(init[1]["name"], INSTALL_NAME);
        assert!(
            init[1].get("restartPolicy").is_none(),
            "a plain init container"
        );
        assert_eq!(init[1]["args"], json!(["install", "--to", EXEC_PATH]));
        let bin = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == BIN_VOLUME)
            .expect("bin volume");
        assert!(
            bin["emptyDir"].get("medium").is_none(),
            "a disk emptyDir: {bin}"
        );
    }

    #[test]
    fn a_wrapped_container_without_command_is_refused_naming_the_annotation() {
        assert_refused(
            &[
                ("secret-db", "secret/data/db"),
                ("env-app", "PW=db#password"),
            ],
            json!([{"name": "app", "image": "app:1", "args": ["serve"]}]),
            "keyward.io/env-app",
            &["has no command", "set spec.containers[].command"],
        );
    }

    #[test]
    fn exec_declarations_are_checked_with_the_wrappers_parser_and_secrets_must_be_declared() {
        let db = ("secret-db", "secret/data/db");
        assert_refused(
            &[db, ("env-app", "1X=db")],
            app(),
            "keyward.io/env-app",
            &[],
        );
        assert_refused(
            &[db, ("env-app", "PW=nope#x")],
            app(),
            "keyward.io/env-app",
            &["'nope' is not declared"],
        );
        assert_refused(
            &[
                db,
                ("env-app", "PW=db"),
                ("on-change-app", "db=signal:KILL"),
            ],
            app(),
            "keyward.io/on-change-app",
            &[],
        );
        assert_refused(
            &[db, ("env-app", "PW=db"), ("on-change-app", "nope=restart")],
            app(),
            "keyward.io/on-change-app",
            &["'nope' is not declared"],
        );
        assert_refused(
            &[db, ("env-nope", "PW=db")],
            app(),
            "keyward.io/env-nope",
            &["no container named 'nope'"],
        );
    }

    /// A container that gets its secret only as a file (or a certificate) is still run under
    /// the wrapper when keyward.io/on-change-CONTAINER names it, with no env annotation.
    #[test]
    fn on_change_alone_wraps_a_container_that_gets_its_secret_only_as_a_file_or_a_certificate() {
        let file = [
            ("secret-db", "secret/data/db"),
            ("file-dsn", "app/db.dsn"),
            ("file-dsn-secret", "db#dsn"),
            ("on-change-app", "db=restart"),
        ];
        let cert = [
            ("cert-web", "pki_web/issue/web"),
            ("cert-web-common-name", "web.shop.svc"),
            ("cert-web-container", "app"),
            ("on-change-app", "web=signal:HUP"),
        ];
        for (annotations, flag) in [
            (&file[..], "--on-change=db=restart"),
            (&cert[..], "--on-change=web=signal:HUP"),
        ] {
            let pod = run(annotations, app()).expect("admitted");
            let app = &pod["spec"]["containers"][0];
            assert_eq!(
                app["command"],
                json!([EXEC_PATH, "exec", flag, "--", "/app", "--serve"]),
                "{annotations:?}"
            );
            assert_eq!(app["args"], json!(["-v"]));
            let mounts = app["volumeMounts"].as_array().expect("mounts");
            assert!(
                mounts
                    .contains(&json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true})),
                "{mounts:?}"
            );
            assert!(
                mounts.contains(&json!({"name": format!("{FILES_VOLUME_PREFIX}0"), "mountPath": FILES_DIR, "readOnly": true})),
                "{mounts:?}"
            );
            let init = pod["spec"]["initContainers"].as_array().expect("init");
            assert!(init.iter().any(|c| c["name"] == INSTALL_NAME), "{init:?}");
            assert_eq!(pod["spec"]["containers"][1]["command"], json!(["/other"]));
        }
    }

    #[test]
    fn on_change_alone_on_a_container_without_command_is_refused_naming_the_on_change_annotation() {
        assert_refused(
            &[
                ("secret-db", "secret/data/db"),
                ("file-dsn", "app/db.dsn"),
                ("file-dsn-secret", "db#dsn"),
                ("on-change-app", "db=restart"),
            ],
            json!([{"name": "app", "image": "app:1", "args": ["serve"]}]),
            "keyward.io/on-change-app",
            &["has no command", "set spec.containers[].command"],
        );
        assert_refused(
            &[
                ("secret-db", "secret/data/db"),
                ("on-change-app", "nope=restart"),
            ],
            app(),
            "keyward.io/on-change-app",
            &["'nope' is not declared"],
        );
    }

    #[test]
    fn a_file_gets_a_memory_volume_mounted_only_into_its_container_and_into_the_sidecar() {
        let pod = run(
            &[
                ("secret-db", "secret/data/db"),
                ("file-dsn", "other/db.dsn"),
                (
                    "file-dsn-template",
                    "postgres://u:{{ secrets.db.data.password }}@db/x",
                ),
                ("file-pw", "other/password"),
                ("file-pw-secret", "db#password"),
                ("file-pw-mode", "0400"),
            ],
            app(),
        )
        .expect("admitted");
        let volume = files_volume_only_in_other(&pod);
        let v = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume.as_str())
            .expect("files volume");
        assert_eq!(v["emptyDir"]["medium"], "Memory");
        let sidecar = &pod["spec"]["initContainers"][0];
        assert!(sidecar["volumeMounts"]
            .as_array()
            .expect("mounts")
            .contains(&json!({"name": volume, "mountPath": "/run/keyward-files/other"})));
        let config = sidecar["env"][0]["value"].as_str().expect("config");
        let config = keyward_config::SidecarConfig::from_yaml(config).expect("loads");
        config.validate().expect("valid");
        assert_eq!(config.files.len(), 2);
        assert_eq!(config.files[1].mode, "0400");
        assert_eq!(config.files[1].key.as_deref(), Some("password"));
        assert!(
            pod["spec"]["initContainers"]
                .as_array()
                .expect("init")
                .len()
                == 1,
            "no install without exec"
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_annotation() {
        let db = ("secret-db", "secret/data/db");
        for (annotations, key, says) in [
            (
                vec![
                    db,
                    ("file-x", "app/x"),
                    ("file-x-template", "{{ secrets.nope.data.a }}"),
                ],
                "keyward.io/file-x-template",
                "secrets.nope is not a declared secret",
            ),
            (
                vec![
                    db,
                    ("file-x", "app/x"),
                    ("file-x-template", "{{ secrets.db.data.a "),
                ],
                "keyward.io/file-x-template",
                "does not parse",
            ),
            (
                vec![db, ("file-x", "app/../etc/passwd"), ("file-x-secret", "db")],
                "keyward.io/file-x",
                "plain file name",
            ),
            (
                vec![db, ("file-x", "app//etc/passwd"), ("file-x-secret", "db")],
                "keyward.io/file-x",
                "plain file name",
            ),
            (
                vec![db, ("file-x", "app/a\u{0}b"), ("file-x-secret", "db")],
                "keyward.io/file-x",
                "plain file name",
            ),
            (
                vec![db, ("file-x", "app/.."), ("file-x-secret", "db")],
                "keyward.io/file-x",
                "plain file name",
            ),
            (
                vec![db, ("file-x", "app/x"), ("file-x-secret", "nope")],
                "keyward.io/file-x-secret",
                "'nope' is not declared",
            ),
            (
                vec![db, ("file-x", "app/x")],
                "keyward.io/file-x",
                "say what goes in the file",
            ),
            (
                vec![
                    db,
                    ("file-x", "app/x"),
                    ("file-x-secret", "db"),
                    ("file-x-mode", "0640"),
                ],
                "keyward.io/file-x-mode",
                "no write bit",
            ),
            (
                vec![db, ("file-x-secret", "db")],
                "keyward.io/file-x-secret",
                "no keyward.io/file-x annotation",
            ),
            (
                vec![db, ("file-x", "nope/x"), ("file-x-secret", "db")],
                "keyward.io/file-x",
                "no container named 'nope'",
            ),
            (
                vec![
                    db,
                    ("file-x", "app/x"),
                    ("file-x-secret", "db"),
                    ("file-y", "app/x"),
                    ("file-y-secret", "db"),
                ],
                "keyward.io/file-y",
                "already gets a file named 'x'",
            ),
        ] {
            let e = refused(&annotations, app());
            assert_eq!(e.key, key, "{annotations:?}: {e}");
            assert!(e.problem.contains(says), "{annotations:?}: {e}");
        }
    }

    /// A container (regular or init) that mounts another container's files volume (or the
    /// wrapper's) by its name would read files it did not declare, the SVID's key among them:
    /// the volume is the file's protection, so such a mount is refused.
    #[test]
    fn a_container_mounting_another_containers_files_volume_by_name_is_refused() {
        let mesh = [
            ("inbound", "8443:8080"),
            ("inbound-allow-8443", "spiffe://cluster.local/ns/shop/sa/*"),
            ("identity-uids", "1000"),
            ("identity-files", "app"),
        ];
        let thief = |mount: &str| {
            json!([
                {"name": "app", "image": "app:1", "command": ["/app"],
                 "securityContext": {"runAsUser": 1000}},
                {"name": "other", "image": "other:1", "command": ["/other"],
                 "securityContext": {"runAsUser": 2000},
                 "volumeMounts": [{"name": mount, "mountPath": "/steal"}]},
            ])
        };
        for mount in [format!("{FILES_VOLUME_PREFIX}0"), BIN_VOLUME.to_owned()] {
            match run(&mesh, thief(&mount)) {
                Err(MutateError::Conflict(m)) => {
                    assert!(m.contains("'other'") && m.contains(&mount), "{m}")
                }
                other => panic!("{mount}: expected a conflict, got {other:?}"),
            }
        }
        // The same from an init container (it runs after the native sidecar has rendered).
        let (metadata, mut spec) = pod(&mesh, thief("unrelated"));
        spec.containers[1].volume_mounts = None;
        spec.init_containers = Some(vec![serde_json::from_value(json!({
            "name": "prep", "image": "prep:1",
            "volumeMounts": [{"name": format!("{FILES_VOLUME_PREFIX}0"), "mountPath": "/steal"}],
        }))
        .expect("container")]);
        let view = PodView {
            namespace: Some("shop"),
            metadata: &metadata,
            spec: &spec,
        };
        match mutate(view, &InjectorConfig::default()) {
            Err(MutateError::Conflict(m)) => assert!(m.contains("'prep'"), "{m}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    /// A secret limited to some uids (keyward.io/secret-NAME-uids) is not handed as a file to a
    /// container running as another uid (or as none declared): the socket's rule holds for its
    /// files too, whether the file names the secret or a template reads it.
    #[test]
    fn a_file_of_a_secret_limited_to_uids_goes_only_into_a_container_running_as_one() {
        let as_uid = |uid: Option<i64>| {
            let mut c = app();
            if let Some(u) = uid {
                c[1]["securityContext"] = json!({"runAsUser": u});
            }
            c
        };
        for file in [
            ("file-pw-secret", "db#password"),
            ("file-pw-template", "{{ secrets.db.data.password }}"),
        ] {
            let annotations = [
                ("secret-db", "secret/data/db"),
                ("secret-db-uids", "1000"),
                ("file-pw", "other/password"),
                file,
            ];
            run(&annotations, as_uid(Some(1000))).expect("admitted");
            for uid in [Some(2000), None] {
                let e = refused(&annotations, as_uid(uid));
                assert_eq!(e.key, "keyward.io/file-pw", "{uid:?}: {e}");
                assert!(e.problem.contains("secret-db-uids (1000)"), "{e}");
            }
        }
    }

    /// The SVID's files go only into a container that runs as a uid of identity-uids (the rule
    /// of GET /v1/identity), and a certificate's into the container its -container names.
    #[test]
    fn svid_files_need_a_container_of_an_allowed_uid_and_cert_files_their_container() {
        let mesh = [
            ("inbound", "8443:8080"),
            ("inbound-allow-8443", "spiffe://cluster.local/ns/shop/sa/*"),
            ("identity-uids", "1000"),
            ("identity-files", "app"),
        ];
        let as_uid = |uid: Option<i64>| {
            let mut c = app();
            if let Some(u) = uid {
                c[0]["securityContext"] = json!({"runAsUser": u});
            }
            c
        };
        let pod = run(&mesh, as_uid(Some(1000))).expect("admitted");
        let config = pod.to_string();
        for f in ["svid.crt", "svid.key", "svid-bundle.crt"] {
            assert!(config.contains(f), "{f}");
        }
        for uid in [Some(1001), None] {
            let e = refused(&mesh, as_uid(uid));
            assert_eq!(e.key, "keyward.io/identity-files", "{uid:?}: {e}");
            assert!(e.problem.contains("identity-uids (1000)"), "{e}");
        }
        assert_refused(
            &[
                ("cert-web", "pki_web/issue/web"),
                ("cert-web-common-name", "web.shop.svc"),
                ("cert-web-container", "nope"),
            ],
            app(),
            "keyward.io/cert-web-container",
            &["no container named 'nope'"],
        );
    }

    /// A certificate: the sidecar's config (contract version 3, valid) has the secret with its
    /// issue block and the three files in the container's volume, which only that container
    /// mounts.
    #[test]
    fn a_certificate_gives_a_version_3_config_with_the_issue_and_its_files_in_the_container_volume()
    {
        let pod = run(
            &[
                ("cert-web", "pki_web/issue/web"),
                ("cert-web-common-name", "web.shop.svc"),
                ("cert-web-alt-names", "web"),
                ("cert-web-ttl", "1h"),
                ("cert-web-container", "other"),
            ],
            app(),
        )
        .expect("admitted");
        let sidecar = &pod["spec"]["initContainers"][0];
        let text = sidecar["env"][0]["value"].as_str().expect("config");
        assert!(text.starts_with("version: 3\n"), "{text}");
        let config = keyward_config::SidecarConfig::from_yaml(text).expect("loads");
        config.validate().expect("valid");
        let web = config.secret("web").expect("secret web");
        assert_eq!(
            web.issue.as_ref().map(|i| i.common_name.as_str()),
            Some("web.shop.svc")
        );
        let files: Vec<(&str, &str)> = config
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.key.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            files,
            vec![
                ("web.crt", "certificate"),
                ("web.ca.crt", "ca_chain"),
                ("web.key", "private_key"),
            ]
        );
        assert!(config
            .files
            .iter()
            .all(|f| f.dir.to_str() == Some("/run/keyward-files/other")));
        files_volume_only_in_other(&pod);
    }

    /// The sidecar config of the pod, loaded and valid.
    fn loaded(pod: &Value) -> keyward_config::SidecarConfig {
        let text = pod["spec"]["initContainers"][0]["env"][0]["value"]
            .as_str()
            .expect("config");
        let config = keyward_config::SidecarConfig::from_yaml(text).expect("loads");
        config.validate().expect("valid");
        config
    }

    /// A certificate's private key is its container's: the secret is readable only on that
    /// container's socket (`allow_containers`), and on none when keyward.io/containers leaves
    /// the container without a socket (it still gets the files).
    #[test]
    fn a_certificate_is_readable_only_on_its_containers_socket() {
        let cert = [
            ("cert-web", "pki_web/issue/web"),
            ("cert-web-common-name", "web.shop.svc"),
            ("cert-web-container", "other"),
            ("secret-db", "secret/data/db"),
        ];
        let config = loaded(&run(&cert, app()).expect("admitted"));
        let sockets: Vec<&str> = config
            .socket
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(sockets, ["app", "other"]);
        let web = config.secret("web").expect("secret web");
        assert_eq!(web.allow_containers, Some(vec!["other".to_owned()]));
        assert_eq!(config.secret("db").expect("db").allow_containers, None);

        let mut only_app = cert.to_vec();
        only_app.push(("containers", "app"));
        let config = loaded(&run(&only_app, app()).expect("admitted"));
        assert_eq!(
            config.secret("web").expect("web").allow_containers,
            Some(vec![])
        );
        assert!(config.files.iter().any(|f| f.container == "other"));
    }
}
