//! End-to-end tests: the real `ficus` binary (`ficus run`, `ficus check`) against real
//! upstream servers on loopback and the real plugins built by `host/build.rs`.
//!
//! One test binary; one module per area; shared helpers in [`support`]. Each module starts one
//! gateway for all its tests where it can (see [`support::Shared`]); tests that stop or break
//! a gateway start their own.

mod support;

/// A loopback endpoint where connects hang (the host's test harness, shared by path).
#[path = "../../host/src/testing/hanging.rs"]
mod hanging;

/// Real nats-server processes (the host's test harness, shared by path).
#[path = "../../host/src/testing/nats_server.rs"]
mod nats_server;

mod ambassador;
mod breaker;
mod cluster;
mod config;
mod cqrs;
mod handler;
mod leader;
mod lifecycle;
mod pipeline;
mod polyglot;
mod projection;
mod pubsub;
mod reload;
mod routing;
mod sandbox;
mod scaffold;
mod shard;
mod strangler;
mod sync_calls;
mod upstream;
