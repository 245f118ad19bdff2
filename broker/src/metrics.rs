//! The broker's Prometheus metrics. They carry names and outcomes, never values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `keyward_audit_last_seq`: the sequence number of the last record in the audit log, read at
/// scrape time. Its history, kept by the collector outside the pod, shows a log that lost its
/// last lines (`keyward audit verify --min-records`).
#[derive(Debug)]
pub struct AuditLastSeq(pub std::sync::Arc<keyward_audit::AuditLog>);

impl prometheus_client::collector::Collector for AuditLastSeq {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
            i64::try_from(self.0.last_seq()).unwrap_or(i64::MAX),
        );
        let mut metric = encoder.encode_descriptor(
            "keyward_audit_last_seq",
            "Sequence number of the last record of the running audit chain (0 before its first)",
            None,
            gauge.metric_type(),
        )?;
        // The chain it counts in: `keyward audit verify --expect CHAIN=SEQ` takes both.
        let chain = [("chain", self.0.chain_id().to_owned())];
        gauge.encode(metric.encode_family(&chain)?)?;
        // 0 while records cannot be written (reads and connections are refused until they
        // can; `/ready` says why).
        let writable =
            prometheus_client::metrics::gauge::ConstGauge::new(i64::from(self.0.writable()));
        let metric = encoder.encode_descriptor(
            "keyward_audit_writable",
            "1 when audit records can be written, 0 while they cannot (what needs a record is refused)",
            None,
            writable.metric_type(),
        )?;
        writable.encode(metric)
    }
}

/// `keyward_secret_lease_expiry_timestamp_seconds{secret}`: when the lease of each leased
/// secret's cached value ends (Unix seconds, as last renewed), read at scrape time. Past
/// `time()` the value is no longer served (`503`) until a new one is fetched: the "secret past
/// its lease" alert. Secrets without a lease (KV) have no sample; the family is always
/// declared.
#[derive(Debug)]
pub struct SecretLeases(pub Vec<std::sync::Arc<crate::cache::Entry>>);

impl prometheus_client::collector::Collector for SecretLeases {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::TypedMetric;
        let mut metric = encoder.encode_descriptor(
            "keyward_secret_lease_expiry_timestamp_seconds",
            "Unix time the lease of the secret's cached value ends (as last renewed); past it the value is not served",
            None,
            ConstGauge::<i64>::TYPE,
        )?;
        for entry in &self.0 {
            let Some(lease) = entry.value().and_then(|v| v.lease) else {
                continue;
            };
            let at = lease
                .expires_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            let label = [("secret", entry.spec.name.clone())];
            ConstGauge::new(at).encode(metric.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    pub secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub decision: String,
}

/// Counters and gauges shared by the broker's tasks (clones share the same values).
#[derive(Clone, Debug, Default)]
pub struct BrokerMetrics {
    pub logins: Family<ResultLabel, Counter>,
    pub token_renewals: Family<ResultLabel, Counter>,
    pub logged_in: Gauge,
    pub fetch_errors: Family<SecretLabel, Counter>,
    pub fetches: Family<SecretLabel, Counter>,
    pub lease_renewals: Family<ResultLabel, Counter>,
    pub requests: Family<RequestLabel, Counter>,
    pub audit_failures: Counter,
    /// Checkpoints of the audit chain that could not be written to Vault.
    pub checkpoint_failures: Counter,
    /// `seq` of the last checkpoint written to Vault (0: none yet).
    pub checkpoint_last_seq: Gauge,
    /// Socket connections refused at `socket.max_connections` (`503 too_many_connections`).
    pub socket_refused: Counter,
}

impl BrokerMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "keyward_vault_logins",
            "Vault logins by result",
            self.logins.clone(),
        );
        r.register(
            "keyward_vault_token_renewals",
            "Vault token renewals by result",
            self.token_renewals.clone(),
        );
        r.register(
            "keyward_vault_logged_in",
            "1 while the broker holds a valid Vault token",
            self.logged_in.clone(),
        );
        r.register(
            "keyward_secret_fetches",
            "Successful secret fetches from Vault",
            self.fetches.clone(),
        );
        r.register(
            "keyward_secret_fetch_errors",
            "Failed secret fetches from Vault",
            self.fetch_errors.clone(),
        );
        r.register(
            "keyward_lease_renewals",
            "Lease renewals by result",
            self.lease_renewals.clone(),
        );
        r.register(
            "keyward_socket_requests",
            "Socket API requests touching a secret, by decision",
            self.requests.clone(),
        );
        r.register(
            "keyward_audit_write_failures",
            "Audit records that could not be written (the access was refused)",
            self.audit_failures.clone(),
        );
        r.register(
            "keyward_audit_checkpoint_failures",
            "Audit checkpoints that could not be written to Vault (retried; serving goes on)",
            self.checkpoint_failures.clone(),
        );
        r.register(
            "keyward_audit_checkpoint_last_seq",
            "Sequence number of the last audit record anchored by a checkpoint in Vault",
            self.checkpoint_last_seq.clone(),
        );
        r.register(
            "keyward_socket_connections_refused",
            "Socket connections refused because socket.max_connections were open (503 too_many_connections)",
            self.socket_refused.clone(),
        );
    }

    pub fn result(r: &str) -> ResultLabel {
        ResultLabel { result: r.into() }
    }

    pub fn secret(s: &str) -> SecretLabel {
        SecretLabel { secret: s.into() }
    }
}
