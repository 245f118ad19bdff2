//! Release tooling: keyward's OCI image, assembled without a container daemon.
//!
//! [`build_layout`] writes an OCI image layout (image-layout spec 1.0) holding one image: a single
//! gzip layer with the release binary at [`BINARY_PATH`], the CA bundle at [`CA_PATH`] and
//! `/etc/passwd` + `/etc/group` entries for the non-root user [`UID`], and nothing else. When an
//! SBOM is given it is attached as an OCI artifact whose `subject` is the image manifest.
//!
//! Every byte is a function of the inputs: tar entries sorted by path, owner 0:0, mtime =
//! `SOURCE_DATE_EPOCH`, gzip header without name and with mtime 0, JSON with sorted keys and no
//! whitespace. docs/release.md describes the image; scripts/release.sh drives this crate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_CYCLONEDX: &str = "application/vnd.cyclonedx+json";

/// Where the binary lives in the image (on `PATH`, so the injector's `exec` probes find `keyward`).
pub const BINARY_PATH: &str = "/usr/bin/keyward";
/// The CA bundle (PEM), also named by `SSL_CERT_FILE` in the image's environment.
pub const CA_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The image's user and group: "nonroot", as in distroless images.
pub const UID: u32 = 65532;
/// The config's `User`.
pub const USER: &str = "65532:65532";
pub const PASSWD: &str = "nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n";
pub const GROUP: &str = "nonroot:x:65532:\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tar entry {0}: path longer than 99 bytes")]
    NameTooLong(String),
    #[error("tar entry {0}: {1} does not fit its header field")]
    FieldTooLarge(String, &'static str),
    #[error("no CA certificates (*.crt) in {}", .0.display())]
    NoCerts(PathBuf),
    #[error("SBOM {}: {problem}", path.display())]
    Sbom { path: PathBuf, problem: String },
    #[error("SOURCE_DATE_EPOCH {0} is not a time this tool can format")]
    Epoch(i64),
    #[error("output directory {} exists and is not empty", .0.display())]
    OutputNotEmpty(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// `sha256:HEX` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// JSON with object keys sorted and no whitespace: the same bytes whatever order the map kept.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One entry of the layer: a directory (`data` = None) or a regular file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the image, without the leading `/`; directories end in `/`.
    pub path: String,
    pub mode: u32,
    pub data: Option<Vec<u8>>,
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: format!("{}/", path.trim_matches('/')),
            mode: 0o755,
            data: None,
        }
    }
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
        Entry {
            path: path.trim_start_matches('/').to_owned(),
            mode,
            data: Some(data),
        }
    }
}

fn octal(field: &mut [u8], value: u64, entry: &str, what: &'static str) -> Result<(), Error> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return Err(Error::FieldTooLarge(entry.to_owned(), what));
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn tar_header(entry: &Entry, mtime: u64) -> Result<[u8; 512], Error> {
    let mut h = [0u8; 512];
    let name = entry.path.as_bytes();
    if name.len() > 99 {
        return Err(Error::NameTooLong(entry.path.clone()));
    }
    h[..name.len()].copy_from_slice(name);
    let size = entry.data.as_ref().map_or(0, |d| d.len() as u64);
    octal(&mut h[100..108], u64::from(entry.mode), &entry.path, "mode")?;
    octal(&mut h[108..116], 0, &entry.path, "uid")?;
    octal(&mut h[116..124], 0, &entry.path, "gid")?;
    octal(&mut h[124..136], size, &entry.path, "size")?;
    octal(&mut h[136..148], mtime, &entry.path, "mtime")?;
    h[148..156].fill(b' ');
    h[156] = if entry.data.is_some() { b'0' } else { b'5' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], 0, &entry.path, "devmajor")?;
    octal(&mut h[337..345], 0, &entry.path, "devminor")?;
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// A ustar archive of `entries`, sorted by path, owned by 0:0, every mtime = `mtime`.
pub fn tar(entries: &[Entry], mtime: u64) -> Result<Vec<u8>, Error> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = Vec::new();
    for entry in sorted {
        out.extend_from_slice(&tar_header(entry, mtime)?);
        if let Some(data) = &entry.data {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// gzip with a fixed header: no file name, mtime 0, OS "unknown"; best compression.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// The CA bundle: every `*.crt` in `dir` (Debian's /usr/share/ca-certificates/mozilla), in byte
/// order of the file names, each ending in a newline.
pub fn ca_bundle(dir: &Path) -> Result<Vec<u8>, Error> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if Path::new(&name).extension().is_some_and(|e| e == "crt") {
            names.push(entry.path());
        }
    }
    if names.is_empty() {
        return Err(Error::NoCerts(dir.to_owned()));
    }
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let mut pem = std::fs::read(&path).map_err(io(&path))?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        out.extend_from_slice(&pem);
    }
    Ok(out)
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(epoch: i64) -> Result<String, Error> {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch).map_err(|_| Error::Epoch(epoch))?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).map_err(|_| Error::Epoch(epoch))
}

/// What goes into the image besides the binary's bytes.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub binary: PathBuf,
    pub ca_dir: PathBuf,
    pub version: String,
    pub revision: String,
    pub source: String,
    pub source_date_epoch: i64,
    /// A CycloneDX JSON SBOM (already normalized: [`normalize_sbom`]) to attach.
    pub sbom: Option<PathBuf>,
}

/// The OCI annotations of the manifest, also the config's labels.
pub fn annotations(inputs: &Inputs) -> Result<BTreeMap<String, String>, Error> {
    let mut a = BTreeMap::new();
    a.insert(
        "org.opencontainers.image.created".to_owned(),
        rfc3339(inputs.source_date_epoch)?,
    );
    a.insert(
        "org.opencontainers.image.revision".to_owned(),
        inputs.revision.clone(),
    );
    a.insert(
        "org.opencontainers.image.source".to_owned(),
        inputs.source.clone(),
    );
    a.insert(
        "org.opencontainers.image.version".to_owned(),
        inputs.version.clone(),
    );
    Ok(a)
}

/// What [`build_layout`] wrote.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub sbom_manifest_digest: Option<String>,
}

fn write_blob(out: &Path, bytes: &[u8]) -> Result<(String, u64), Error> {
    let d = digest(bytes);
    let path = out
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).map_err(io(&path))?;
    Ok((d, bytes.len() as u64))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(io(path))
}

/// The image's root filesystem entries.
pub fn rootfs(binary: &[u8], ca: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::dir("etc"),
        Entry::file("etc/group", 0o644, GROUP.as_bytes().to_vec()),
        Entry::file("etc/passwd", 0o644, PASSWD.as_bytes().to_vec()),
        Entry::dir("etc/ssl"),
        Entry::dir("etc/ssl/certs"),
        Entry::file(CA_PATH, 0o644, ca),
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::file(BINARY_PATH, 0o755, binary.to_vec()),
    ]
}

/// Writes the OCI image layout into `out` (created; must be absent or empty).
pub fn build_layout(inputs: &Inputs, out: &Path) -> Result<Built, Error> {
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(Error::OutputNotEmpty(out.to_owned()));
    }
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let binary = std::fs::read(&inputs.binary).map_err(io(&inputs.binary))?;
    let ca = ca_bundle(&inputs.ca_dir)?;
    let mtime = u64::try_from(inputs.source_date_epoch)
        .map_err(|_| Error::Epoch(inputs.source_date_epoch))?;
    let created = rfc3339(inputs.source_date_epoch)?;
    let layer_tar = tar(&rootfs(&binary, ca), mtime)?;
    let diff_id = digest(&layer_tar);
    let (layer_digest, layer_size) = write_blob(out, &gzip(&layer_tar))?;
    let annotations = annotations(inputs)?;

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": USER,
            "Entrypoint": [BINARY_PATH],
            "Env": [
                "PATH=/usr/bin",
                format!("SSL_CERT_FILE={CA_PATH}"),
            ],
            "WorkingDir": "/",
            "Labels": annotations,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{
            "created": created,
            "created_by": "keyward-oci (scripts/release.sh): keyward binary, CA certificates, passwd/group for 65532",
        }],
    });
    let (config_digest, config_size) = write_blob(out, canonical_json(&config).as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
        "annotations": annotations,
    });
    let (manifest_digest, manifest_size) = write_blob(out, canonical_json(&manifest).as_bytes())?;
    let mut index_manifests = vec![json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": inputs.version},
    })];

    let mut sbom_manifest_digest = None;
    if let Some(sbom_path) = &inputs.sbom {
        let sbom = std::fs::read(sbom_path).map_err(io(sbom_path))?;
        let (sbom_digest, sbom_size) = write_blob(out, &sbom)?;
        let (empty_digest, empty_size) = write_blob(out, b"{}")?;
        let artifact = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": MEDIA_CYCLONEDX,
            "config": {"mediaType": MEDIA_EMPTY, "digest": empty_digest, "size": empty_size},
            "layers": [{
                "mediaType": MEDIA_CYCLONEDX,
                "digest": sbom_digest,
                "size": sbom_size,
                "annotations": {"org.opencontainers.image.title": "keyward.cdx.json"},
            }],
            "subject": {"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size},
            "annotations": {"org.opencontainers.image.created": created},
        });
        let (d, size) = write_blob(out, canonical_json(&artifact).as_bytes())?;
        index_manifests.push(json!({
            "mediaType": MEDIA_MANIFEST,
            "artifactType": MEDIA_CYCLONEDX,
            "digest": d,
            "size": size,
        }));
        sbom_manifest_digest = Some(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": index_manifests,
    });
    write_file(&out.join("index.json"), canonical_json(&index).as_bytes())?;
    write_file(
        &out.join("oci-layout"),
        canonical_json(&json!({"imageLayoutVersion": "1.0.0"})).as_bytes(),
    )?;
    Ok(Built {
        manifest_digest,
        config_digest,
        layer_digest,
        sbom_manifest_digest,
    })
}

/// Makes cargo-cyclonedx's output a function of the sources: `metadata.timestamp` becomes the
/// source date, `serialNumber` a UUID derived from the rest of the document, every occurrence of
/// each `strip` prefix (the checkout, cargo's home) is replaced by `replacement`, and the JSON is
/// written canonically.
pub fn normalize_sbom(
    input: &Path,
    source_date_epoch: i64,
    strip: &[String],
) -> Result<Vec<u8>, Error> {
    let text = std::fs::read_to_string(input).map_err(io(input))?;
    let mut text = text;
    for prefix in strip.iter().filter(|p| !p.is_empty()) {
        text = text.replace(prefix.as_str(), "/build");
    }
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| Error::Sbom {
        path: input.to_owned(),
        problem: e.to_string(),
    })?;
    let obj = doc.as_object_mut().ok_or_else(|| Error::Sbom {
        path: input.to_owned(),
        problem: "not a JSON object".to_owned(),
    })?;
    if obj.get("bomFormat").and_then(Value::as_str) != Some("CycloneDX") {
        return Err(Error::Sbom {
            path: input.to_owned(),
            problem: "bomFormat is not CycloneDX".to_owned(),
        });
    }
    obj.remove("serialNumber");
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "timestamp".to_owned(),
            Value::String(rfc3339(source_date_epoch)?),
        );
    }
    let h = Sha256::digest(canonical_json(&doc).as_bytes());
    // A version-5-style UUID layout over a SHA-256 prefix (version nibble 5, RFC 4122 variant).
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    let uuid = format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    );
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("serialNumber".to_owned(), Value::String(uuid));
    }
    Ok(canonical_json(&doc).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_entries_are_sorted_owned_by_root_with_the_given_mtime() {
        let entries = vec![
            Entry::file("usr/bin/x", 0o755, b"bin".to_vec()),
            Entry::dir("etc"),
            Entry::file("etc/passwd", 0o644, b"p\n".to_vec()),
        ];
        let t = tar(&entries, 1_700_000_000).expect("tar");
        let names: Vec<String> = t
            .chunks(512)
            .filter(|h| h[257..262] == *b"ustar")
            .map(|h| {
                assert_eq!(&h[108..115], b"0000000", "uid 0");
                assert_eq!(&h[116..123], b"0000000", "gid 0");
                assert_eq!(&h[136..147], format!("{:011o}", 1_700_000_000).as_bytes());
                String::from_utf8_lossy(&h[..h.iter().position(|&b| b == 0).unwrap_or(100)])
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["etc/", "etc/passwd", "usr/bin/x"]);
        let mut shuffled = entries.clone();
        shuffled.reverse();
        assert_eq!(tar(&shuffled, 1_700_000_000).expect("tar"), t);
    }

    #[test]
    fn gzip_header_has_no_name_and_no_mtime() {
        let g = gzip(b"hello");
        assert_eq!(&g[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&g[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(g, gzip(b"hello"));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"z": [true, null], "y": "s"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":"s","z":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn a_long_tar_name_is_an_error_naming_it() {
        let long = "a".repeat(120);
        let err = tar(&[Entry::file(&long, 0o644, Vec::new())], 0).expect_err("too long");
        assert!(err.to_string().contains(&long));
    }

    #[test]
    fn created_is_rfc3339_utc() {
        assert_eq!(rfc3339(0).expect("epoch"), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_633_600).expect("t"), "2025-12-02T00:00:00Z");
    }
}
