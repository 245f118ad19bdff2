//! The `identity` and `proxy` sections of the sidecar config. Their types, defaults and rules
//! are the contract in `keyward_config` (the injector writes them, the broker's loader parses
//! and validates the whole document once); this module re-exports them for the proxy.

pub use keyward_config::{
    pattern_in_domain, split_host_port, ConfigError, ExposedAppPort, IdentityConfig, InboundConfig,
    OutboundConfig, ProxyConfig,
};
