//! `keyward broker` and `keyward probe`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, ProcessEnv};
use crate::Broker;

/// Arguments of `keyward broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Config file (YAML). Without it, `KEYWARD_CONFIG_FILE` or the inline `KEYWARD_CONFIG`;
    /// single settings are overridden by `KEYWARD_*` variables (see docs/configuration.md).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Arguments of `keyward probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The broker's socket.
    #[arg(
        long,
        env = "KEYWARD_SOCKET",
        default_value = "/run/keyward/broker.sock"
    )]
    pub socket: PathBuf,
    /// Give up on one attempt after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Keep trying (every 250 ms) until ready or this long has passed; 0 tries once. For hooks
    /// that must block until the broker is ready (the injector's legacy mode).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// Loads and validates the configuration, or prints one line naming the problem.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path, &ProcessEnv).map_err(|e| {
        eprintln!("keyward: {e}");
        ExitCode::from(2)
    })
}

/// A multi-threaded runtime sized for a sidecar.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("keyward: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("Cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; shutting down"),
            _ = int.recv() => info!("SIGINT received; shutting down"),
        }
        t.cancel();
    });
    token
}

/// Runs `keyward broker`.
pub fn run_broker(args: BrokerArgs) -> ExitCode {
    if let Err(e) = crate::harden_process() {
        eprintln!("keyward: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let broker = match Broker::new(config) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("keyward: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = shutdown_on_signal();
        info!(
            socket = %broker.config().socket.path.display(),
            secrets = broker.config().secrets.len(),
            "Broker starting"
        );
        match broker.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keyward: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs `keyward probe`: exit 0 when the broker answers ready, 1 with the reason otherwise.
pub fn run_probe(args: ProbeArgs) -> ExitCode {
    let deadline = std::time::Instant::now() + args.wait;
    loop {
        match probe(&args.socket, args.timeout) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(reason) if std::time::Instant::now() >= deadline => {
                eprintln!("keyward probe: not ready: {reason}");
                return ExitCode::FAILURE;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn probe(socket: &std::path::Path, timeout: Duration) -> Result<(), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /v1/health/ready HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") {
        return Ok(());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    Err(if body.is_empty() {
        text.lines().next().unwrap_or("no answer").to_owned()
    } else {
        body.to_owned()
    })
}
