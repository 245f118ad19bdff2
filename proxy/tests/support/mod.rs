//! Support shared by the proxy's integration tests.
#![allow(dead_code)]

pub mod testpki;
