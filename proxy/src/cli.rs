//! `keyward sidecar`.
use std::process::ExitCode;

/// Arguments of `keyward sidecar`.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {}

/// Runs `keyward sidecar`.
pub fn run_sidecar(_args: SidecarArgs) -> ExitCode {
    eprintln!("keyward sidecar: not built yet");
    ExitCode::FAILURE
}
