//! Delivery beyond the socket: files rendered from secrets into containers' in-memory volumes
//! (the config's `files` section; docs/delivery.md "Files").
//!
//! One task per file ([`file_loop`]) waits on the version channels of the secrets the file
//! reads (the same ones long-polls wait on; a lease renewal wakes them too), renders
//! ([`render`], pure) when a version moved or a renewal changed the content,
//! writes atomically ([`write`]) and records a `file.render` audit record naming the file, the
//! container, and each secret with the version used. A render that fails leaves the previous
//! file in place and is recorded as an error.

mod identity;
pub mod render;
pub mod write;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use keyward_audit::{Decision, Record};
use keyward_config::FileSpec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::Entry;
use crate::Inner;
use render::SecretView;

/// `Err` naming the first file not rendered yet whose secrets are all required: the app must
/// not start before its files are there (the sidecar's readiness gates the app's start). A file
/// that reads an optional secret does not hold readiness, as the secret does not.
pub(crate) fn readiness(config: &crate::config::Config) -> Result<(), String> {
    for f in &config.files {
        let names = f.secrets(&config.secrets);
        let required = names
            .iter()
            .all(|n| config.secret(n).is_some_and(|s| s.required));
        if required && !f.dir.join(&f.path).exists() {
            return Err(format!(
                "file {} for container {} not rendered yet (see the file.render audit records)",
                f.name, f.container
            ));
        }
    }
    Ok(())
}

/// Renders `spec` whenever a secret it reads gets a new version or its lease is renewed, until
/// `shutdown`.
///
/// A new version is always rendered and recorded. A renewal (same versions, a new
/// `lease_expires`) renders again, and writes and records only when the content changed (a
/// template that shows the lease's expiry): an unchanged file is not rewritten.
pub(crate) async fn file_loop(inner: Arc<Inner>, spec: FileSpec, shutdown: CancellationToken) {
    if let Some(part) = spec.identity {
        return identity::identity_loop(inner, spec, part, shutdown).await;
    }
    let entries: Vec<Arc<Entry>> = spec
        .secrets(&inner.config.secrets)
        .iter()
        .filter_map(|n| inner.entries.get(n).cloned())
        .collect();
    let mut receivers: Vec<_> = entries.iter().map(|e| e.subscribe()).collect();
    let file_id = spec.dir.join(&spec.path).display().to_string();
    for e in &entries {
        e.file_reads(&file_id);
    }
    let mut rendered: Option<Rendered> = None;
    loop {
        for r in receivers.iter_mut() {
            r.borrow_and_update();
        }
        if let Some(views) = views(&inner, &entries) {
            let seen = Seen::of(&entries, &views);
            match &rendered {
                Some(r) if r.seen == seen => {}
                Some(r) if r.seen.versions == seen.versions => {
                    // Only a lease moved: rewrite if the content changed.
                    let digest = render::render(&spec, &views)
                        .ok()
                        .map(|bytes| content_digest(&inner, &bytes));
                    if digest.is_some() && digest != r.digest {
                        let digest = render_once(&inner, &spec, &views);
                        rendered = Some(Rendered { seen, digest });
                    } else if let Some(r) = rendered.as_mut() {
                        r.seen = seen;
                    }
                }
                _ => {
                    // A failed render is not retried until a version moves: the same values
                    // would fail the same way.
                    let digest = render_once(&inner, &spec, &views);
                    rendered = Some(Rendered { seen, digest });
                }
            }
            // Long-polls of these versions may answer now (`Entry::files_settled`).
            for e in &entries {
                if let Some(v) = views.get(&e.spec.name) {
                    e.file_rendered(&file_id, v.version);
                }
            }
        }
        let changed = futures_changed(&mut receivers);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = changed => if !ok { return },
        }
    }
}

/// What a file was last rendered from: each secret's version and lease expiry.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    versions: Vec<u64>,
    lease_expires: Vec<Option<String>>,
}

impl Seen {
    fn of(entries: &[Arc<Entry>], views: &BTreeMap<String, SecretView>) -> Self {
        let view = |e: &Arc<Entry>| views.get(&e.spec.name);
        Self {
            versions: entries
                .iter()
                .map(|e| view(e).map_or(0, |v| v.version))
                .collect(),
            lease_expires: entries
                .iter()
                .map(|e| view(e).and_then(|v| v.lease_expires.clone()))
                .collect(),
        }
    }
}

/// The last render: what it was made from, and the keyed digest of what was written (`None`
/// when it failed).
struct Rendered {
    seen: Seen,
    digest: Option<String>,
}

/// A keyed digest of rendered content (the broker's per-process key): tells a changed file
/// without keeping its content.
fn content_digest(inner: &Inner, bytes: &[u8]) -> String {
    keyward_audit::hmac_hex(&inner.digest_key, &String::from_utf8_lossy(bytes))
}

/// Waits until any receiver sees a new value; `false` once a sender is gone (shutdown).
async fn futures_changed(receivers: &mut [tokio::sync::watch::Receiver<u64>]) -> bool {
    if receivers.is_empty() {
        std::future::pending::<()>().await;
    }
    let mut waits: Vec<_> = receivers
        .iter_mut()
        .map(|r| Box::pin(r.changed()))
        .collect();
    std::future::poll_fn(move |cx| {
        for w in waits.iter_mut() {
            if let std::task::Poll::Ready(result) = w.as_mut().poll(cx) {
                return std::task::Poll::Ready(result.is_ok());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The current values of `entries`, opened; `None` while one has none yet or has expired.
fn views(inner: &Inner, entries: &[Arc<Entry>]) -> Option<BTreeMap<String, SecretView>> {
    let now = SystemTime::now();
    let mut out = BTreeMap::new();
    for e in entries {
        let cached = e.value().filter(|c| !c.expired(now))?;
        let mut data = serde_json::Map::new();
        for (k, sealed) in &cached.fields {
            let plain = inner.sealer.open(sealed).ok()?;
            data.insert(k.clone(), open_field(&plain)?);
        }
        let lease_expires = cached.lease.as_ref().and_then(|l| {
            time::OffsetDateTime::from(l.expires_at)
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        out.insert(
            e.spec.name.clone(),
            SecretView {
                data,
                version: cached.version,
                lease_expires,
            },
        );
    }
    Some(out)
}

/// One opened field of a sealed value (its JSON text) as a JSON value. A string (a PEM key has
/// `\n` escapes) is decoded here into one allocation of its final size: serde_json would decode
/// it through a scratch buffer that grows and is freed unwiped, a copy of the key left behind.
fn open_field(plain: &[u8]) -> Option<serde_json::Value> {
    if plain.first() == Some(&b'"') {
        return json_string(plain).map(serde_json::Value::String);
    }
    serde_json::from_slice(plain).ok()
}

/// The JSON string literal `plain` (quotes included) decoded; `None` if it is not one. Nothing
/// is reallocated (the text is never shorter than what it decodes to) and a partial result is
/// wiped.
fn json_string(plain: &[u8]) -> Option<String> {
    let inner = std::str::from_utf8(plain)
        .ok()?
        .strip_prefix('"')?
        .strip_suffix('"')?;
    let mut out = zeroize::Zeroizing::new(String::with_capacity(inner.len()));
    let mut chars = inner.chars();
    let hex4 = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
        let mut n = 0;
        for _ in 0..4 {
            n = n * 16 + chars.next()?.to_digit(16)?;
        }
        Some(n)
    };
    while let Some(c) = chars.next() {
        let decoded = match c {
            '\\' => match chars.next()? {
                '"' => '"',
                '\\' => '\\',
                '/' => '/',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'u' => {
                    let hi = hex4(&mut chars)?;
                    if (0xD800..0xDC00).contains(&hi) {
                        if chars.next()? != '\\' || chars.next()? != 'u' {
                            return None;
                        }
                        let lo = hex4(&mut chars)?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    } else {
                        char::from_u32(hi)?
                    }
                }
                _ => return None,
            },
            '"' => return None,
            c if u32::from(c) < 0x20 => return None,
            c => c,
        };
        out.push(decoded);
    }
    Some(std::mem::take(&mut *out))
}

/// Renders and writes `spec` and records it; the digest of what was written, `None` on error.
fn render_once(
    inner: &Inner,
    spec: &FileSpec,
    views: &BTreeMap<String, SecretView>,
) -> Option<String> {
    let used = views
        .iter()
        .map(|(n, v)| {
            // A certificate's serial names which one the file holds (it is no secret).
            let serial = inner
                .config
                .secret(n)
                .filter(|s| s.issue.is_some())
                .and_then(|_| v.data.get("serial_number"))
                .and_then(serde_json::Value::as_str)
                .map(|s| format!(" serial {s}"))
                .unwrap_or_default();
            format!("{n} v{}{serial}", v.version)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let outcome = render::render(spec, views)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            write::write_atomic(
                &spec.dir,
                &spec.path,
                &bytes,
                spec.mode_bits(),
                inner.config.socket.group,
            )
            .map(|_| content_digest(inner, &bytes))
            .map_err(|e| format!("file {}: cannot write {}: {e}", spec.name, spec.path))
        });
    let mut rec = Record::new(
        "file.render",
        if outcome.is_ok() {
            Decision::Ok
        } else {
            Decision::Error
        },
    );
    rec.secret = Some(views.keys().cloned().collect::<Vec<_>>().join(","));
    rec.path = Some(spec.dir.join(&spec.path).display().to_string());
    if views.len() == 1 {
        rec.version = views.values().next().map(|v| v.version);
    }
    let what = format!(
        "file {} for container {}: {used}",
        spec.name, spec.container
    );
    match &outcome {
        Ok(_) => {
            rec.reason = Some(what);
            info!(file = %spec.name, container = %spec.container, secrets = %used, "Rendered file");
        }
        Err(e) => {
            rec.reason = Some(format!("{what}: {e}"));
            warn!(file = %spec.name, container = %spec.container, error = %e, "Cannot render file; the previous one stays");
        }
    }
    let _ = inner.audit.record(&rec);
    outcome.ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Strings decode as serde_json decodes them; what is no JSON string is refused.
    #[test]
    fn an_opened_string_field_decodes_as_json_does() {
        for v in [
            json!(""),
            json!("plain"),
            json!("-----BEGIN KEY-----\nabc\n-----END KEY-----\n"),
            json!("q\"b\\s/\u{8}\u{c}\r\t\u{1}é€😀"),
            json!(42),
            json!({"a": "b\n"}),
            json!(null),
        ] {
            let text = serde_json::to_vec(&v).expect("json");
            assert_eq!(open_field(&text), Some(v.clone()), "{v}");
        }
        assert_eq!(
            open_field(br#""\ud83d\ude00 \u00e9\/""#),
            Some(json!("😀 é/"))
        );
        for bad in [
            &br#""abc"#[..],
            br#""a"b""#,
            br#""\x""#,
            br#""\ud83d""#,
            br#""\ud83dx""#,
            b"\"\x01\"",
            br#""\u12""#,
        ] {
            assert_eq!(open_field(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A field opened for a render (a PEM private key: a JSON string with `\n` escapes) leaves
    /// no copy behind once the value is wiped: decoding it uses no scratch buffer that is freed
    /// unwiped.
    #[test]
    fn opening_an_escaped_field_leaves_no_copy_once_wiped() {
        use rand::Rng;
        let mut canary = [0u8; 2048];
        let mut rng = rand::thread_rng();
        for (i, b) in canary.iter_mut().enumerate() {
            *b = if i % 64 == 63 {
                b'\n'
            } else {
                rng.gen_range(b'a'..=b'z')
            };
        }
        // The longest run without a newline, searched for in memory.
        let needle = canary[64..127].to_vec();
        let mut json = zeroize::Zeroizing::new(Vec::with_capacity(4096));
        json.push(b'"');
        for &b in canary.iter() {
            if b == b'\n' {
                json.extend_from_slice(b"\\n");
            } else {
                json.push(b);
            }
        }
        json.push(b'"');
        let skip = [
            canary.as_ptr() as usize..canary.as_ptr() as usize + canary.len(),
            needle.as_ptr() as usize..needle.as_ptr() as usize + needle.len(),
            json.as_ptr() as usize..json.as_ptr() as usize + json.capacity(),
        ];
        let mut maps = String::with_capacity(1 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let mut v = open_field(&json).expect("a JSON string");
        assert_eq!(v.as_str().map(str::as_bytes), Some(&canary[..]));
        crate::secret::scrub_json(&mut v);
        drop(v);
        assert_eq!(
            render::tests::occurrences(&needle, &skip, &mut maps, &mut buf),
            0,
            "a copy of the opened value is left in memory"
        );
    }
}
