//! Ficus: a WebAssembly plugin gateway.
//!
//! A hyper server routes each request to a per-route pipeline of sandboxed
//! Wasm component filters (wasmtime), then to an upstream cluster or a
//! `wasi:http` handler component. See the README for the architecture.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod capability;
pub mod conn_timer;
pub mod gateway;
pub mod pipeline;
pub mod plugin;
pub mod projection;
pub mod reload;
pub mod scaffold;
pub mod server;
pub mod storage;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testing;

/// Lock a mutex whose data stays consistent even if a holder panicked (a
/// poisoned lock is taken over, not propagated).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Directory holding the plugins built from `plugins/` by the build script.
pub const WASM_DIR: &str = env!("FICUS_WASM_DIR");
