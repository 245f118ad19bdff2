//! Reads another process's memory the way an attacker with root on the node would: every
//! readable mapping in `/proc/PID/maps`, through `/proc/PID/mem`. A process that made itself
//! non-dumpable is still readable by root with CAP_SYS_PTRACE (which the tests run with);
//! [`scan`] fails loudly rather than report zero copies from memory it could not read.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where one needle was found.
#[derive(Debug, Clone)]
pub struct Hit {
    pub address: u64,
    /// The mapping's name: a file, `[heap]`, `[stack]`, or empty for anonymous memory.
    pub mapping: String,
}

/// The result of one scan.
#[derive(Debug)]
pub struct Scan {
    /// For each needle, in the order given, every place it occurs.
    pub hits: Vec<Vec<Hit>>,
    /// Bytes read (to show the scan covered the process's memory).
    pub bytes_read: u64,
}

impl Scan {
    pub fn count(&self, needle: usize) -> usize {
        self.hits[needle].len()
    }
}

/// Counts every occurrence of each needle in the readable memory of `pid`. File-backed
/// mappings of libraries and the executable are included (a needle made at run time is never
/// in them). Panics if `/proc/PID/mem` cannot be opened or no private writable memory
/// (heap, anonymous mappings) could be read.
pub fn scan(pid: u32, needles: &[&[u8]]) -> Scan {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"));
    let mem = File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("open /proc/{pid}/mem (root with CAP_SYS_PTRACE?): {e}"));
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(1).max(1);
    let mut hits = vec![Vec::new(); needles.len()];
    let mut bytes_read = 0u64;
    let mut writable_read = 0u64;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize + longest];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mapping = fields.nth(3).unwrap_or("").to_owned();
        if !perms.starts_with('r') || mapping == "[vvar]" || mapping == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut at = start;
        while at < end {
            // Overlap by the longest needle so nothing straddling two reads is missed.
            let want = ((end - at).min(CHUNK + longest as u64)) as usize;
            let n = match mem.read_at(&mut buf[..want], at) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            bytes_read += n as u64;
            if perms.as_bytes().get(1) == Some(&b'w') {
                writable_read += n as u64;
            }
            let window = &buf[..n];
            let fresh = (n as u64).min(CHUNK) as usize;
            for (i, needle) in needles.iter().enumerate() {
                if needle.is_empty() || window.len() < needle.len() {
                    continue;
                }
                for pos in 0..=(window.len() - needle.len()) {
                    // Hits starting in the overlap are counted by the next read.
                    if pos >= fresh {
                        break;
                    }
                    if window[pos] == needle[0] && &window[pos..pos + needle.len()] == *needle {
                        hits[i].push(Hit {
                            address: at + pos as u64,
                            mapping: mapping.clone(),
                        });
                    }
                }
            }
            at += CHUNK;
        }
    }
    assert!(
        writable_read > 0,
        "read no writable memory of pid {pid}: the scan would prove nothing"
    );
    Scan { hits, bytes_read }
}

/// `len` bytes of `pid`'s memory from `address` (fewer where the mapping ends).
pub fn read(pid: u32, address: u64, len: usize) -> Vec<u8> {
    let Ok(mem) = File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; len];
    let n = mem.read_at(&mut buf, address).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The bytes as text, anything but printable ASCII shown as '.'.
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                *b as char
            } else {
                '.'
            }
        })
        .collect()
}
