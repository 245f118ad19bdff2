//! `keyward install --to PATH`: what the injected `keyward-install` init container runs. It
//! copies the running binary to PATH (in the `keyward-bin` volume), so app containers can run
//! `keyward exec` without the binary in their image. The keyward image has no shell and no
//! `cp`; the binary copies itself.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `keyward install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where to put the binary (replaced atomically; mode 0555).
    #[arg(long)]
    pub to: PathBuf,
}

/// Copies the running executable to `args.to`.
pub fn run(args: InstallArgs) -> ExitCode {
    match std::env::current_exe().and_then(|exe| install(&exe, &args.to)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward install: {}: {e}", args.to.display());
            ExitCode::FAILURE
        }
    }
}

/// Copies `from` to `to` through a temporary file in the same directory, fsynced, mode 0555,
/// then renamed: `to` is never a partial binary.
pub fn install(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let name = to
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::File::create(&tmp)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.flush()?;
    dst.set_permissions(std::fs::Permissions::from_mode(0o555))?;
    dst.sync_all()?;
    drop(dst);
    std::fs::rename(&tmp, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_the_file_executable_and_replaces_an_old_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("src");
        std::fs::write(&from, b"binary v2").expect("write");
        let to = dir.path().join("keyward");
        std::fs::write(&to, b"v1").expect("write");
        install(&from, &to).expect("install");
        assert_eq!(std::fs::read(&to).expect("read"), b"binary v2");
        let mode = std::fs::metadata(&to).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 2, "no temporary file left");
    }
}
