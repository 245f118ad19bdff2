//! The release image (docs/release.md), checked with tools that are not the project's own:
//! Debian's skopeo and umoci read it, the unpacked root filesystem runs `keyward` as 65532,
//! cosign signs and verifies it (and refuses tampered copies), the chart pins its digest.
//!
//! Every test builds the image of the commit that `release/image.json` records with
//! `scripts/release.sh --rev` (a release build, cached in `$KEYWARD_CACHE/release`: cold it is a
//! full release build of keyward, warm a few seconds). Tools come from `scripts/deps.sh release`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn cache() -> PathBuf {
    std::env::var_os("KEYWARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/keyward")
        })
}

/// A release tool: on PATH (Debian's) or in the release tools' bin directory.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("KEYWARD_RELEASE_BIN") {
        dirs.push(d.into());
    }
    dirs.push(cache().join("release-tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push("/usr/sbin".into());
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install the release tools with `scripts/deps.sh release`")
        })
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: cannot start: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What release/image.json records: the commit the chart's image was built from.
struct Recorded {
    revision: String,
    version: String,
    epoch: i64,
    source: String,
    digest: String,
}

fn recorded() -> Recorded {
    let v = json_file(&repo().join("release/image.json"));
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("release/image.json: no {k}"))
            .to_owned()
    };
    Recorded {
        revision: s("revision"),
        version: s("version"),
        epoch: v["source_date_epoch"]
            .as_i64()
            .expect("release/image.json: source_date_epoch"),
        source: s("source"),
        digest: s("digest"),
    }
}

struct Release {
    dir: tempfile::TempDir,
    digest: String,
}

impl Release {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("image")
    }
    fn binary(&self) -> PathBuf {
        self.dir.path().join("keyward")
    }
    fn sbom(&self) -> PathBuf {
        self.dir.path().join("keyward.cdx.json")
    }
}

/// `scripts/release.sh --rev REV --out TMP` for the recorded commit, with this test run's
/// keyward-oci.
fn release() -> Release {
    let rec = recorded();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ok(Command::new(repo().join("scripts/release.sh"))
        .args(["--rev", &rec.revision, "--out"])
        .arg(dir.path())
        .env("KEYWARD_OCI", env!("CARGO_BIN_EXE_keyward-oci"))
        .env("KEYWARD_SOURCE_URL", &rec.source));
    let digest = out.lines().last().unwrap_or_default().trim().to_owned();
    assert!(digest.starts_with("sha256:"), "release.sh printed {out:?}");
    Release { dir, digest }
}

fn chart_digest() -> String {
    let values = std::fs::read_to_string(repo().join("charts/keyward/values.yaml"))
        .expect("charts/keyward/values.yaml");
    values
        .lines()
        .find_map(|l| l.strip_prefix("  digest: \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("image digest line in charts/keyward/values.yaml")
        .to_owned()
}

#[test]
fn the_charts_image_digest_is_the_release_build_of_the_recorded_commit() {
    let rec = recorded();
    assert_eq!(
        chart_digest(),
        rec.digest,
        "charts/keyward/values.yaml and release/image.json disagree"
    );
    let r = release();
    assert_eq!(
        r.digest, rec.digest,
        "the release build of {} gives {}, but the chart pins {} (scripts/release.sh --pin)",
        rec.revision, r.digest, rec.digest
    );
}

fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn two_assemblies_in_two_directories_give_the_same_image_byte_for_byte() {
    let r = release();
    let rec = recorded();
    let mut digests = Vec::new();
    let mut trees = Vec::new();
    for _ in 0..2 {
        let work = tempfile::tempdir().expect("tempdir");
        let out = work.path().join("nested/image");
        let d = ok(Command::new(env!("CARGO_BIN_EXE_keyward-oci"))
            .current_dir(work.path())
            .arg("build")
            .arg("--binary")
            .arg(r.binary())
            .args(["--version", &rec.version, "--revision", &rec.revision])
            .args(["--source", &rec.source])
            .arg("--source-date-epoch")
            .arg(rec.epoch.to_string())
            .arg("--sbom")
            .arg(r.sbom())
            .arg("--out")
            .arg(&out));
        digests.push(d.trim().to_owned());
        trees.push(files_under(&out));
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], r.digest, "release.sh's image and ours differ");
    assert!(trees[0] == trees[1], "the two layouts differ in some file");
    assert_eq!(trees[0], files_under(&r.layout()));
}

/// docs/release.md states these; the image must match them.
const DOC_USER: &str = "65532:65532";
const DOC_ENTRYPOINT: &str = "/usr/bin/keyward";

#[test]
fn skopeo_and_umoci_read_the_image_and_its_config_is_what_the_docs_say() {
    let r = release();
    let rec = recorded();
    let src = format!("oci:{}:{}", r.layout().display(), rec.version);
    let raw = ok(Command::new(tool("skopeo")).args(["inspect", "--raw", &src]));
    assert_eq!(
        keyward_oci::digest(raw.as_bytes()),
        r.digest,
        "skopeo read another manifest"
    );
    let manifest: Value = serde_json::from_str(&raw).expect("manifest JSON");
    let config: Value = serde_json::from_str(&ok(
        Command::new(tool("skopeo")).args(["inspect", "--config", "--raw", &src])
    ))
    .expect("config JSON");
    let c = &config["config"];
    assert_eq!(c["User"], DOC_USER);
    assert_eq!(c["Entrypoint"], serde_json::json!([DOC_ENTRYPOINT]));
    assert!(c.get("Cmd").is_none() || c["Cmd"].is_null(), "no Cmd: {c}");
    let created = keyward_oci::rfc3339(rec.epoch).expect("created");
    for (key, want) in [
        ("org.opencontainers.image.source", rec.source.as_str()),
        ("org.opencontainers.image.revision", rec.revision.as_str()),
        ("org.opencontainers.image.version", rec.version.as_str()),
        ("org.opencontainers.image.created", created.as_str()),
    ] {
        assert_eq!(
            manifest["annotations"][key], want,
            "manifest annotation {key}"
        );
        assert_eq!(c["Labels"][key], want, "config label {key}");
    }
    let docs = std::fs::read_to_string(repo().join("docs/release.md")).expect("docs/release.md");
    for stated in [
        format!("`User`: `{DOC_USER}`"),
        format!("`Entrypoint`: `[\"{DOC_ENTRYPOINT}\"]`"),
        "`org.opencontainers.image.source`".to_owned(),
        "`org.opencontainers.image.revision`".to_owned(),
        "`org.opencontainers.image.version`".to_owned(),
        "`org.opencontainers.image.created`".to_owned(),
    ] {
        assert!(
            docs.contains(&stated),
            "docs/release.md does not state {stated}"
        );
    }

    // umoci unpacks it (checking every blob's digest) into a runtime bundle.
    let work = tempfile::tempdir().expect("tempdir");
    let bundle = work.path().join("bundle");
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", r.layout().display(), rec.version))
        .arg(&bundle));
    let runtime = json_file(&bundle.join("config.json"));
    assert_eq!(runtime["process"]["user"]["uid"], 65532);
    assert_eq!(runtime["process"]["user"]["gid"], 65532);
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!([DOC_ENTRYPOINT])
    );
    let rootfs = bundle.join("rootfs");
    let mut found = BTreeSet::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            found.insert(
                p.strip_prefix(&rootfs)
                    .expect("prefix")
                    .display()
                    .to_string(),
            );
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    let want: BTreeSet<String> = [
        "etc",
        "etc/group",
        "etc/passwd",
        "etc/ssl",
        "etc/ssl/certs",
        "etc/ssl/certs/ca-certificates.crt",
        "usr",
        "usr/bin",
        "usr/bin/keyward",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        found, want,
        "the image holds exactly the binary, CAs, passwd and group"
    );
    let ca = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("CA");
    assert!(
        ca.matches("-----BEGIN CERTIFICATE-----").count() > 100,
        "a CA bundle"
    );

    // The root filesystem runs keyward as 65532:65532 (chroot, no container runtime).
    let version = ok(Command::new(tool("chroot"))
        .args(["--userspec=65532:65532", "--groups=65532"])
        .arg(&rootfs)
        .args([DOC_ENTRYPOINT, "--version"])
        .env_clear());
    assert_eq!(version.trim(), format!("keyward {}", rec.version));
    // ...and really as 65532: a root-only file is out of its reach.
    std::fs::write(rootfs.join("root-only.yaml"), "kind: Pod\n").expect("write");
    std::fs::set_permissions(
        rootfs.join("root-only.yaml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let denied = run(Command::new(tool("chroot"))
        .args(["--userspec=65532:65532", "--groups=65532"])
        .arg(&rootfs)
        .args([DOC_ENTRYPOINT, "inject", "-f", "/root-only.yaml"])
        .env_clear());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("ermission denied"),
        "keyward read a root-only file: {stderr}"
    );
}

#[test]
fn the_binary_carries_its_dependency_list_and_the_sbom_is_attached_to_the_image() {
    let r = release();
    let work = tempfile::tempdir().expect("tempdir");
    let section = work.path().join("dep-v0");
    ok(Command::new(tool("objcopy"))
        .arg(format!("--dump-section=.dep-v0={}", section.display()))
        .arg(r.binary())
        .arg(work.path().join("discard")));
    let listed = ok(Command::new(env!("CARGO_BIN_EXE_keyward-oci"))
        .args(["audit-info", "--section"])
        .arg(&section));
    let rec = recorded();
    let want = format!("keyward {}", rec.version);
    assert!(listed.lines().any(|l| l == want), "audit data lacks {want}");
    assert!(
        listed.lines().any(|l| l.starts_with("rustls ")),
        "audit data lacks rustls"
    );

    let sbom = json_file(&r.sbom());
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let names: BTreeSet<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for dep in ["rustls", "tokio", "ring"] {
        assert!(names.contains(dep), "SBOM lacks {dep}");
    }
    let text = std::fs::read_to_string(r.sbom()).expect("sbom");
    assert!(
        !text.contains(&repo().display().to_string()) && !text.contains("/root/"),
        "the SBOM names a build machine path"
    );

    // Attached: an artifact manifest in the layout whose subject is the image.
    let index = json_file(&r.layout().join("index.json"));
    let artifact = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["artifactType"] == keyward_oci::MEDIA_CYCLONEDX)
        .expect("an SBOM artifact in index.json");
    let blob = |d: &Value| {
        r.layout()
            .join("blobs/sha256")
            .join(d.as_str().expect("digest").trim_start_matches("sha256:"))
    };
    let manifest = json_file(&blob(&artifact["digest"]));
    assert_eq!(manifest["subject"]["digest"], r.digest.as_str());
    assert_eq!(
        std::fs::read(blob(&manifest["layers"][0]["digest"])).expect("sbom blob"),
        std::fs::read(r.sbom()).expect("sbom")
    );
}

/// cosign in a network namespace of its own: it looks for Sigstore's TUF root online even with
/// a key and no transparency log, and nothing here may leave the machine.
fn cosign(args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.arg("--net")
        .arg(tool("cosign"))
        .args(args)
        .env("COSIGN_PASSWORD", "test-only-password")
        .env("COSIGN_YES", "true");
    c
}

/// Re-writes `layout`'s image manifest with `edit` applied and points index.json at it, as an
/// attacker with write access to the layout would.
fn rewrite_manifest(layout: &Path, image_digest: &str, edit: impl Fn(&mut Value)) -> String {
    let blobs = layout.join("blobs/sha256");
    let path = blobs.join(image_digest.trim_start_matches("sha256:"));
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("json");
    edit(&mut manifest);
    let bytes = keyward_oci::canonical_json(&manifest).into_bytes();
    let d = keyward_oci::digest(&bytes);
    std::fs::write(blobs.join(d.trim_start_matches("sha256:")), &bytes).expect("write");
    let index_path = layout.join("index.json");
    let index = std::fs::read_to_string(&index_path)
        .expect("index")
        .replace(image_digest, &d);
    std::fs::write(&index_path, index).expect("write index");
    d
}

fn copy_dir(from: &Path, to: &Path) {
    ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn the_signature_verifies_offline_and_tampered_copies_fail() {
    let r = release();
    let work = tempfile::tempdir().expect("tempdir");
    let keys = work.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    ok(cosign(&["generate-key-pair"]).current_dir(&keys));
    let (key, public) = (keys.join("cosign.key"), keys.join("cosign.pub"));
    let signed = work.path().join("signed");
    let sigdir = work.path().join("sig");
    ok(Command::new(repo().join("scripts/release.sh"))
        .arg("sign")
        .arg("--layout")
        .arg(r.layout())
        .arg("--key")
        .arg(&key)
        .arg("--pub")
        .arg(&public)
        .arg("--out")
        .arg(&signed)
        .arg("--signature-dir")
        .arg(&sigdir)
        .env("COSIGN_PASSWORD", "test-only-password"));
    let verify = |layout: &Path, public: &Path| {
        run(cosign(&[
            "verify",
            "--insecure-ignore-tlog=true",
            "--local-image",
            "--key",
        ])
        .arg(public)
        .arg(layout))
    };
    let good = verify(&signed, &public);
    assert!(
        good.status.success(),
        "cosign verify of the signed layout: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    let claims: Value = serde_json::from_slice(&good.stdout).expect("verify output");
    assert_eq!(
        claims[0]["critical"]["image"]["docker-manifest-digest"],
        r.digest.as_str()
    );
    // The detached signature verifies over its payload, which names the image digest.
    ok(
        cosign(&["verify-blob", "--insecure-ignore-tlog=true", "--key"])
            .arg(&public)
            .arg("--signature")
            .arg(sigdir.join("image.sig"))
            .arg(sigdir.join("image.payload.json")),
    );

    // Another key does not verify it.
    let other = work.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    ok(cosign(&["generate-key-pair"]).current_dir(&other));
    assert!(
        !verify(&signed, &other.join("cosign.pub")).status.success(),
        "verified with an unrelated key"
    );

    // A tampered manifest (an annotation changed, index.json updated to match) fails.
    let t1 = work.path().join("tampered-manifest");
    copy_dir(&signed, &t1);
    rewrite_manifest(&t1, &r.digest, |m| {
        m["annotations"]["org.opencontainers.image.version"] = "9.9.9".into();
    });
    let out = verify(&t1, &public);
    assert!(
        !out.status.success(),
        "a tampered manifest verified: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A tampered layer: the new layer's digest in the manifest (so the layout is consistent)
    // changes the manifest digest, which the signature does not cover.
    let t2 = work.path().join("tampered-layer");
    copy_dir(&signed, &t2);
    let layer_digest = json_file(
        &t2.join("blobs/sha256")
            .join(r.digest.trim_start_matches("sha256:")),
    )["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_owned();
    let layer_path = t2
        .join("blobs/sha256")
        .join(layer_digest.trim_start_matches("sha256:"));
    assert!(layer_path.is_file(), "the layer blob");
    let evil = keyward_oci::gzip(b"not the layer that was signed");
    let layer = evil.clone();
    let evil_digest = keyward_oci::digest(&layer);
    std::fs::write(
        t2.join("blobs/sha256")
            .join(evil_digest.trim_start_matches("sha256:")),
        &layer,
    )
    .expect("write");
    let evil_size = layer.len();
    rewrite_manifest(&t2, &r.digest, |m| {
        m["layers"][0]["digest"] = evil_digest.as_str().into();
        m["layers"][0]["size"] = evil_size.into();
    });
    let out = verify(&t2, &public);
    assert!(
        !out.status.success(),
        "a tampered layer verified: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A layer changed in place (manifest untouched): the signature still names the manifest,
    // so cosign alone cannot see it; every copy by digest does. skopeo refuses it.
    let t3 = work.path().join("tampered-in-place");
    copy_dir(&r.layout(), &t3);
    std::fs::write(
        t3.join("blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
        &evil,
    )
    .expect("write");
    let copy = run(Command::new(tool("skopeo"))
        .arg("copy")
        .arg(format!("oci:{}:{}", t3.display(), recorded().version))
        .arg(format!("dir:{}", work.path().join("copied").display())));
    assert!(
        !copy.status.success(),
        "skopeo copied a layer whose bytes do not match its digest"
    );
}

#[test]
fn the_published_signature_verifies_with_the_release_key_and_names_the_pinned_digest() {
    let release_dir = repo().join("release");
    let payload = release_dir.join("signature/image.payload.json");
    ok(
        cosign(&["verify-blob", "--insecure-ignore-tlog=true", "--key"])
            .arg(release_dir.join("cosign.pub"))
            .arg("--signature")
            .arg(release_dir.join("signature/image.sig"))
            .arg(&payload),
    );
    let claims = json_file(&payload);
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        chart_digest().as_str(),
        "release/signature signs another digest than the chart pins"
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
}
