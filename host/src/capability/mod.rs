//! Host capabilities that plugins import through WIT (`log`, `metrics`,
//! `state`). Each capability is linked only into plugins whose config grants
//! it; see [`crate::plugin::linker`].

pub mod events;
pub mod log;
pub mod metrics;
pub mod state;
