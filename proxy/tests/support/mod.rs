//! Support shared by the proxy's integration tests: the test PKI of `keyward-testkit`.
#![allow(dead_code)]

pub use keyward_testkit::testpki;
