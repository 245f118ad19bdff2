//! Benchmark drivers: keyward side by side with its peers (see bench/README.md).
pub mod pki;
