//! Log lines through the host (capability `log`).
//!
//! The host attributes each line to the plugin and route. Calling any function
//! here makes the component import `ficus:gateway/log`, so the route must grant
//! `"log"`; a plugin that never logs does not import it.

use crate::wit::ficus::gateway::log as host;

pub use host::Level;

/// Emit a log line at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    host::log(level, message.as_ref());
}

/// Whether lines at `level` are currently recorded; check it before building
/// an expensive message.
pub fn enabled(level: Level) -> bool {
    host::enabled(level)
}

/// Emit a line at `trace` level.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Emit a line at `debug` level.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Emit a line at `info` level.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Emit a line at `warn` level.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Emit a line at `error` level.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}
