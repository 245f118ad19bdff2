//! Writing a rendered file atomically: a temporary file in the same directory (created new,
//! mode 0600 while written), the content, the group and the mode, fsync, then a rename over the
//! old file and an fsync of the directory. A reader sees the old content or the new, never a
//! part; a failure leaves the old file as it was and no temporary file behind.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `content` to `dir/name` atomically, with `mode` and (when set) group `group`.
/// `name` must be a plain file name ([`keyward_config::valid_file_name`]).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<PathBuf> {
    if !keyward_config::valid_file_name(name) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    let target = dir.join(name);
    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let tmp = dir.join(format!(".{name}.{}.tmp", hex(&suffix)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(content)?;
        if let Some(g) = group {
            // The owner may give its file any group it is a member of: no CAP_CHOWN needed.
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                None,
                Some(nix::unistd::Gid::from_raw(g)),
            )
            .map_err(std::io::Error::from)?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_write_replaces_the_file_with_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "dsn", b"one", 0o440, None).expect("write");
        let path = write_atomic(dir.path(), "dsn", b"two", 0o400, None).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o400
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dsn")]);
    }

    #[test]
    fn a_name_that_leaves_the_directory_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "/etc/x", "a/b", "..", "", "a\0b"] {
            let e = write_atomic(dir.path(), bad, b"x", 0o440, None).expect_err(bad);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        assert!(!dir.path().parent().expect("parent").join("x").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "dsn", b"old", 0o440, None).expect("write");
        // A directory where the file should go: the rename fails after the content is written.
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/x"), b"").expect("fill");
        write_atomic(dir.path(), "sub", b"new", 0o440, None).expect_err("rename onto a directory");
        assert_eq!(std::fs::read(dir.path().join("dsn")).expect("read"), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
