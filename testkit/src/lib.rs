//! Test support for keyward's tests, shared by the workspace's integration tests (`tests/`,
//! through the `tests/support` shim), the crates' own tests and the test crates `e2e` and
//! `bench`. Never a dependency of a product crate: `cargo tree -e normal` of any of them shows
//! no `keyward-testkit`.
