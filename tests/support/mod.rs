//! The test support of the workspace's integration tests lives in the `keyward-testkit` crate
//! (`testkit/`): real OpenBao, PostgreSQL and Envoy servers, the test PKI, service-account tokens,
//! the broker and sidecar processes. This module re-exports it under the names the tests use
//! (`support::bao`, `support::TestVault`, ...).
#![allow(dead_code, unused_imports)]

pub use keyward_testkit::*;

pub mod broker {
    pub use keyward_testkit::broker::*;

    /// The `keyward` binary cargo built for this test (the harnesses find the same one with
    /// `keyward_testkit::keyward_bin`).
    pub const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");
}
