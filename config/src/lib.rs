//! The sidecar config contract: what the injector may write and the sidecar must accept.
//!
//! Each rule exists once, here. The injector checks annotations against these rules and the
//! sidecar checks its config against the same functions, so a value one side admits can never be
//! refused by the other (`tests/injected_config.rs` holds the two to that over the whole
//! annotation grammar).

mod rules;

pub use rules::{
    valid_secret_key, valid_secret_name, valid_vault_path, MAX_SECRET_KEY_LEN, MAX_SECRET_NAME_LEN,
    MAX_VAULT_PATH_LEN, VAULT_PATH_RULE,
};
