//! `keyward exec`: the exec wrapper (see docs/delivery.md).
