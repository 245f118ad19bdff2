//! Prometheus metrics of the webhook: reviews by outcome and review latency.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::ReviewOutcome;

/// `outcome` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    injected,
    skipped,
    denied,
    ignored,
    /// Not an AdmissionReview this webhook can answer (HTTP 4xx).
    bad_request,
}

impl From<ReviewOutcome> for Outcome {
    fn from(o: ReviewOutcome) -> Self {
        match o {
            ReviewOutcome::Injected => Self::injected,
            ReviewOutcome::Skipped => Self::skipped,
            ReviewOutcome::Denied => Self::denied,
            ReviewOutcome::Ignored => Self::ignored,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// The webhook's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers `keyward_injector_reviews_total` and `keyward_injector_review_duration_seconds`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "keyward_injector_reviews",
            "AdmissionReviews answered, by outcome",
            reviews.clone(),
        );
        // 50 µs .. ~1.6 s.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 16,
        ));
        registry.register(
            "keyward_injector_review_duration_seconds",
            "Time from a complete request body to the response, in seconds",
            latency.clone(),
        );
        Self {
            registry,
            reviews,
            latency,
        }
    }

    /// Counts one review.
    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
        self.latency.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
