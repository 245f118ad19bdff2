//! Hosts on one machine: a network namespace per pod (and one for the "node" that runs
//! OpenBao and PostgreSQL), each with a veth to a bridge that lives in a namespace of its own.
//! Every address is a private one inside namespaces created here; nothing is added to the root
//! namespace. Everything is deleted when the [`Network`] is dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{run, Error, Result};

/// The subnet every host gets an address in (only ever inside our namespaces).
pub const SUBNET: [u8; 3] = [10, 200, 0];

/// One host: a network namespace and its address, or the root namespace's loopback.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Network namespace (under /run/netns); None in loopback mode.
    pub netns: Option<String>,
    pub ip: Ipv4Addr,
}

impl Host {
    /// `nsenter --net=...` arguments that put a command in this host's network namespace.
    pub fn nsenter_args(&self) -> Vec<String> {
        match &self.netns {
            Some(ns) => vec![
                "nsenter".into(),
                format!("--net=/run/netns/{ns}"),
                "--".into(),
            ],
            None => Vec::new(),
        }
    }

    /// Connects to `addr` from inside this host's namespace (the socket stays there).
    pub async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let ns = self.netns.clone();
        let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
            if let Some(ns) = ns {
                // A fresh thread: entering the namespace affects only it, and it ends here.
                std::thread::spawn(move || {
                    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                })
                .join()
                .map_err(|_| std::io::Error::other("connect thread panicked"))?
            } else {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            }
        })
        .await
        .map_err(|e| Error::Setup(format!("connect task: {e}")))?
        .map_err(Error::io(format!("connecting to {addr} in {}", self.name)))?;
        std.set_nonblocking(true)
            .map_err(Error::io("set_nonblocking"))?;
        tokio::net::TcpStream::from_std(std).map_err(Error::io("tokio stream"))
    }
}

/// Whether hosts get their own network namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// `ip netns` + veths to a bridge in a namespace of its own.
    Namespaces,
    /// Everything on the root namespace's loopback (no `ip`, or namespaces not permitted).
    Loopback,
}

/// The namespaces and links of one run.
pub struct Network {
    pub mode: NetMode,
    prefix: String,
    bridge_ns: Option<String>,
    hosts: Vec<Host>,
    /// Address index of the next host (2, 3, ...); addresses of removed hosts are not reused.
    next: usize,
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

impl Network {
    /// Creates the bridge namespace, or falls back to loopback (saying so loudly) where
    /// namespaces are not available.
    pub fn create() -> Result<Network> {
        reap_stale();
        // Several networks in one process (the shop's node host and a node agent's) get
        // distinct namespace names; every name still starts `kw{pid}-`.
        static NETWORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = if nth == 0 {
            format!("kw{}", std::process::id())
        } else {
            format!("kw{}-n{nth}", std::process::id())
        };
        let root = nix::unistd::Uid::effective().is_root();
        let has_ip = Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if root && has_ip {
            let br = format!("{prefix}-br");
            match ip(&["netns", "add", &br]) {
                Ok(_) => {
                    let net = Network {
                        mode: NetMode::Namespaces,
                        prefix,
                        bridge_ns: Some(br.clone()),
                        hosts: Vec::new(),
                        next: 2,
                    };
                    ip(&["-n", &br, "link", "set", "lo", "up"])?;
                    ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
                    ip(&["-n", &br, "link", "set", "br0", "up"])?;
                    return Ok(net);
                }
                Err(e) => loud(&format!("cannot create network namespaces ({e})")),
            }
        } else if !root {
            loud("not running as root: no network namespaces")
        } else {
            loud("`ip` (iproute2) not found: no network namespaces (scripts/deps.sh core installs it)")
        }
        Ok(Network {
            mode: NetMode::Loopback,
            prefix,
            bridge_ns: None,
            hosts: Vec::new(),
            next: 2,
        })
    }

    /// Adds a host named `name` with the next free address.
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        let index = self.next;
        if index > 250 {
            return Err(Error::Setup("more than 249 hosts".into()));
        }
        self.next += 1;
        let host = match (&self.mode, &self.bridge_ns) {
            (NetMode::Namespaces, Some(br)) => {
                let ns = format!("{}-{}", self.prefix, index);
                ip(&["netns", "add", &ns])?;
                let host = Host {
                    name: name.to_owned(),
                    netns: Some(ns.clone()),
                    ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index as u8),
                };
                self.hosts.push(host.clone());
                let port = format!("v{index}");
                ip(&[
                    "-n", br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", br, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", br, "link", "set", &port, "up"])?;
                let cidr = format!("{}/24", host.ip);
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                host
            }
            _ => {
                let host = Host {
                    name: name.to_owned(),
                    netns: None,
                    ip: Ipv4Addr::LOCALHOST,
                };
                self.hosts.push(host.clone());
                host
            }
        };
        Ok(host)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Removes a host: kills what still runs in its namespace and deletes the namespace (a
    /// deleted pod's sandbox). Its address is not reused by this network.
    pub fn remove_host(&mut self, name: &str) {
        if let Some(i) = self.hosts.iter().position(|h| h.name == name) {
            let h = self.hosts.remove(i);
            if let Some(ns) = &h.netns {
                delete_netns(ns);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for h in self.hosts.iter().rev() {
            if let Some(ns) = &h.netns {
                delete_netns(ns);
            }
        }
        if let Some(br) = &self.bridge_ns {
            delete_netns(br);
        }
    }
}

/// Kills what still runs in a namespace, then deletes it (its veth ends go with it).
fn delete_netns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Network namespaces this process created that still exist: empty after a clean teardown.
pub fn own_namespaces() -> Vec<String> {
    let prefix = format!("kw{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespaces left by runs whose process no longer exists (killed with SIGKILL).
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kw") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            delete_netns(&name);
        }
    }
}

pub(crate) fn loud(msg: &str) {
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! podrun: {msg}.\n\
         !! FALLING BACK TO LOOPBACK: every pod shares the root namespace's 127.0.0.1, so pods\n\
         !! that listen on the same port collide and network isolation is NOT tested.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// A TCP forwarder on the root namespace's 127.0.0.1 to `target` inside `host`: how the test
/// and the demo (in the root namespace) reach OpenBao and PostgreSQL without ever sending
/// traffic to a private address from the root namespace. Stops when dropped.
pub struct Forward {
    pub local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    pub async fn start(host: Host, target: SocketAddr) -> Result<Forward> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("binding a forwarder on 127.0.0.1"))?;
        let local = listener
            .local_addr()
            .map_err(Error::io("forwarder address"))?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let host = host.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = host.connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Forward { local, task })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The other direction: a TCP listener inside `host`'s network namespace (on its address and
/// `port`) whose connections are forwarded to `target` on the root namespace's loopback. How
/// pods reach a server a test runs on 127.0.0.1 (OpenBao from tests/support) under a name
/// that resolves to the node host; the root namespace only ever connects to loopback. Stops
/// when dropped.
pub struct Expose {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Expose {
    pub async fn start(host: &Host, port: u16, target: SocketAddr) -> Result<Expose> {
        if !target.ip().is_loopback() {
            return Err(Error::Setup(format!(
                "Expose forwards to loopback only, not {target}"
            )));
        }
        let addr = SocketAddr::new(host.ip.into(), port);
        let ns = host.netns.clone();
        let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpListener> {
            // A fresh thread: entering the namespace affects only it; the socket stays there.
            std::thread::spawn(move || {
                if let Some(ns) = ns {
                    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                std::net::TcpListener::bind(addr)
            })
            .join()
            .map_err(|_| std::io::Error::other("bind thread panicked"))?
        })
        .await
        .map_err(|e| Error::Setup(format!("bind task: {e}")))?
        .map_err(Error::io(format!("binding {addr} in {}", host.name)))?;
        std.set_nonblocking(true)
            .map_err(Error::io("set_nonblocking"))?;
        let listener =
            tokio::net::TcpListener::from_std(std).map_err(Error::io("tokio listener"))?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Expose { addr, task })
    }
}

impl Drop for Expose {
    fn drop(&mut self) {
        self.task.abort();
    }
}
