//! Vault's answers through the broker's own decoding (`keyward_broker::fuzzing`, the seam of the
//! `vault_response` fuzz target): what the fuzzer found, kept as tests.

use std::time::{Instant, SystemTime};

use keyward_broker::fuzzing::{login_answer, read_answer, renewal_answer, MAX_LEASE_DURATION};

const LIMIT: usize = 64 << 10;

/// Found while writing the `vault_response` fuzz oracle, which checks it (seeds
/// `fuzz/seeds/vault_response/huge-lease-duration-*.bin`): a `lease_duration` of 2^64-1 seconds
/// was kept as it came, and the broker's `now + ttl` (a lease's end in refresh.rs,
/// `TokenState::expires_at` in the auth loop) panicked on overflow.
#[test]
fn a_ttl_beyond_any_clock_is_held_to_the_maximum_instead_of_overflowing_the_clock() {
    let huge = u64::MAX;
    let leased = format!(
        r#"{{"request_id":"r","lease_id":"database/creds/app/x","renewable":true,"lease_duration":{huge},"data":{{"username":"u","password":"p"}}}}"#
    );
    let fetched = read_answer("database/creds/app", 200, leased.as_bytes(), LIMIT)
        .expect("a leased read with a long lease is served");
    let lease = fetched.lease.as_ref().expect("the lease is kept");
    assert_eq!(lease.ttl, MAX_LEASE_DURATION);
    assert!(SystemTime::now().checked_add(lease.ttl).is_some());

    let login = format!(
        r#"{{"auth":{{"client_token":"s.tok","accessor":"acc","lease_duration":{huge},"renewable":true}}}}"#
    );
    let (token, accessor) = login_answer(200, login.as_bytes(), LIMIT).expect("login");
    assert_eq!(accessor, "acc");
    assert_eq!(token.ttl, MAX_LEASE_DURATION);
    assert!(token.expires_at() > Instant::now());

    let renewed = format!(r#"{{"lease_id":"x","renewable":true,"lease_duration":{huge}}}"#);
    let resp = renewal_answer(200, renewed.as_bytes(), LIMIT).expect("renewal");
    assert_eq!(resp.lease_duration, MAX_LEASE_DURATION);
    let renew_self = format!(r#"{{"auth":{{"client_token":"t","lease_duration":{huge}}}}}"#);
    let resp = renewal_answer(200, renew_self.as_bytes(), LIMIT).expect("renew-self");
    assert_eq!(resp.lease_duration, MAX_LEASE_DURATION);
}

/// The ordinary TTLs are kept as Vault granted them (the bound above changes nothing else).
#[test]
fn a_ttl_within_the_maximum_is_kept_as_granted() {
    let body = br#"{"lease_id":"database/creds/app/x","renewable":true,"lease_duration":3600,"data":{"password":"p"}}"#;
    let fetched = read_answer("database/creds/app", 200, body, LIMIT).expect("read");
    let lease = fetched.lease.as_ref().expect("lease");
    assert_eq!(lease.ttl.as_secs(), 3600);
    assert!(lease.renewable);
    let max = MAX_LEASE_DURATION.as_secs();
    let body = format!(r#"{{"lease_duration":{max}}}"#);
    let resp = renewal_answer(200, body.as_bytes(), LIMIT).expect("renewal");
    assert_eq!(resp.lease_duration, MAX_LEASE_DURATION);
}
