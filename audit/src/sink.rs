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

/// The local log as size-bounded segments: the active file at the configured path
/// (`audit.log`) and up to `segments - 1` older ones beside it (`audit.log.000001`,
/// `audit.log.000002`, ... numbered in the order they were closed). Before a line would take
/// the active file over `segment_bytes`, the file is closed under the next number, the oldest
/// segments beyond the count are removed, and a new active file is begun; so the files never
/// hold more than `segments * segment_bytes` (a single line longer than a segment is still
/// written, alone in its segment). The chain runs on across segments: rotation only moves lines.
pub struct SegmentedFile {
    active: FileSink,
    fsync: bool,
    segment_bytes: u64,
    segments: u32,
    /// Rotation only applies to a regular file (not `/dev/full`, a FIFO...).
    rotates: bool,
}

impl SegmentedFile {
    /// Opens (or creates) the active segment at `path`; `segments` counts it too (at least 1).
    pub fn open(
        path: &Path,
        fsync: bool,
        segment_bytes: u64,
        segments: u32,
    ) -> std::io::Result<Self> {
        let active = FileSink::open(path, fsync)?;
        let rotates = std::fs::metadata(path)?.file_type().is_file();
        Ok(Self {
            active,
            fsync,
            segment_bytes: segment_bytes.max(1),
            segments: segments.max(1),
            rotates,
        })
    }

    /// The closed segments beside the active one, oldest first, with their numbers.
    pub fn closed_segments(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(Vec::new());
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let Some(number) = file_name.strip_prefix(&prefix) else {
                continue;
            };
            if number.len() == 6 && number.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = number.parse::<u64>() {
                    out.push((n, entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every file of the log, oldest first, the active one last.
    pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = Self::closed_segments(path)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        files.push(path.to_owned());
        Ok(files)
    }

    /// Closes the active segment under the next number, removes the oldest beyond the count,
    /// and begins a new active segment.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = self.active.path.clone();
        let closed = Self::closed_segments(&path)?;
        let next = closed.last().map_or(1, |(n, _)| n + 1);
        let name = format!(
            "{}.{next:06}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        // A rotation that failed after the rename left no active file: begin one.
        if path.exists() {
            std::fs::rename(&path, path.with_file_name(name))?;
        }
        let keep = (self.segments - 1) as usize;
        let mut closed: Vec<PathBuf> = closed.into_iter().map(|(_, p)| p).collect();
        // The one just closed counts among the kept.
        let excess = (closed.len() + 1).saturating_sub(keep);
        for old in closed.drain(..excess.min(closed.len())) {
            std::fs::remove_file(old)?;
        }
        if keep == 0 {
            // One segment in all: the closed one goes too.
            let _ = std::fs::remove_file(path.with_file_name(format!(
                "{}.{next:06}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
        self.active = FileSink::open(&path, self.fsync)?;
        Ok(())
    }
}

impl RecordSink for SegmentedFile {
    fn location(&self) -> &Path {
        &self.active.path
    }

    /// The last line of the active segment or, when it is empty, of the newest closed one.
    fn last_line(&mut self) -> std::io::Result<Option<String>> {
        if let Some(line) = self.active.last_line()? {
            return Ok(Some(line));
        }
        if !self.rotates {
            return Ok(None);
        }
        match Self::closed_segments(&self.active.path)?.pop() {
            Some((_, newest)) => FileSink::open(&newest, false)?.last_line(),
            None => Ok(None),
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.rotates
            && self.active.len > 0
            && self.active.len + line.len() as u64 > self.segment_bytes
        {
            self.rotate()?;
        }
        self.active.append(line)
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
