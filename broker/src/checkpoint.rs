//! Checkpoints of the audit chain in Vault (`audit.checkpoint`): the chain's id, the `seq` and
//! hash of its last record, the time and the pod, written to the KV v2 path
//! `MOUNT/data/PREFIX/NAMESPACE/POD_NAME` every `every_records` records or `every`, whichever
//! comes first, and once more at shutdown before the token is revoked. Each write is a new
//! version of the path, and Vault keeps the versions: a reviewer compares them with the records
//! (`keyward audit verify --checkpoints`), so a rewrite or removal of any record up to the last
//! checkpoint is detectable without trusting the pod.
//!
//! A failed write is logged, counted (`keyward_audit_checkpoint_failures_total`) and retried
//! with a growing delay (at most `every`); it never stops serving. The decision when to write
//! is [`Schedule::due`], with the time as an input; the loop around it is the I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_config::CheckpointSettings;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Inner;

/// How often the loop looks at the chain's head: often enough that `every_records` is kept
/// to within a fraction of a second under load; looking costs one lock.
const POLL: Duration = Duration::from_millis(200);
/// The first retry after a failed write.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// When the next checkpoint is due: pure state, time given by the caller.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    every_records: u64,
    every: Duration,
    /// `seq` of the last checkpoint written (0: none yet).
    written_seq: u64,
    /// When the last checkpoint was written (or the schedule began).
    written_at: Instant,
    /// After a failure: not before then, and the delay after the next failure.
    retry: Option<(Instant, Duration)>,
}

impl Schedule {
    pub(crate) fn new(settings: &CheckpointSettings, now: Instant) -> Self {
        Self {
            every_records: settings.every_records.max(1),
            every: settings.every,
            written_seq: 0,
            written_at: now,
            retry: None,
        }
    }

    /// Whether a checkpoint of a chain whose last record is `head_seq` is due at `now`: there
    /// are records since the last one, and `every_records` of them or `every` since it (and no
    /// failed write's retry delay is running).
    pub(crate) fn due(&self, head_seq: u64, now: Instant) -> bool {
        if head_seq <= self.written_seq {
            return false;
        }
        if let Some((not_before, _)) = self.retry {
            return now >= not_before;
        }
        head_seq - self.written_seq >= self.every_records
            || now.saturating_duration_since(self.written_at) >= self.every
    }

    pub(crate) fn written(&mut self, seq: u64, now: Instant) {
        self.written_seq = self.written_seq.max(seq);
        self.written_at = now;
        self.retry = None;
    }

    /// A write failed at `now`: retry after 1 s, then twice as long each time, at most `every`.
    pub(crate) fn failed(&mut self, now: Instant) {
        let delay = self.retry.map_or(FIRST_RETRY, |(_, d)| {
            (d * 2).min(self.every.max(FIRST_RETRY))
        });
        self.retry = Some((now + delay, delay));
    }

    pub(crate) fn written_seq(&self) -> u64 {
        self.written_seq
    }
}

/// The KV v2 data path of this pod's checkpoints, or why there is none.
pub(crate) fn data_path(settings: &CheckpointSettings, ctx: &Inner) -> Result<String, String> {
    let pod = ctx
        .vault
        .pod_identity()
        .ok_or("the pod identity is not known yet (no login)")?;
    let ok =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('?');
    if !ok(&pod.namespace) || !ok(&pod.pod_name) {
        return Err(format!(
            "the service-account token names no usable namespace and pod name ({:?}/{:?}): \
             checkpoints are written per pod (a projected token names its pod)",
            pod.namespace, pod.pod_name
        ));
    }
    Ok(format!(
        "{}/data/{}/{}/{}",
        settings.mount, settings.prefix, pod.namespace, pod.pod_name
    ))
}

/// Writes one checkpoint of the chain's current head; returns the `seq` written.
async fn write(settings: &CheckpointSettings, ctx: &Inner) -> Result<u64, String> {
    let path = data_path(settings, ctx)?;
    let (seq, head) = ctx.audit.head().map_err(|e| e.to_string())?;
    let pod = ctx.vault.pod_identity().unwrap_or_default();
    let body = json!({"data": {
        "chain": ctx.audit.chain_id(),
        "seq": seq,
        "head": head,
        "time": keyward_audit::now_rfc3339(),
        "pod_uid": pod.pod_uid,
        "namespace": pod.namespace,
        "pod_name": pod.pod_name,
    }});
    ctx.vault
        .write(&path, &body)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(seq)
}

/// Writes a checkpoint and keeps the metrics and the schedule; never fails the caller.
async fn write_noting(settings: &CheckpointSettings, ctx: &Inner, schedule: &mut Schedule) {
    let seq_before = ctx.audit.last_seq();
    match write(settings, ctx).await {
        Ok(seq) => {
            schedule.written(seq, Instant::now());
            ctx.metrics
                .checkpoint_last_seq
                .set(i64::try_from(seq).unwrap_or(i64::MAX));
            tracing::debug!(
                seq,
                chain = ctx.audit.chain_id(),
                "Audit checkpoint written"
            );
        }
        Err(e) => {
            schedule.failed(Instant::now());
            ctx.metrics.checkpoint_failures.inc();
            tracing::warn!(
                error = %e,
                seq = seq_before,
                anchored_seq = schedule.written_seq(),
                "Audit checkpoint could not be written to Vault; serving goes on, retrying"
            );
        }
    }
}

fn settings(ctx: &Inner) -> Option<CheckpointSettings> {
    ctx.config.audit.checkpoint.clone().filter(|c| c.enabled)
}

/// Writes checkpoints while the broker runs (nothing unless `audit.checkpoint` is enabled).
pub(crate) async fn run(ctx: Arc<Inner>, shutdown: CancellationToken) {
    let Some(settings) = settings(&ctx) else {
        return;
    };
    tokio::select! {
        () = ctx.vault.wait_logged_in() => {}
        () = shutdown.cancelled() => return,
    }
    let mut schedule = Schedule::new(&settings, Instant::now());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if schedule.due(ctx.audit.last_seq(), Instant::now()) {
            write_noting(&settings, &ctx, &mut schedule).await;
        }
    }
}

/// The last checkpoint, at shutdown: after the loops stopped and before the Vault token is
/// revoked. Written when there are records since the last one written.
pub(crate) async fn at_shutdown(ctx: &Inner) {
    let Some(settings) = settings(ctx) else {
        return;
    };
    let written = u64::try_from(ctx.metrics.checkpoint_last_seq.get()).unwrap_or(0);
    if ctx.audit.last_seq() <= written || !ctx.vault.is_logged_in() {
        return;
    }
    let mut schedule = Schedule::new(&settings, Instant::now());
    write_noting(&settings, ctx, &mut schedule).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(every_records: u64, every: u64) -> CheckpointSettings {
        CheckpointSettings {
            every_records,
            every: Duration::from_secs(every),
            ..CheckpointSettings::default()
        }
    }

    #[test]
    fn a_checkpoint_is_due_after_n_records_or_t_seconds_whichever_first_and_only_with_new_records()
    {
        let t0 = Instant::now();
        let mut s = Schedule::new(&settings(10, 60), t0);
        assert!(
            !s.due(0, t0 + Duration::from_secs(600)),
            "no records, no checkpoint"
        );
        assert!(!s.due(9, t0 + Duration::from_secs(59)));
        assert!(s.due(10, t0 + Duration::from_secs(1)), "N records");
        assert!(s.due(1, t0 + Duration::from_secs(60)), "T seconds");
        s.written(10, t0 + Duration::from_secs(1));
        assert!(!s.due(10, t0 + Duration::from_secs(600)), "nothing new");
        assert!(!s.due(19, t0 + Duration::from_secs(60)));
        assert!(s.due(20, t0 + Duration::from_secs(2)));
        assert!(s.due(11, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_failed_checkpoint_is_retried_with_a_growing_delay_capped_at_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&settings(1, 5), t0);
        assert!(s.due(3, t0));
        s.failed(t0);
        assert!(!s.due(3, t0 + Duration::from_millis(999)));
        assert!(s.due(3, t0 + Duration::from_secs(1)));
        let mut at = t0 + Duration::from_secs(1);
        let mut delays = Vec::new();
        for _ in 0..5 {
            s.failed(at);
            let (next, d) = s.retry.expect("retrying");
            delays.push(d.as_secs());
            at = next;
        }
        assert_eq!(delays, [2, 4, 5, 5, 5]);
        s.written(3, at);
        assert!(!s.due(3, at + Duration::from_secs(100)));
        assert!(s.due(4, at), "every_records 1: due at once again");
    }
}
