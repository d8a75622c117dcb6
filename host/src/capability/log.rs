//! The `log` capability: plugin log lines go to the gateway's `tracing`
//! output, attributed to plugin and route.

use crate::plugin::bindings::ficus::gateway::log::Level;

/// Emit one plugin log line.
pub fn emit(plugin: &str, route: &str, level: Level, message: &str) {
    // Bound what a plugin can push into the log per line.
    const MAX: usize = 4096;
    let message = truncate(message, MAX);
    match level {
        Level::Trace => tracing::trace!(target: "ficus::plugin", plugin, route, "{message}"),
        Level::Debug => tracing::debug!(target: "ficus::plugin", plugin, route, "{message}"),
        Level::Info => tracing::info!(target: "ficus::plugin", plugin, route, "{message}"),
        Level::Warn => tracing::warn!(target: "ficus::plugin", plugin, route, "{message}"),
        Level::Error => tracing::error!(target: "ficus::plugin", plugin, route, "{message}"),
    }
}

/// Whether a level is enabled for plugin log lines.
pub fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "ficus::plugin", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "ficus::plugin", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "ficus::plugin", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "ficus::plugin", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "ficus::plugin", tracing::Level::ERROR),
    }
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
