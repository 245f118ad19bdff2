//! `keyward-oci`: assembles keyward's OCI image layout (scripts/release.sh calls it).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keyward-oci", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the OCI image layout; prints the image manifest's digest.
    Build {
        #[arg(long)]
        binary: PathBuf,
        /// Directory of PEM `*.crt` files for the CA bundle.
        #[arg(long, default_value = "/usr/share/ca-certificates/mozilla")]
        ca_dir: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        revision: String,
        #[arg(long)]
        source: String,
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: i64,
        /// Normalized CycloneDX SBOM to attach as an artifact referring to the image.
        #[arg(long)]
        sbom: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a cargo-cyclonedx SBOM reproducible (timestamp, serial number, paths).
    NormalizeSbom {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: i64,
        /// A path prefix to replace by /build (repeatable).
        #[arg(long)]
        strip: Vec<String>,
    },
    /// Read the dependency list cargo-auditable embedded (a `.dep-v0` section dumped by
    /// `objcopy --dump-section .dep-v0=FILE`): prints `name version` per package.
    AuditInfo {
        #[arg(long)]
        section: PathBuf,
    },
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Build {
            binary,
            ca_dir,
            version,
            revision,
            source,
            source_date_epoch,
            sbom,
            out,
        } => {
            let inputs = keyward_oci::Inputs {
                binary,
                ca_dir,
                version,
                revision,
                source,
                source_date_epoch,
                sbom,
            };
            let built = keyward_oci::build_layout(&inputs, &out)?;
            println!("{}", built.manifest_digest);
        }
        Command::NormalizeSbom {
            input,
            output,
            source_date_epoch,
            strip,
        } => {
            let bytes = keyward_oci::normalize_sbom(&input, source_date_epoch, &strip)?;
            std::fs::write(&output, bytes).with_context(|| format!("{}", output.display()))?;
        }
        Command::AuditInfo { section } => {
            let compressed =
                std::fs::read(&section).with_context(|| format!("{}", section.display()))?;
            let mut text = String::new();
            flate2::read::ZlibDecoder::new(&compressed[..])
                .read_to_string(&mut text)
                .with_context(|| format!("{}: not zlib-compressed JSON", section.display()))?;
            let doc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", section.display()))?;
            let packages = doc
                .get("packages")
                .and_then(serde_json::Value::as_array)
                .context("no `packages` array in the audit data")?;
            if packages.is_empty() {
                bail!("the audit data lists no packages");
            }
            for p in packages {
                println!(
                    "{} {}",
                    p.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
                    p.get("version").and_then(|v| v.as_str()).unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward-oci: {e:#}");
            ExitCode::FAILURE
        }
    }
}
