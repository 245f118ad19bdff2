//! Owned by the proxy tests (see tests/proxy_*.rs).
