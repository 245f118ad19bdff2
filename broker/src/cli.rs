//! `keyward broker` and `keyward probe`.
use std::process::ExitCode;

/// Arguments of `keyward broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {}

/// Arguments of `keyward probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {}

/// Runs `keyward broker`.
pub fn run_broker(_args: BrokerArgs) -> ExitCode {
    ExitCode::FAILURE
}

/// Runs `keyward probe`.
pub fn run_probe(_args: ProbeArgs) -> ExitCode {
    ExitCode::FAILURE
}
