//! `socket.containers`: one socket per app container (issue 12 §5).

use keyward_config::{ContainerSocket, SidecarConfig};

fn with(containers: &[(&str, &str)]) -> SidecarConfig {
    let mut c = SidecarConfig::new("https://vault:8200");
    c.socket.containers = containers
        .iter()
        .map(|(name, path)| ContainerSocket {
            name: (*name).into(),
            path: (*path).into(),
        })
        .collect();
    c
}

#[test]
fn container_sockets_round_trip_and_are_written_only_when_listed() {
    let none = SidecarConfig::new("https://vault:8200")
        .to_yaml()
        .expect("yaml");
    assert!(!none.contains("containers"), "{none}");
    let c = with(&[
        ("app", "/run/keyward/c/app/broker.sock"),
        ("worker-2", "/run/keyward/c/worker-2/broker.sock"),
    ]);
    c.validate().expect("valid");
    let yaml = c.to_yaml().expect("yaml");
    assert!(yaml.contains("containers:"), "{yaml}");
    assert_eq!(SidecarConfig::from_yaml(&yaml).expect("reads back"), c);
}

#[test]
fn a_bad_container_socket_is_refused_naming_the_setting() {
    for (containers, setting, says) in [
        (
            vec![("App", "/s/a.sock")],
            "socket.containers[0].name",
            "DNS label",
        ),
        (
            vec![("", "/s/a.sock")],
            "socket.containers[0].name",
            "DNS label",
        ),
        (
            vec![("-a", "/s/a.sock")],
            "socket.containers[0].name",
            "DNS label",
        ),
        (
            vec![("a", "/s/a.sock"), ("a", "/s/b.sock")],
            "socket.containers[1].name",
            "duplicate",
        ),
        (
            vec![("a", "s/a.sock")],
            "socket.containers[0].path",
            "absolute",
        ),
        (
            vec![("a", "/s/a.sock"), ("b", "/s/a.sock")],
            "socket.containers[1].path",
            "already",
        ),
        (
            vec![("a", "/run/keyward/broker.sock")],
            "socket.containers[0].path",
            "already socket.path",
        ),
    ] {
        let e = with(&containers).validate().expect_err(setting);
        assert_eq!(e.setting(), Some(setting), "{containers:?}: {e}");
        assert!(e.to_string().contains(says), "{containers:?}: {e}");
    }
}

#[test]
fn a_container_socket_with_an_unknown_field_is_refused_naming_it() {
    let doc =
        "vault: {addr: https://v:8200}\nsocket:\n  containers:\n  - {name: a, path: /s, mode: x}\n";
    let e = SidecarConfig::from_yaml(doc).expect_err("unknown field");
    assert!(e.to_string().contains("socket.containers[0]"), "{e}");
}

#[test]
fn the_metrics_listener_is_written_only_when_set_and_may_not_take_the_admin_port() {
    let mut c = SidecarConfig::new("https://vault:8200");
    assert!(!c.to_yaml().expect("yaml").contains("metrics"));
    c.metrics = Some(keyward_config::MetricsConfig {
        listen: "0.0.0.0:15091".parse().expect("addr"),
    });
    c.validate().expect("valid");
    let yaml = c.to_yaml().expect("yaml");
    assert!(yaml.contains("metrics:\n  listen: 0.0.0.0:15091"), "{yaml}");
    assert_eq!(SidecarConfig::from_yaml(&yaml).expect("reads back"), c);
    c.metrics = Some(keyward_config::MetricsConfig {
        listen: "0.0.0.0:15090".parse().expect("addr"),
    });
    let e = c.validate().expect_err("the admin port");
    assert_eq!(e.setting(), Some("metrics.listen"), "{e}");
}
