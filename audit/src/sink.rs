//! Where audit lines go. The log of record is a [`RecordSink`]: a line counts as recorded only
//! once it is there, and a failure there refuses the access the line is about. Further
//! [`AuditSink`]s get a copy of every recorded line, best effort (a collector that cannot keep
//! up never blocks or refuses an access). A new kind of destination is a new type here and one
//! line where [`crate::AuditLog::open`] builds its sinks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A destination that receives a copy of each recorded line.
pub trait AuditSink: Send {
    /// A short name for logs and metrics (`stdout`, ...).
    fn kind(&self) -> &'static str;
    /// Writes one whole line (ending in `\n`).
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()>;
}

/// The log of record: appends whole lines or nothing, and tells where the chain left off.
pub trait RecordSink: Send {
    /// Where the log is, for messages.
    fn location(&self) -> &Path;
    /// The last line already in the log, to continue its chain after a restart.
    fn last_line(&mut self) -> std::io::Result<Option<String>>;
    /// Appends one whole line. On error the log holds no part of it.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()>;
}

/// The local file of record, opened for append with mode 0600.
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Bytes of whole records in the file: a failed write is cut back to this length.
    len: u64,
    fsync: bool,
}

impl FileSink {
    /// Opens (or creates, with its parent directories) the file.
    pub fn open(path: &Path, fsync: bool) -> std::io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            fsync,
        })
    }
}

impl RecordSink for FileSink {
    fn location(&self) -> &Path {
        &self.path
    }

    /// The last non-empty line of the file (read from at most the final 64 KiB).
    fn last_line(&mut self) -> std::io::Result<Option<String>> {
        let len = self.file.seek(SeekFrom::End(0))?;
        if len == 0 {
            return Ok(None);
        }
        let start = len.saturating_sub(64 * 1024);
        self.file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        Ok(text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned))
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let written = self.file.write_all(line).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // A partial line would break the chain for every later record: cut it off.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// A copy of every line on the process's stdout, for the cluster's log pipeline.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl AuditSink for StdoutSink {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(line)?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_append_leaves_no_partial_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let mut sink = FileSink::open(&path, false).expect("open");
        sink.append(b"{\"seq\":1}\n").expect("first line");
        // A read-only descriptor in place of the file makes the next write fail.
        sink.file = File::open(&path).expect("read-only");
        assert!(sink.append(b"{\"seq\":2}\n").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"seq\":1}\n");
        assert_eq!(
            sink.last_line().expect("tail").as_deref(),
            Some("{\"seq\":1}")
        );
    }
}
