//! The contract's own tests: round trips, defaults, what is written, and that every rule and
//! every shape error names its setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyward_identity::{IdPattern, SpiffeId};

use crate::*;

fn load(doc: &str) -> Result<SidecarConfig, ConfigError> {
    let c = SidecarConfig::from_yaml(doc)?;
    c.validate()?;
    Ok(c)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Every setting away from its default, so a field the serializer skipped or renamed shows.
fn everything() -> SidecarConfig {
    SidecarConfig {
        version: CONTRACT_VERSION,
        vault: VaultConfig {
            addr: "https://vault:8200".into(),
            ca_file: Some("/etc/ca.crt".into()),
            namespace: Some("team".into()),
            tls_server_name: Some("vault.internal".into()),
            client_cert_file: Some("/etc/keyward/vault-client/tls.crt".into()),
            client_key_file: Some("/etc/keyward/vault-client/tls.key".into()),
            timeout: Duration::from_secs(3),
            allow_insecure_http: true,
            max_response_bytes: 8192,
        },
        auth: AuthConfig {
            method: AuthMethod::Kubernetes,
            mount: Some("k8s".into()),
            role: Some("orders".into()),
            token_file: "/tmp/token".into(),
            max_backoff: Duration::from_secs(7),
        },
        secrets: vec![
            SecretSpec {
                name: "db".into(),
                path: "database/creds/app".into(),
                key: Some("password".into()),
                required: false,
                allow_uids: Some(vec![1000, 1001]),
                allow_containers: None,
                issue: None,
            },
            SecretSpec {
                name: "api".into(),
                path: "secret/data/api".into(),
                key: None,
                required: true,
                allow_uids: Some(vec![]),
                allow_containers: None,
                issue: None,
            },
        ],
        socket: SocketConfig {
            path: "/tmp/s.sock".into(),
            group: Some(2000),
            mode: "0600".into(),
            read_timeout: Duration::from_millis(1500),
            max_wait: Duration::from_secs(9),
            max_connections: 3,
            containers: vec![ContainerSocket {
                name: "app".into(),
                path: "/tmp/c/app/s.sock".into(),
            }],
        },
        audit: AuditSettings {
            file: "/tmp/audit.log".into(),
            stdout: true,
            hmac_key_file: Some("/tmp/hmac".into()),
            fsync: true,
            checkpoint: Some(CheckpointSettings::default()),
            max_bytes: Some(1 << 20),
            volume_percent: Some(40),
            segments: Some(3),
            summary_interval: Some(Duration::from_secs(300)),
        },
        kv_refresh: Some(Duration::from_secs(90)),
        revoke_on_shutdown: false,
        identity: Some(IdentityConfig {
            trust_domain: "td".into(),
            pki_mount: "pki".into(),
            pki_role: "web".into(),
            ttl: Some(Duration::from_secs(3600)),
            bundle_file: Some("/tmp/bundle.pem".into()),
            allow_uids: vec![1000],
        }),
        proxy: Some(ProxyConfig {
            admin: addr("127.0.0.1:9000"),
            exposed_app_port: ExposedAppPort::Refuse,
            policy_file: Some("/tmp/policy.yaml".into()),
            allow_tls12: true,
            inbound: vec![InboundConfig {
                listen: addr("0.0.0.0:15443"),
                forward: "127.0.0.1:8080".into(),
                allow: vec![IdPattern::parse("spiffe://td/ns/shop/*").expect("pattern")],
                proxy_protocol: true,
            }],
            outbound: vec![OutboundConfig {
                listen: addr("127.0.0.1:15001"),
                upstream: "orders.shop.svc:15443".into(),
                expect: vec![SpiffeId::parse("spiffe://td/ns/shop/sa/orders").expect("id")],
            }],
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            max_connections: 5,
            drain_grace: Duration::from_secs(1),
            worker_threads: Some(4),
        }),
        files: vec![
            FileSpec {
                name: "dsn".into(),
                container: "app".into(),
                dir: "/keyward/files/app".into(),
                path: "dsn.conf".into(),
                mode: "0400".into(),
                secret: None,
                key: None,
                template: Some(
                    "postgres://u:{{ secrets.db.data.password }}@db/{{ secrets.api.version }}"
                        .into(),
                ),
                identity: None,
            },
            FileSpec {
                name: "pw".into(),
                container: "app".into(),
                dir: "/keyward/files/app".into(),
                path: "password".into(),
                mode: "0440".into(),
                secret: Some("db".into()),
                key: Some("password".into()),
                template: None,
                identity: None,
            },
        ],
        metrics: Some(MetricsConfig {
            listen: addr("0.0.0.0:15091"),
        }),
    }
}

#[test]
fn round_trip_serialize_then_deserialize_is_equal() {
    let full = everything();
    full.validate().expect("the full example is valid");
    let minimal = SidecarConfig::new("http://127.0.0.1:8200");
    let mut broker_only = minimal.clone();
    broker_only.proxy = Some(ProxyConfig::default());
    for config in [full, minimal, broker_only] {
        let yaml = config.to_yaml().expect("serializes");
        let back = SidecarConfig::from_yaml(&yaml).expect("deserializes");
        assert_eq!(back, config, "{yaml}");
        assert_eq!(back.to_yaml().expect("again"), yaml, "a fixed point");
    }
}

#[test]
fn every_non_default_setting_is_written() {
    let yaml = everything().to_yaml().expect("serializes");
    for needle in [
        "namespace: team",
        "tls_server_name: vault.internal",
        "client_cert_file: /etc/keyward/vault-client/tls.crt",
        "client_key_file: /etc/keyward/vault-client/tls.key",
        "timeout: 3s",
        "allow_insecure_http: true",
        "max_response_bytes: 8192",
        "method: kubernetes",
        "max_backoff: 7s",
        "allow_uids: []",
        "mode: '0600'",
        "read_timeout: 1s 500ms",
        "max_wait: 9s",
        "hmac_key_file: /tmp/hmac",
        "fsync: true",
        "kv_refresh: 1m 30s",
        "revoke_on_shutdown: false",
        "ttl: 1h",
        "bundle_file: /tmp/bundle.pem",
        "exposed_app_port: refuse",
        "policy_file: /tmp/policy.yaml",
        "allow_tls12: true",
        "proxy_protocol: true",
        "handshake_timeout: 2s",
        "idle_timeout: 1m",
        "drain_grace: 1s",
        "worker_threads: 4",
    ] {
        assert!(yaml.contains(needle), "{needle} missing from\n{yaml}");
    }
}

#[test]
fn defaults_are_applied_and_not_written() {
    let c = load("vault: {addr: 'http://v:1'}").expect("valid");
    assert_eq!(c, SidecarConfig::new("http://v:1"));
    assert_eq!(c.vault.timeout, Duration::from_secs(10));
    assert_eq!(c.vault.max_response_bytes, 1 << 20);
    assert!(!c.vault.allow_insecure_http);
    assert_eq!(c.auth.method, AuthMethod::Jwt);
    assert_eq!(c.auth.mount(), "jwt");
    assert_eq!(
        c.auth.token_file,
        PathBuf::from("/var/run/secrets/keyward/token")
    );
    assert_eq!(c.auth.max_backoff, Duration::from_secs(30));
    assert_eq!(c.socket.path, PathBuf::from("/run/keyward/broker.sock"));
    assert_eq!(c.socket.mode_bits(), 0o660);
    assert_eq!(c.socket.read_timeout, Duration::from_secs(5));
    assert_eq!(c.socket.max_wait, Duration::from_secs(300));
    assert_eq!(c.socket.max_connections, 1024);
    assert_eq!(c.audit.file, PathBuf::from("/run/keyward/audit.log"));
    assert!(!c.audit.stdout && !c.audit.fsync);
    assert_eq!(c.kv_refresh, None);
    assert_eq!(c.kv_refresh(), DEFAULT_KV_REFRESH);
    assert!(c.revoke_on_shutdown);
    assert!(c.identity.is_none() && c.proxy.is_none());
    let p = c.proxy_or_default();
    assert_eq!(p.admin, addr("127.0.0.1:15090"));
    assert_eq!(p.exposed_app_port, ExposedAppPort::Warn);
    assert_eq!(p.handshake_timeout, Duration::from_secs(10));
    assert_eq!(p.idle_timeout, Duration::from_secs(3600));
    assert_eq!(p.max_connections, 10_000);
    assert_eq!(p.drain_grace, Duration::from_secs(20));
    assert_eq!(p.worker_threads, None);
    let secret = load("vault: {addr: 'http://v'}\nsecrets: [{name: a, path: secret/data/a}]")
        .expect("valid");
    assert!(secret.secrets[0].required, "required defaults to true");
    let id = IdentityConfig::new("td");
    assert_eq!(
        (id.pki_mount.as_str(), id.pki_role.as_str()),
        ("pki_int", "spiffe")
    );
    assert_eq!(id.ttl(), DEFAULT_SVID_TTL);
    assert!(id.allow_uids.is_empty());

    // Written: exactly the settings the injector sets (explicit `required`, `audit.stdout`,
    // `proxy.admin`), none of the defaults it never sets.
    let mut c = SidecarConfig::new("https://vault:8200");
    c.secrets.push(SecretSpec {
        name: "db".into(),
        path: "database/creds/app".into(),
        key: None,
        required: true,
        allow_uids: None,
        allow_containers: None,
        issue: None,
    });
    c.identity = Some(IdentityConfig::new("td"));
    c.proxy = Some(ProxyConfig::default());
    assert_eq!(
        c.to_yaml().expect("yaml"),
        "vault:\n  addr: https://vault:8200\nauth:\n  method: jwt\n  \
         token_file: /var/run/secrets/keyward/token\nsecrets:\n- name: db\n  \
         path: database/creds/app\n  required: true\nsocket:\n  path: /run/keyward/broker.sock\n\
         audit:\n  file: /run/keyward/audit.log\n  stdout: false\nidentity:\n  trust_domain: td\n  \
         pki_mount: pki_int\n  pki_role: spiffe\nproxy:\n  admin: 127.0.0.1:15090\n  \
         exposed_app_port: warn\n  inbound: []\n  outbound: []\n"
    );
}

#[test]
fn an_explicit_default_kv_refresh_is_still_written() {
    let mut c = SidecarConfig::new("http://v");
    c.kv_refresh = Some(DEFAULT_KV_REFRESH);
    assert!(c.to_yaml().expect("yaml").contains("kv_refresh: 1m\n"));
}

#[test]
fn parses_the_injector_shape() {
    let c = load(
        r#"
vault: {addr: "https://vault:8200"}
identity: {trust_domain: cluster.local, pki_mount: pki_int, pki_role: spiffe, ttl: 24h, bundle_file: null}
proxy:
  admin: "127.0.0.1:15090"
  policy_file: null
  allow_tls12: false
  inbound:
    - {listen: "0.0.0.0:15443", forward: "127.0.0.1:8080", allow: ["spiffe://cluster.local/ns/shop/sa/frontend"], proxy_protocol: false}
  outbound:
    - {listen: "127.0.0.1:15001", upstream: "orders.shop.svc:15443", expect: ["spiffe://cluster.local/ns/shop/sa/orders"]}
"#,
    )
    .expect("valid");
    let id = c.identity.as_ref().expect("identity");
    assert_eq!(id.ttl(), Duration::from_secs(86400));
    let p = c.proxy.as_ref().expect("proxy");
    assert_eq!(p.inbound[0].listen.port(), 15443);
    assert_eq!(p.outbound[0].expect.len(), 1);
    assert_eq!(p.drain_grace, Duration::from_secs(20));
    assert_eq!(p.exposed_app_port, ExposedAppPort::Warn);
}

#[test]
fn exposed_app_port_is_warn_or_refuse() {
    let mode = |m: &str| {
        load(&format!(
            "vault: {{addr: 'http://v'}}\nproxy: {{exposed_app_port: {m}}}"
        ))
    };
    let p = mode("refuse").expect("refuse").proxy_or_default();
    assert_eq!(p.exposed_app_port, ExposedAppPort::Refuse);
    let p = mode("warn").expect("warn").proxy_or_default();
    assert_eq!(p.exposed_app_port, ExposedAppPort::Warn);
    let err = mode("block").expect_err("unknown mode");
    assert_eq!(err.setting(), Some("proxy.exposed_app_port"));
    let text = err.to_string();
    assert!(text.contains("warn") && text.contains("refuse"), "{text}");
}

/// Each rule of `validate`, with the setting its error names.
#[test]
fn each_validation_rule_names_its_setting() {
    const V: &str = "vault: {addr: 'http://v'}\n";
    const ID: &str = "vault: {addr: 'http://v'}\nidentity: {trust_domain: td}\n";
    let cases: &[(String, &str)] = &[
        ("vault: {addr: vault:8200}".into(), "vault.addr"),
        (format!("{V}auth: {{role: 'a/b'}}"), "auth.role"),
        (format!("{V}auth: {{role: ''}}"), "auth.role"),
        (format!("{V}auth: {{mount: 'a/../b'}}"), "auth.mount"),
        (format!("{V}auth: {{mount: ''}}"), "auth.mount"),
        (format!("{V}secrets: [{{name: 'a/b', path: secret/x}}]"), "secrets[0].name"),
        (
            format!("{V}secrets: [{{name: a, path: secret/x}}, {{name: a, path: secret/y}}]"),
            "secrets[1].name",
        ),
        (format!("{V}secrets: [{{name: a, path: '../x'}}]"), "secrets[0].path"),
        (
            format!("{V}secrets: [{{name: a, path: 'secret/{}'}}]", "a".repeat(600)),
            "secrets[0].path",
        ),
        (format!("{V}secrets: [{{name: a, path: secret/x, key: 'a b'}}]"), "secrets[0].key"),
        (format!("{V}socket: {{mode: '999'}}"), "socket.mode"),
        (format!("{V}socket: {{mode: '0440'}}"), "socket.mode"),
        (format!("{V}kv_refresh: 500ms"), "kv_refresh"),
        (format!("{V}identity: {{trust_domain: 'Bad TD'}}"), "identity.trust_domain"),
        (format!("{V}identity: {{trust_domain: td, pki_mount: '/pki'}}"), "identity.pki_mount"),
        (format!("{V}identity: {{trust_domain: td, pki_role: 'a/b'}}"), "identity.pki_role"),
        (format!("{V}identity: {{trust_domain: td, ttl: 5s}}"), "identity.ttl"),
        (format!("{V}proxy: {{inbound: [{{listen: '0.0.0.0:1', forward: 'x:1'}}]}}"), "identity"),
        (format!("{V}proxy: {{policy_file: /p.yaml}}"), "identity"),
        (format!("{ID}proxy: {{admin: '0.0.0.0:1'}}"), "proxy.admin"),
        (
            format!("{ID}proxy: {{inbound: [{{listen: '0.0.0.0:0', forward: 'x:1'}}]}}"),
            "proxy.inbound[0].listen",
        ),
        (
            format!("{ID}proxy: {{inbound: [{{listen: '0.0.0.0:1', forward: 'x'}}]}}"),
            "proxy.inbound[0].forward",
        ),
        (
            format!(
                "{ID}proxy: {{inbound: [{{listen: '0.0.0.0:1', forward: 'x:1', allow: ['spiffe://other/x']}}]}}"
            ),
            "proxy.inbound[0].allow",
        ),
        (
            format!(
                "{ID}proxy: {{inbound: [{{listen: '0.0.0.0:3', forward: 'x:1'}}], outbound: [{{listen: '127.0.0.1:3', upstream: 'u:1', expect: ['spiffe://td/x']}}]}}"
            ),
            "proxy.outbound[0].listen",
        ),
        (
            format!(
                "{ID}proxy: {{outbound: [{{listen: '0.0.0.0:2', upstream: 'u:1', expect: ['spiffe://td/x']}}]}}"
            ),
            "proxy.outbound[0].listen",
        ),
        (
            format!("{ID}proxy: {{outbound: [{{listen: '127.0.0.1:2', upstream: 'u', expect: ['spiffe://td/x']}}]}}"),
            "proxy.outbound[0].upstream",
        ),
        (
            format!("{ID}proxy: {{outbound: [{{listen: '127.0.0.1:2', upstream: 'u:1', expect: []}}]}}"),
            "proxy.outbound[0].expect",
        ),
        (
            format!("{ID}proxy: {{outbound: [{{listen: '127.0.0.1:2', upstream: 'u:1', expect: ['spiffe://other/x']}}]}}"),
            "proxy.outbound[0].expect",
        ),
        (format!("{ID}proxy: {{max_connections: 0}}"), "proxy.max_connections"),
        (format!("{ID}proxy: {{idle_timeout: 0s}}"), "proxy.handshake_timeout/idle_timeout"),
        (format!("{ID}proxy: {{worker_threads: 0}}"), "proxy.worker_threads"),
    ];
    for (doc, setting) in cases {
        let err = load(doc).expect_err(doc);
        assert!(matches!(err, ConfigError::Invalid { .. }), "{doc}: {err:?}");
        assert_eq!(err.setting(), Some(*setting), "{doc}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid config: {setting}: ")),
            "{doc}: {err}"
        );
    }
}

#[test]
fn the_same_document_is_valid_with_an_identity_and_broker_only_without_listeners() {
    let ok = "vault: {addr: 'http://v'}\nproxy: {admin: '127.0.0.1:9999', worker_threads: 2}";
    let c = load(ok).expect("broker-only may set the admin endpoint");
    assert!(c.identity.is_none());
    assert_eq!(c.proxy_or_default().admin.port(), 9999);
}

/// Unknown fields are refused at every level, as the broker and the proxy always did
/// (`deny_unknown_fields`), and the error says where.
#[test]
fn unknown_fields_are_refused_naming_where() {
    const V: &str = "vault: {addr: 'http://v'}\n";
    const ID: &str = "vault: {addr: 'http://v'}\nidentity: {trust_domain: td}\n";
    for (doc, at) in [
        (format!("{V}bogus: 1"), None),
        ("vault: {addr: 'http://v', bogus: 1}".to_owned(), Some("vault")),
        (format!("{V}auth: {{bogus: 1}}"), Some("auth")),
        (format!("{V}secrets: [{{name: a, path: secret/x, bogus: 1}}]"), Some("secrets[0]")),
        (format!("{V}socket: {{bogus: 1}}"), Some("socket")),
        (format!("{V}audit: {{bogus: 1}}"), Some("audit")),
        (format!("{V}identity: {{trust_domain: td, bogus: 1}}"), Some("identity")),
        (format!("{ID}proxy: {{bogus: 1}}"), Some("proxy")),
        (
            format!("{ID}proxy: {{inbound: [{{listen: '0.0.0.0:1', forward: 'x:1', bogus: 1}}]}}"),
            Some("proxy.inbound[0]"),
        ),
        (
            format!("{ID}proxy: {{outbound: [{{listen: '127.0.0.1:1', upstream: 'x:1', expect: [], bogus: 1}}]}}"),
            Some("proxy.outbound[0]"),
        ),
    ] {
        let err = SidecarConfig::from_yaml(&doc).expect_err(&doc);
        let ConfigError::Parse { at: got, reason } = &err else {
            panic!("{doc}: {err:?}");
        };
        assert!(reason.contains("unknown field `bogus`"), "{doc}: {err}");
        // serde_path_to_error names the field itself, inside its section.
        let want = at.map_or("bogus".to_owned(), |a| format!("{a}.bogus"));
        assert_eq!(got.as_deref(), Some(want.as_str()), "{doc}: {err}");
    }
}

#[test]
fn shape_errors_name_the_setting() {
    for (doc, at, needle) in [
        ("{}", None, "missing field `vault`"),
        ("vault: {addr: 'http://v'}\nauth: {method: ldap}", Some("auth.method"), "unknown variant `ldap`"),
        ("vault: {addr: 'http://v'}\nsocket: {group: -1}", Some("socket.group"), "invalid value"),
        ("vault: {addr: 'http://v'}\nkv_refresh: soon", Some("kv_refresh"), "expected"),
        (
            "vault: {addr: 'http://v'}\nidentity: {trust_domain: td}\nproxy: {inbound: [{listen: nowhere, forward: 'x:1'}]}",
            Some("proxy.inbound[0].listen"),
            "address",
        ),
        (
            "vault: {addr: 'http://v'}\nidentity: {trust_domain: td}\nproxy: {inbound: [{listen: '0.0.0.0:1', forward: 'x:1', allow: ['spiffe://td/a/*/b']}]}",
            Some("proxy.inbound[0].allow[0]"),
            "'*'",
        ),
        ("[1, 2]", None, "expected struct SidecarConfig"),
        ("vault: {addr: [", None, ""),
    ] {
        let err = SidecarConfig::from_yaml(doc).expect_err(doc);
        assert!(matches!(err, ConfigError::Parse { .. }), "{doc}: {err:?}");
        assert_eq!(err.setting(), at, "{doc}: {err}");
        assert!(err.to_string().contains(needle), "{doc}: {err}");
    }
}

fn with_file(f: impl FnOnce(&mut FileSpec)) -> Result<(), ConfigError> {
    let mut c = everything();
    f(&mut c.files[0]);
    c.validate()
}

#[test]
fn a_file_path_that_leaves_its_directory_is_refused_naming_the_setting() {
    for bad in [
        "../etc/passwd",
        "/etc/passwd",
        "a/b",
        "..",
        ".",
        "",
        "a\0b",
        "a\u{0}b",
    ] {
        let e = with_file(|f| f.path = bad.into()).expect_err(bad);
        assert_eq!(e.setting(), Some("files[0].path"), "{bad:?}: {e}");
    }
    with_file(|f| f.path = "db.dsn_1-x".into()).expect("a plain name");
}

#[test]
fn a_template_that_does_not_parse_or_names_an_undeclared_secret_is_refused() {
    for (bad, says) in [
        ("{{ secrets.db.data.password ", "does not parse"),
        ("{% if %}", "does not parse"),
        (
            "{{ secrets.nope.data.x }}",
            "secrets.nope is not a declared secret",
        ),
        ("{{ secrets['db'].data.x }}", "computed name"),
        ("{{ env.HOME }}", "its only variable is secrets"),
    ] {
        let e = with_file(|f| f.template = Some(bad.into())).expect_err(bad);
        assert_eq!(e.setting(), Some("files[0].template"), "{bad:?}: {e}");
        assert!(e.to_string().contains(says), "{bad:?}: {e}");
    }
    let e = with_file(|f| {
        f.template = None;
        f.secret = Some("nope".into());
    })
    .expect_err("unknown secret");
    assert_eq!(e.setting(), Some("files[0].secret"), "{e}");
    let e = with_file(|f| f.secret = Some("db".into())).expect_err("both");
    assert_eq!(e.setting(), Some("files[0]"), "{e}");
}

#[test]
fn file_modes_have_owner_read_and_no_write_bit() {
    for bad in ["0640", "0200", "0000", "1440", "x", "0442"] {
        let e = with_file(|f| f.mode = bad.into()).expect_err(bad);
        assert_eq!(e.setting(), Some("files[0].mode"), "{bad:?}: {e}");
    }
    for good in ["0400", "0440", "0444", "0o440", "0550"] {
        with_file(|f| f.mode = good.into()).expect(good);
    }
}

#[test]
fn a_file_names_the_secrets_its_template_uses_with_underscores_for_dashes() {
    let mut c = everything();
    c.secrets[1].name = "api-key".into();
    c.files[0].template =
        Some("{{ secrets.api_key.version }}{% if secrets.db.lease_expires %}x{% endif %}".into());
    c.validate().expect("valid");
    assert_eq!(c.files[0].secrets(&c.secrets), vec!["db", "api-key"]);
    assert_eq!(c.files[1].secrets(&c.secrets), vec!["db"]);
}

#[test]
fn a_config_without_files_does_not_write_the_section() {
    let yaml = SidecarConfig::new("http://127.0.0.1:8200")
        .to_yaml()
        .expect("yaml");
    assert!(!yaml.contains("files"), "{yaml}");
}

#[test]
fn audit_checkpoints_are_off_and_unwritten_by_default_and_checked_when_present() {
    let c = SidecarConfig::new("https://vault:8200");
    assert_eq!(c.audit.checkpoint, None);
    assert!(!c.to_yaml().expect("yaml").contains("checkpoint"));
    let on = SidecarConfig::from_yaml(
        "vault: {addr: \"https://vault:8200\"}\naudit: {checkpoint: {every_records: 5}}\n",
    )
    .expect("parse");
    let cp = on.audit.checkpoint.clone().expect("section present");
    assert!(cp.enabled);
    assert_eq!(
        (
            cp.mount.as_str(),
            cp.prefix.as_str(),
            cp.every_records,
            cp.every
        ),
        ("keyward-audit", "checkpoints", 5, Duration::from_secs(60))
    );
    on.validate().expect("valid");
    for (doc, setting) in [
        ("{every_records: 0}", "audit.checkpoint.every_records"),
        ("{every: 10ms}", "audit.checkpoint.every"),
        ("{mount: \"../sys\"}", "audit.checkpoint.mount"),
        ("{prefix: \"a//b\"}", "audit.checkpoint.prefix"),
    ] {
        let bad = SidecarConfig::from_yaml(&format!(
            "vault: {{addr: \"https://vault:8200\"}}\naudit: {{checkpoint: {doc}}}\n"
        ))
        .expect("parse");
        let e = bad.validate().expect_err(doc).to_string();
        assert!(e.contains(setting), "{doc}: {e}");
    }
}
