//! Test support shared by the host's unit tests (and, by `#[path]`, by
//! `tests/e2e`).

pub(crate) mod hanging;
pub(crate) mod nats_server;
