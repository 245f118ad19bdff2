//! `keyward sidecar`.
use std::path::PathBuf;
use std::process::ExitCode;

use tracing::info;

/// Arguments of `keyward sidecar`.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// Config file (YAML) with the broker's settings plus `identity` and `proxy`. Without it,
    /// `KEYWARD_CONFIG_FILE` or the inline `KEYWARD_CONFIG` (see docs/proxy.md).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Runs `keyward sidecar`: exit 0 after a clean drain, 2 on an invalid configuration, 1 on
/// any other failure.
pub fn run_sidecar(args: SidecarArgs) -> ExitCode {
    if let Err(e) = keyward_broker::harden_process() {
        eprintln!("keyward: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let config = match keyward_broker::cli::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Check the identity and proxy sections before starting anything.
    let workers = match crate::validate(&config) {
        Ok((_, proxy)) => proxy.worker_threads.unwrap_or(2),
        Err(e) => {
            eprintln!("keyward: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyward: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = keyward_broker::cli::shutdown_on_signal();
        info!("Sidecar starting");
        match crate::run(config, shutdown).await {
            Ok(()) => {
                info!("Sidecar stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyward: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
