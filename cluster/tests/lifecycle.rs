//! The test cluster starts, answers kubectl, and leaves nothing behind when stopped — also when
//! the test that owns it dies without stopping it. A missing binary fails naming the install
//! command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward_test_cluster::{Cluster, Options, COMPONENTS, INSTALL, KUBE_VERSION};

fn start(opts: Options) -> Cluster {
    Cluster::start_with(opts).unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; /proc/PID/stat's third field is the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn assert_gone(what: &str, dir: &Path, pids: &[(String, u32)], ports: &[u16]) {
    for (name, pid) in pids {
        assert!(!alive(*pid), "{what}: {name} (pid {pid}) still runs");
    }
    for port in ports {
        assert!(port_free(*port), "{what}: port {port} is still bound");
    }
    assert!(!dir.exists(), "{what}: {} still exists", dir.display());
}

#[test]
fn cluster_serves_kubectl_and_stop_leaves_no_process_port_or_directory() {
    let cluster = start(Options::default());
    let version: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl(&["get", "--raw", "/version"])
            .expect("GET /version"),
    )
    .expect("/version is JSON");
    assert_eq!(version["gitVersion"], KUBE_VERSION, "{version}");
    // Every component is running and listening where the state file says.
    let pids = cluster.pids();
    let ports = cluster.ports();
    assert_eq!(pids.len(), COMPONENTS.len(), "pids: {pids:?}");
    assert_eq!(ports.len(), 5, "ports: {ports:?}");
    for port in &ports {
        assert!(!port_free(*port), "port {port} is not listening");
    }
    let nodes = cluster.get_json(&["nodes"]).expect("kubectl get nodes");
    assert_eq!(nodes["items"], serde_json::json!([]), "no node agent yet");
    let dir = cluster.dir().to_path_buf();
    cluster.stop().expect("scripts/cluster.sh down");
    assert_gone("after stop", &dir, &pids, &ports);
}

#[test]
fn cluster_stops_by_itself_when_its_owner_exits() {
    // The owner stands in for a test process killed before its cleanup ran.
    let mut owner = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let cluster = start(Options {
        owner: owner.id(),
        ..Options::default()
    });
    let pids = cluster.pids();
    let ports = cluster.ports();
    let dir = cluster.dir().to_path_buf();
    assert_eq!(pids.len(), COMPONENTS.len(), "pids: {pids:?}");
    // Forget the guard: only the owner's exit may stop the cluster now.
    std::mem::forget(cluster);
    owner.kill().expect("kill owner");
    owner.wait().expect("reap owner");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (pids.iter().any(|(_, p)| alive(*p)) || dir.exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_gone("after the owner exited", &dir, &pids, &ports);
}

#[test]
fn missing_binaries_fail_naming_the_install_command() {
    let err = Cluster::start_with(Options {
        bin_dir: PathBuf::from("/nonexistent/kube/bin"),
        ..Options::default()
    })
    .expect_err("no binaries, no cluster");
    let msg = err.to_string();
    assert!(msg.contains(INSTALL), "{msg}");
    assert!(msg.contains("/nonexistent/kube/bin/etcd"), "{msg}");
    // The script says the same to a person running it by hand.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(keyward_test_cluster::script())
        .arg("up")
        .arg(dir.path().join("c"))
        .env("KEYWARD_KUBE_BIN", "/nonexistent/kube/bin")
        .output()
        .expect("run scripts/cluster.sh");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(INSTALL), "{stderr}");
    assert!(
        !dir.path().join("c").exists(),
        "a failed check creates nothing"
    );
}

#[test]
fn a_port_taken_before_the_api_server_binds_it_is_retried_on_new_ports() {
    // The API server's port is taken by someone else between the pick and the bind.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let api = taken.local_addr().expect("addr").port();
    let free = |n: usize| -> Vec<u16> {
        let ls: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind"))
            .collect();
        ls.iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect()
    };
    let p = free(4);
    let cluster = start(Options {
        first_ports: Some([p[0], p[1], api, p[2], p[3]]),
        ..Options::default()
    });
    let ports = cluster.ports();
    assert!(
        !ports.contains(&api),
        "the cluster runs on fresh ports: {ports:?}"
    );
    cluster
        .kubectl(&["get", "namespaces"])
        .expect("the retried cluster answers");
    drop(taken);
}
