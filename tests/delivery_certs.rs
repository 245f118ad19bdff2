//! Certificates for the app's own TLS server (issue 13 §4 and §5; docs/delivery.md
//! "Certificates") through the real `keyward broker` against a real OpenBao PKI engine: a
//! certificate issued for the pod's names, rendered as cert, key and chain files, issued again
//! at about 2/3 of a short TTL with a new serial, one `file.render` record per file and render
//! naming the serial, no key material in the audit log or the logs, and the certificates still
//! valid revoked at shutdown; a leased credential's file follows its renewals and re-fetches;
//! and a real nginx (Debian) serving HTTPS from the files under `keyward exec` with
//! `--on-change web=signal:HUP`: a client looping requests sees the new serial with no failed
//! request.

mod delivery_common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use delivery_common::{app_files, broker_refuses};
use serde_json::json;
use support::broker::{BrokerProc, KEYWARD};
use support::pg::Postgres;
use support::{eventually, TestVault};

const LONG: Duration = Duration::from_secs(60);
/// The group every container of the pod has (the socket's group), given to rendered files.
const POD_GROUP: u32 = 4321;

/// The broker config of a certificate `web` for the pod's names with `ttl`, rendered into
/// `dir` as `tls.crt`, `tls.key` and `ca.crt` for the container `app`.
fn cert_config(dir: &Path, ttl: &str) -> String {
    format!(
        "socket: {{group: {POD_GROUP}}}\nsecrets:\n  - name: web\n    path: pki_web/issue/web\n    issue: {{common_name: web.shop.svc, alt_names: [web, web.shop.svc.cluster.local], ttl: {ttl}}}\nfiles:\n  - {{name: web-cert, container: app, dir: {d}, path: tls.crt, secret: web, key: certificate}}\n  - {{name: web-key, container: app, dir: {d}, path: tls.key, secret: web, key: private_key}}\n  - {{name: web-chain, container: app, dir: {d}, path: ca.crt, secret: web, key: ca_chain}}\n",
        d = dir.display()
    )
}

/// `openssl ARGS`, its standard output; panics naming what failed.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/deps.sh core installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A serial as Vault writes it (`1a:2b:...`) or openssl (`1A2B...`), in one form.
fn norm_serial(s: &str) -> String {
    s.trim()
        .trim_start_matches("serial=")
        .replace(':', "")
        .to_ascii_uppercase()
        .trim_start_matches('0')
        .to_owned()
}

/// The serial of the certificate file `crt`.
fn file_serial(crt: &Path) -> String {
    norm_serial(&openssl(&[
        "x509",
        "-noout",
        "-serial",
        "-in",
        crt.to_str().expect("path"),
    ]))
}

/// The base64 lines of a PEM private key: what must never be in a log.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// Checks the three files of one certificate: the requested names, the key belongs to the
/// certificate, the chain verifies it, the pod's group and mode. Returns (serial, key PEM).
fn check_files(dir: &Path) -> (String, String) {
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let chain = dir.join("ca.crt");
    let crt_s = crt.to_str().expect("path");
    let text = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName",
        "-in",
        crt_s,
    ]);
    assert!(text.contains("CN = web.shop.svc"), "{text}");
    for name in [
        "DNS:web.shop.svc",
        "DNS:web",
        "DNS:web.shop.svc.cluster.local",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
    assert_eq!(
        openssl(&["x509", "-noout", "-pubkey", "-in", crt_s]),
        openssl(&["pkey", "-pubout", "-in", key.to_str().expect("path")]),
        "the key file holds the certificate's key"
    );
    let verified = openssl(&["verify", "-CAfile", chain.to_str().expect("path"), crt_s]);
    assert!(verified.trim().ends_with("OK"), "{verified}");
    for f in [&crt, &key, &chain] {
        let meta = std::fs::metadata(f).expect("meta");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o777, 0o440, "{}", f.display());
        assert_eq!(meta.gid(), POD_GROUP, "{}", f.display());
    }
    (
        file_serial(&crt),
        std::fs::read_to_string(&key).expect("key"),
    )
}

/// Waits until the broker is ready. Its socket file appears at bind, a moment before it
/// listens: a refused connection then means not ready yet.
async fn ready(b: &BrokerProc) {
    eventually(LONG, "the broker's socket listening", || async {
        std::os::unix::net::UnixStream::connect(&b.socket).ok()
    })
    .await;
    b.wait_ready().await;
}

/// When an audit record was written, in seconds.
fn ts(r: &serde_json::Value) -> f64 {
    let t = r["time"].as_str().expect("time");
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 ts");
    t.unix_timestamp_nanos() as f64 / 1e9
}

#[tokio::test]
async fn a_certificate_is_issued_for_the_pods_names_as_files_and_issued_again_at_two_thirds_of_its_ttl(
) {
    let v = TestVault::with_web_pki().await;
    let (_vol, dir) = app_files();
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &cert_config(&dir, "15s"),
        &[],
    );
    // Ready only once the files are there (the app starts after the sidecar is ready).
    ready(&b).await;
    let (serial1, key1) = check_files(&dir);

    // Issued again at about 2/3 of the 15 s: a new serial and a new key.
    let serial2 = eventually(LONG, "a certificate with a new serial", || async {
        let s = file_serial(&dir.join("tls.crt"));
        (s != serial1).then_some(s)
    })
    .await;
    // The three files of the new certificate are all replaced (the key may lag the
    // certificate by a moment: each file is its own atomic write).
    let (serial2_again, key2) = eventually(LONG, "the new key file", || async {
        let k = std::fs::read_to_string(dir.join("tls.key")).ok()?;
        (k != key1).then_some(())?;
        Some(check_files(&dir))
    })
    .await;
    assert_eq!(serial2, serial2_again);

    let records = b.audit_records();
    let issues: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "vault.fetch" && r["secret"] == "web")
        .collect();
    assert!(issues.len() >= 2, "{issues:?}");
    assert!(issues.iter().all(|r| r["decision"] == "ok"), "{issues:?}");
    assert_eq!(issues[0]["path"], "pki_web/issue/web");
    let gap = ts(issues[1]) - ts(issues[0]);
    assert!(
        (7.0..=13.0).contains(&gap),
        "issued again {gap:.1} s after the first of 15 s (about 2/3, ±10 %)"
    );

    // One render record per file and certificate, naming the file, the container, the
    // version and the serial.
    let renders: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "file.render")
        .collect();
    for (version, serial) in [(1u64, &serial1), (2, &serial2)] {
        for (file, path) in [
            ("web-cert", "tls.crt"),
            ("web-key", "tls.key"),
            ("web-chain", "ca.crt"),
        ] {
            let matching: Vec<_> = renders
                .iter()
                .filter(|r| {
                    r["version"] == version && r["path"] == dir.join(path).display().to_string()
                })
                .collect();
            assert_eq!(matching.len(), 1, "{file} v{version}: {renders:?}");
            let r = matching[0];
            assert_eq!(r["decision"], "ok", "{r}");
            assert_eq!(r["secret"], "web", "{r}");
            let reason = r["reason"].as_str().expect("reason");
            assert!(
                reason.contains(&format!(
                    "file {file} for container app: web v{version} serial"
                )),
                "{r}"
            );
            let named = reason.rsplit("serial ").next().expect("serial");
            assert_eq!(&norm_serial(named), serial, "{r}");
        }
    }

    // At shutdown the certificates still valid are revoked.
    assert!(b.terminate().success());
    let revoked = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "vault.revoke" && r["secret"] == "web")
        .collect::<Vec<_>>();
    assert!(
        !revoked.is_empty() && revoked.iter().all(|r| r["decision"] == "ok"),
        "{revoked:?}"
    );
    // The serial as Vault writes it, from the record of the last render.
    let current = b
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| r["action"] == "file.render" && r["version"] == 2)
        .and_then(|r| Some(r["reason"].as_str()?.rsplit("serial ").next()?.to_owned()))
        .expect("the serial of version 2");
    let cert = v
        .bao
        .api("GET", &format!("pki_web/cert/{current}"), None)
        .await;
    assert!(
        cert["data"]["revocation_time"].as_i64().unwrap_or(0) > 0,
        "the current certificate is revoked: {cert}"
    );

    // No key material anywhere but the key files.
    let logs = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(&b.audit).expect("audit"),
        b.log(),
        b.stdout()
    );
    for key in [&key1, &key2] {
        for line in key_lines(key) {
            assert!(
                !logs.contains(&line),
                "key material in the audit log or logs"
            );
        }
    }
}

/// A template that shows a leased credential's expiry: each renewal (same version, a new
/// expiry) renders the file again, and the re-fetch near the max TTL (a new credential)
/// renders the new credential.
#[tokio::test]
async fn a_leased_credentials_file_follows_its_renewals_and_its_re_fetch() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "4s", "12s").await;
    let (_vol, dir) = app_files();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: db, path: database/creds/app}}\nfiles:\n  - {{name: dsn, container: app, dir: {}, path: dsn, template: '{{{{ secrets.db.data.username }}}} v{{{{ secrets.db.version }}}} until {{{{ secrets.db.lease_expires }}}}'}}\n",
            dir.display()
        ),
        &[],
    );
    ready(&b).await;
    let file = dir.join("dsn");
    let read = || std::fs::read_to_string(&file).expect("the file is there");
    let first = read();
    let (user1, _) = first.split_once(" v1 until ").expect("v1");
    let user1 = user1.to_owned();
    // A renewal: same credential and version, a later expiry.
    let renewed = eventually(LONG, "a render after the renewal", || async {
        let t = read();
        (t != first && t.starts_with(&format!("{user1} v1 until "))).then_some(t)
    })
    .await;
    assert!(renewed > first, "a later expiry: {first} -> {renewed}");
    assert!(b.audit_count("vault.lease_renew", "ok") >= 1);
    // The re-fetch near the max TTL: a new credential, version 2.
    let refetched = eventually(LONG, "a render of the re-fetched credential", || async {
        let t = read();
        t.contains(" v2 until ").then_some(t)
    })
    .await;
    assert!(
        !refetched.starts_with(&user1),
        "a new credential: {refetched}"
    );
    let renders = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "file.render")
        .collect::<Vec<_>>();
    assert!(
        renders.len() >= 3,
        "one record per changed render: {renders:?}"
    );
}

/// `keyward broker` with a bad certificate setting refuses to start naming it, writing nothing.
#[test]
fn a_bad_certificate_setting_is_refused_naming_it() {
    for (issue, says) in [
        ("{common_name: 'web shop'}", "secrets[0].issue.common_name"),
        (
            "{common_name: web, alt_names: ['../x']}",
            "secrets[0].issue.alt_names[0]",
        ),
        ("{common_name: web, ttl: 2s}", "secrets[0].issue.ttl"),
    ] {
        broker_refuses(issue, says, |dir| {
            format!(
                "secrets:\n  - {{name: web, path: pki_web/issue/web, issue: {issue}}}\nfiles:\n  - {{name: c, container: app, dir: {}, path: tls.crt, secret: web, key: certificate}}\n",
                dir.display()
            )
        });
    }
}

/// The nginx binary `scripts/deps.sh core` installs (Debian's, pinned).
fn nginx_bin() -> PathBuf {
    let p = std::env::var_os("KEYWARD_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        p.is_file(),
        "nginx not found at {}: install it with `scripts/deps.sh core && source $KEYWARD_CACHE/env.sh`",
        p.display()
    );
    p
}

/// The serial of a DER certificate: Certificate ::= SEQUENCE { tbs SEQUENCE { [0] version
/// OPTIONAL, serial INTEGER, ... } ... }.
fn der_serial(der: &[u8]) -> Option<String> {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let l0 = *b.get(1)? as usize;
        if l0 < 0x80 {
            return Some((tag, 2, l0));
        }
        let n = l0 & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (_, h, _) = header(der)?; // Certificate
    let tbs = der.get(h..)?;
    let (_, h, _) = header(tbs)?; // TBSCertificate
    let mut rest = tbs.get(h..)?;
    let (tag, h, len) = header(rest)?;
    if tag == 0xa0 {
        rest = rest.get(h + len..)?;
    }
    let (tag, h, len) = header(rest)?;
    (tag == 0x02).then_some(())?;
    let bytes = rest.get(h..h + len)?;
    Some(norm_serial(
        &bytes.iter().map(|b| format!("{b:02X}")).collect::<String>(),
    ))
}

/// One HTTPS request on a new connection to nginx at `port` as `web.shop.svc`, verifying the
/// certificate against the chain file: the serial served, or what failed.
async fn one_request(tls: &tokio_rustls::TlsConnector, port: u16) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("web.shop.svc").expect("name");
    let mut s = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let serial = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| der_serial(c))
        .ok_or("no peer certificate")?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.shop.svc\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    // nginx closes without close_notify after `Connection: close`: what was read counts.
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") || !text.ends_with("served\n") {
        return Err(format!("answer: {text:?}"));
    }
    Ok(serial)
}

struct Nginx {
    wrapper: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.wrapper.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.wrapper.wait();
    }
}

/// nginx serving HTTPS on 127.0.0.1:`port` from the files in `files`, run by
/// `keyward exec --on-change web=signal:HUP` against the broker `b`.
fn start_nginx(b: &BrokerProc, files: &Path, port: u16) -> Nginx {
    let nginx = nginx_bin();
    let dir = tempfile::Builder::new()
        .prefix("keyward-nginx")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name web.shop.svc;\n    ssl_certificate {f}/tls.crt;\n    ssl_certificate_key {f}/tls.key;\n    location / {{ return 200 \"served\\n\"; }}\n  }}\n}}\n",
            d = d.display(),
            f = files.display(),
        ),
    )
    .expect("nginx.conf");
    let log = std::fs::File::create(d.join("wrapper.log")).expect("log");
    let wrapper = Command::new(KEYWARD)
        .args([
            "exec",
            "--env=KW_CERT_SERIAL=web#serial_number",
            "--on-change=web=signal:HUP",
            "--",
        ])
        .arg(&nginx)
        .args(["-e"])
        .arg(d.join("error.log"))
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(&conf)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/bin")
        .env("KEYWARD_SOCKET", &b.socket)
        .env("KEYWARD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start keyward exec nginx");
    Nginx { wrapper, dir }
}

#[tokio::test]
async fn nginx_reloaded_by_sighup_serves_the_new_certificate_with_no_failed_request() {
    let v = TestVault::with_web_pki().await;
    let (_vol, files) = app_files();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &cert_config(&files, "20s"),
        &[],
    );
    ready(&b).await;
    let serial1 = file_serial(&files.join("tls.crt"));
    let port = support::free_port();
    let mut nginx = start_nginx(&b, &files, port);

    // The client trusts the chain file's CA and nothing else.
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for c in
            rustls::pki_types::CertificateDer::pem_file_iter(files.join("ca.crt")).expect("ca.crt")
        {
            roots.add(c.expect("CA")).expect("root");
        }
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(keyward_proxy::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));

    // nginx is up once one request succeeds; from then on every request must.
    let first = eventually(LONG, "nginx serving HTTPS", || {
        let ended = nginx.wrapper.try_wait().ok().flatten();
        let logs = nginx.dir.path().to_owned();
        let tls = &tls;
        async move {
            if let Some(status) = ended {
                panic!(
                    "keyward exec ended with {status}:\n{}\n{}",
                    std::fs::read_to_string(logs.join("wrapper.log")).unwrap_or_default(),
                    std::fs::read_to_string(logs.join("error.log")).unwrap_or_default()
                );
            }
            one_request(tls, port).await.ok()
        }
    })
    .await;
    assert_eq!(first, serial1);

    let stop = Arc::new(AtomicBool::new(false));
    // Every serial served, in order of change, and how many requests in a row got the last.
    let seen: Arc<Mutex<(Vec<String>, u64)>> = Arc::new(Mutex::new((vec![first], 1)));
    let client = {
        let (stop, seen, tls) = (stop.clone(), seen.clone(), tls.clone());
        tokio::spawn(async move {
            let mut requests = 0u64;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match one_request(&tls, port).await {
                    Ok(s) => {
                        let mut seen = seen.lock().expect("seen");
                        if seen.0.last() == Some(&s) {
                            seen.1 += 1;
                        } else {
                            seen.0.push(s);
                            seen.1 = 1;
                        }
                    }
                    Err(e) => failures.push(e),
                }
                requests += 1;
            }
            (requests, failures)
        })
    };
    // The certificate is issued again at about 2/3 of 20 s; the wrapper sends nginx SIGHUP and
    // new connections get the new certificate (for a moment old workers, finishing, may still
    // take one: wait until 20 requests in a row got it).
    let serial2 = eventually(LONG, "the client served a new serial, steadily", || async {
        let seen = seen.lock().expect("seen");
        seen.0
            .last()
            .filter(|s| **s != serial1 && seen.1 >= 20)
            .cloned()
    })
    .await;
    stop.store(true, Ordering::Release);
    let (requests, failures) = client.await.expect("client");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        file_serial(&files.join("tls.crt")),
        serial2,
        "the file's certificate"
    );
    let seen = seen.lock().expect("seen").0.clone();
    assert!(
        seen.iter().all(|s| *s == serial1 || *s == serial2),
        "only the two certificates: {seen:?}"
    );

    // The reload was the wrapper's SIGHUP, audited before it was sent.
    let signals: Vec<serde_json::Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "exec.signal")
        .collect();
    assert!(
        signals.iter().any(|r| r["secret"] == "web"
            && r["version"] == 2
            && r["reason"].as_str().is_some_and(|t| t.contains("SIGHUP"))),
        "{signals:?}"
    );
    drop(nginx);
}

/// A long-poll of the socket answers a new version only once the files rendered from it are
/// replaced: what `keyward exec --on-change …=signal:HUP` relies on to signal an app after its
/// files are in place. Each of five updates: the answer to `?index=N` comes, and the file read
/// right after holds the new value (four files read the secret, so the last rename of the four
/// is what the answer waits for).
#[tokio::test]
async fn a_long_poll_answers_a_new_version_only_once_its_files_are_replaced() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("cfg", json!({"value": "v1"})).await;
    let (_vol, dir) = app_files();
    let files: String = (0..4)
        .map(|i| {
            format!(
                "  - {{name: f{i}, container: app, dir: {}, path: f{i}, secret: cfg, key: value}}\n",
                dir.display()
            )
        })
        .collect();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "kv_refresh: 1s\nsecrets:\n  - {{name: cfg, path: secret/data/cfg}}\nfiles:\n{files}"
        ),
        &[],
    );
    ready(&b).await;
    for n in 2..=6u64 {
        let socket = b.socket.clone();
        let poll = tokio::spawn(async move {
            support::broker::get(
                &socket,
                &format!("/v1/secrets/cfg?index={}&wait=60s", n - 1),
            )
            .await
        });
        v.bao.kv_put("cfg", json!({"value": format!("v{n}")})).await;
        let answer = poll.await.expect("long-poll");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["version"], n, "{}", answer.body);
        for i in 0..4 {
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("f{i}"))).expect("file"),
                format!("v{n}"),
                "file f{i} when the long-poll answered version {n}"
            );
        }
    }
}

/// The workload's SVID as files (issue 13 §4) in a real `keyward sidecar`: the certificate
/// chain, its key and the trust bundle, rendered before the sidecar is ready, replaced when the
/// proxy rotates the SVID (a 12 s TTL), one `file.render` record per render naming the SPIFFE
/// ID, and no key material in the audit log or the logs.
#[tokio::test]
async fn the_workload_svid_as_files_is_rendered_and_kept_current() {
    let (vault, _pki) = support::pki::shop_vault().await;
    let (_vol, dir) = app_files();
    let extra = format!(
        "files:\n  - {{name: svid-app-cert, container: app, dir: {d}, path: svid.crt, identity: certificate}}\n  - {{name: svid-app-key, container: app, dir: {d}, path: svid.key, identity: private_key}}\n  - {{name: svid-app-bundle, container: app, dir: {d}, path: svid-bundle.crt, identity: bundle}}\n",
        d = dir.display()
    );
    let mut sc = support::pki::Sidecar::start(
        &vault.bao.addr(),
        support::pki::SidecarSpec {
            ttl: "12s",
            identity_uids: "[1000]",
            extra: &extra,
            ..support::pki::SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    sc.wait_ready().await;
    let crt = dir.join("svid.crt");
    let key = dir.join("svid.key");
    let bundle = dir.join("svid-bundle.crt");
    let check = || {
        let crt_s = crt.to_str().expect("path");
        let text = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", crt_s]);
        assert!(
            text.contains("URI:spiffe://cluster.local/ns/shop/sa/orders"),
            "{text}"
        );
        assert_eq!(
            openssl(&["x509", "-noout", "-pubkey", "-in", crt_s]),
            openssl(&["pkey", "-pubout", "-in", key.to_str().expect("path")]),
            "the key file holds the SVID's key"
        );
        let verified = openssl(&[
            "verify",
            "-partial_chain",
            "-CAfile",
            bundle.to_str().expect("path"),
            "-untrusted",
            crt_s,
            crt_s,
        ]);
        assert!(verified.trim().ends_with("OK"), "{verified}");
        (
            file_serial(&crt),
            std::fs::read_to_string(&key).expect("key"),
        )
    };
    // Ready only once the files are there.
    let (serial1, key1) = check();
    // The proxy rotates the SVID at about 2/3 of 12 s: the files follow.
    eventually(LONG, "the rotated SVID's files", || async {
        (file_serial(&crt) != serial1
            && std::fs::read_to_string(&key)
                .ok()
                .is_some_and(|k| k != key1))
        .then_some(())
    })
    .await;
    let (_, key2) = eventually(LONG, "a matching pair after the rotation", || async {
        std::panic::catch_unwind(check).ok()
    })
    .await;
    let renders: Vec<serde_json::Value> = sc
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "file.render" && r["secret"] == "identity")
        .collect();
    for path in ["svid.crt", "svid.key"] {
        let mine: Vec<_> = renders
            .iter()
            .filter(|r| r["path"] == dir.join(path).display().to_string())
            .collect();
        assert!(mine.len() >= 2, "{path}: {renders:?}");
        for r in mine {
            assert_eq!(r["decision"], "ok", "{r}");
            assert!(
                r["reason"].as_str().is_some_and(|t| t
                    .contains("for container app: SVID spiffe://cluster.local/ns/shop/sa/orders")),
                "{r}"
            );
        }
    }
    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&sc.audit).expect("audit"),
        sc.log()
    );
    for k in [&key1, &key2] {
        for line in key_lines(k) {
            assert!(
                !logs.contains(&line),
                "key material in the audit log or logs"
            );
        }
    }
}

/// A name the PKI role does not allow: Vault refuses the issue, the sidecar is not ready and
/// says why (the secret and Vault's reason), the refusal is recorded, and no file is written.
#[tokio::test]
async fn a_name_the_role_refuses_holds_readiness_naming_why_and_writes_nothing() {
    let v = TestVault::with_web_pki().await;
    let (_vol, dir) = app_files();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &cert_config(&dir, "1h").replace("web.shop.svc.cluster.local", "web.elsewhere.example"),
        &[],
    );
    let refused = eventually(LONG, "the refused issue recorded", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "vault.fetch" && r["decision"] == "error")
    })
    .await;
    assert_eq!(refused["secret"], "web", "{refused}");
    eventually(LONG, "the broker's socket listening", || async {
        std::os::unix::net::UnixStream::connect(&b.socket).ok()
    })
    .await;
    let ready = b.get("/v1/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("secret web not fetched yet")
            && ready.body.contains("web.elsewhere.example"),
        "{}",
        ready.body
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "nothing written"
    );
}
