//! The injector: the mutating admission webhook that adds the keyward sidecar to pods, and the
//! offline `keyward inject` that applies the same mutation to YAML manifests.

pub mod annotations;
pub mod certs;
pub mod config;
pub mod install;
pub mod metrics;
pub mod mutate;
pub mod offline;
pub mod quantity;
pub mod review;
pub mod server;
pub mod yaml11;

pub mod cli {
    //! `keyward injector` and `keyward inject`.
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::Duration;

    use tracing::{error, info};

    use crate::config::InjectorConfig;
    use crate::server::{self, ServerOptions, TlsReloader, Webhook};

    /// Arguments of `keyward injector`.
    #[derive(Debug, clap::Args)]
    pub struct InjectorArgs {
        /// Address the HTTPS webhook listens on.
        #[arg(long, default_value = "0.0.0.0:8443", env = "KEYWARD_INJECTOR_LISTEN")]
        pub listen: SocketAddr,
        /// PEM certificate chain of the webhook, re-read when the file changes.
        #[arg(long, default_value = "/etc/keyward/tls/tls.crt")]
        pub tls_cert: PathBuf,
        /// PEM private key of the webhook, re-read when the file changes.
        #[arg(long, default_value = "/etc/keyward/tls/tls.key")]
        pub tls_key: PathBuf,
        /// Injector config (YAML): sidecar defaults. Built-in defaults when absent.
        #[arg(long)]
        pub config: Option<PathBuf>,
        /// Optional plain-HTTP listener for /metrics and /healthz (never /mutate).
        #[arg(long)]
        pub metrics_listen: Option<SocketAddr>,
        /// Open connections at most (each holds up to about 100 KiB of buffers).
        #[arg(long, default_value_t = 512)]
        pub max_connections: usize,
        /// Reviews computed at once at most.
        #[arg(long, default_value_t = 64)]
        pub max_concurrent_reviews: usize,
        /// Seconds allowed to read and answer one request.
        #[arg(long, default_value_t = 10)]
        pub request_timeout_secs: u64,
        /// MiB that reviews in progress may hold together: each request reserves 4 bytes per
        /// body byte (at least 1 MiB) before its body is read; 503 when that does not fit.
        #[arg(long, default_value_t = 40)]
        pub memory_budget_mib: usize,
        /// The webhook's own certificate (tls.mode injector).
        #[command(flatten)]
        pub self_signed: SelfSignedArgs,
    }

    /// `keyward injector --self-signed-*`: the injector provisions its serving certificate.
    #[derive(Debug, Default, clap::Args)]
    pub struct SelfSignedArgs {
        /// Provision the serving certificate in this Secret (created when missing, renewed
        /// before expiry) and write it to --tls-cert/--tls-key (docs/injector.md, tls.mode
        /// injector). Needs the --self-signed-* settings below.
        #[arg(long, requires_all = ["self_signed_namespace", "self_signed_service", "self_signed_webhook"])]
        pub self_signed_secret: Option<String>,
        /// Namespace of that Secret and of the webhook's Service.
        #[arg(long)]
        pub self_signed_namespace: Option<String>,
        /// The webhook's Service name (the certificate's DNS names).
        #[arg(long)]
        pub self_signed_service: Option<String>,
        /// MutatingWebhookConfiguration whose caBundle is set to the CA.
        #[arg(long)]
        pub self_signed_webhook: Option<String>,
        /// More DNS names or IP addresses for the serving certificate.
        #[arg(long)]
        pub self_signed_san: Vec<String>,
        /// Kubernetes API URL (default: from KUBERNETES_SERVICE_HOST/PORT).
        #[arg(long)]
        pub kube_api: Option<String>,
        /// Bearer token file for the API (default: the pod's service-account token).
        #[arg(long)]
        pub kube_token_file: Option<PathBuf>,
        /// CA bundle of the API server (default: the pod's service-account ca.crt).
        #[arg(long)]
        pub kube_ca_file: Option<PathBuf>,
    }

    /// Arguments of `keyward inject`.
    #[derive(Debug, clap::Args)]
    pub struct InjectArgs {
        /// Manifest to read, `-` for stdin (the default).
        #[arg(short = 'f', long = "filename", default_value = "-")]
        pub file: String,
        /// Injector config (YAML) with the sidecar defaults. Built-in defaults when absent.
        #[arg(long)]
        pub config: Option<PathBuf>,
    }

    fn load_config(path: Option<&PathBuf>) -> Result<InjectorConfig, crate::config::ConfigError> {
        match path {
            Some(p) => InjectorConfig::load(p),
            None => Ok(InjectorConfig::default()),
        }
    }

    /// Runs `keyward injector`.
    pub fn run_injector(args: InjectorArgs) -> ExitCode {
        // Everything is validated before any port is bound.
        let cfg = match load_config(args.config.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("keyward injector: {e}");
                return ExitCode::FAILURE;
            }
        };
        let provisioner = match self_signed(&args) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("keyward injector: {e} (--self-signed-*, --kube-*)");
                return ExitCode::FAILURE;
            }
        };
        let opts = ServerOptions {
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
            max_connections: args.max_connections,
            max_concurrent_reviews: args.max_concurrent_reviews,
            memory_budget: args.memory_budget_mib.saturating_mul(1024 * 1024),
            ..ServerOptions::default()
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("keyward injector: starting the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async move {
            if let Some(p) = &provisioner {
                // The webhook cannot answer before it has a certificate the caBundle names.
                p.ensure_until_ok().await;
            }
            let tls = match TlsReloader::new(args.tls_cert.clone(), args.tls_key.clone()) {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    eprintln!("keyward injector: {e} (--tls-cert/--tls-key)");
                    return ExitCode::FAILURE;
                }
            };
            let app = Arc::new(Webhook::new(cfg, opts));
            let listener = match tokio::net::TcpListener::bind(args.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("keyward injector: binding {} (--listen): {e}", args.listen);
                    return ExitCode::FAILURE;
                }
            };
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let mut tasks = Vec::new();
            if let Some(addr) = args.metrics_listen {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => tasks.push(tokio::spawn(server::serve_metrics(
                        l,
                        app.clone(),
                        stopped(stop_rx.clone()),
                    ))),
                    Err(e) => {
                        eprintln!("keyward injector: binding {addr} (--metrics-listen): {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if let Some(p) = provisioner {
                tasks.push(tokio::spawn(p.run(stopped(stop_rx.clone()))));
            }
            info!(listen = %args.listen, "Injector webhook listening");
            tasks.push(tokio::spawn(server::serve(
                listener,
                tls,
                app,
                stopped(stop_rx),
            )));
            shutdown_signal().await;
            info!("Shutting down");
            let _ = stop_tx.send(true);
            for t in tasks {
                if let Err(e) = t.await {
                    error!(error = %e, "Server task failed");
                }
            }
            ExitCode::SUCCESS
        })
    }

    /// The certificate provisioner of `--self-signed-secret`, if set.
    fn self_signed(
        args: &InjectorArgs,
    ) -> Result<Option<crate::certs::Provisioner>, crate::certs::CertError> {
        let a = &args.self_signed;
        let (Some(secret), Some(namespace), Some(service), Some(webhook)) = (
            &a.self_signed_secret,
            &a.self_signed_namespace,
            &a.self_signed_service,
            &a.self_signed_webhook,
        ) else {
            return Ok(None);
        };
        let api = crate::certs::KubeApi::new(
            a.kube_api.clone(),
            a.kube_token_file.clone(),
            a.kube_ca_file.clone(),
        )?;
        Ok(Some(crate::certs::Provisioner {
            api,
            namespace: namespace.clone(),
            secret: secret.clone(),
            webhook: webhook.clone(),
            names: crate::certs::service_names(service, namespace, &a.self_signed_san),
            cert_file: args.tls_cert.clone(),
            key_file: args.tls_key.clone(),
        }))
    }

    async fn shutdown_signal() {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }

    /// Runs `keyward inject`.
    pub fn run_inject(args: InjectArgs) -> ExitCode {
        let cfg = match load_config(args.config.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("keyward inject: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut text = String::new();
        let read = if args.file == "-" {
            std::io::stdin().read_to_string(&mut text)
        } else {
            std::fs::File::open(&args.file).and_then(|mut f| f.read_to_string(&mut text))
        };
        if let Err(e) = read {
            eprintln!("keyward inject: reading {}: {e}", args.file);
            return ExitCode::FAILURE;
        }
        match crate::offline::inject_stream(&text, &cfg) {
            Ok(out) => {
                let mut stdout = std::io::stdout().lock();
                if let Err(e) = stdout
                    .write_all(out.as_bytes())
                    .and_then(|()| stdout.flush())
                {
                    eprintln!("keyward inject: writing stdout: {e}");
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyward inject: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
