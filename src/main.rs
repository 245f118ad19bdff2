//! The `keyward` binary: parses the command line, sets up logging and the panic hook
//! (`keyward-telemetry`) and hands over to the crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// keyward: the secrets and identity sidecar for Kubernetes, and its injector.
#[derive(Parser)]
#[command(name = "keyward", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the secrets broker: Vault login, secret cache, local socket API.
    Broker(keyward_broker::cli::BrokerArgs),
    /// Run the broker and the mTLS proxy in one process (what the injector starts).
    Sidecar(keyward_sidecar::cli::SidecarArgs),
    /// Check the broker's readiness over its socket (used as the startupProbe).
    Probe(keyward_broker::cli::ProbeArgs),
    /// Verify or query a hash-chained audit log.
    Audit(keyward_audit::cli::AuditArgs),
    /// Run the mutating admission webhook.
    Injector(keyward_injector::cli::InjectorArgs),
    /// Apply the injector's mutation offline to a YAML stream.
    Inject(keyward_injector::cli::InjectArgs),
    /// Run an app with secrets from the broker socket in its environment, as its parent
    /// (signals forwarded, children reaped, its exit code), reloading or restarting it on change.
    Exec(keyward_exec::ExecArgs),
    /// Copy this binary to a path (the injected init container that gives app containers
    /// `keyward exec`).
    Install(keyward_injector::install::InstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyward_telemetry::init();
    match cli.command {
        Command::Audit(args) => keyward_audit::cli::run(args),
        Command::Inject(args) => keyward_injector::cli::run_inject(args),
        Command::Probe(args) => keyward_broker::cli::run_probe(args),
        Command::Broker(args) => keyward_broker::cli::run_broker(args),
        Command::Sidecar(args) => keyward_sidecar::cli::run_sidecar(args),
        Command::Injector(args) => keyward_injector::cli::run_injector(args),
        Command::Exec(args) => keyward_exec::run(args),
        Command::Install(args) => keyward_injector::install::run(args),
    }
}
