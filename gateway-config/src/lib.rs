//! Ficus configuration: the typed model of the gateway's TOML file, its validation and its
//! JSON Schema.
//!
//! ```no_run
//! # use std::path::Path;
//! let config = ficus_config::load(Path::new("gateway.toml")).unwrap_or_else(|errors| {
//!     eprintln!("{errors}"); // one `file:line:column: key.path: message` per line
//!     std::process::exit(2);
//! });
//! for (i, route) in config.routes.iter().enumerate() {
//!     println!("{} -> {:?}", config.route_name(i), route.upstream);
//! }
//! ```
//!
//! Loading happens in three steps, each reporting errors located by file, line, column and key
//! path (e.g. `routes[2].pipeline[0].plugin`):
//!
//! 1. TOML syntax (`toml_edit`, which keeps the spans used to locate every later error);
//! 2. shape (serde with `deny_unknown_fields`): unknown keys, wrong types, bad enum values;
//! 3. [`Config::validate`]: ranges, addresses, cross references, duplicates, unreachable
//!    routes — every problem at once.
//!
//! Errors found later by the host (a plugin that does not load, a plugin configuration the
//! plugin rejects) are reported the same way through [`Config::error_at`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;

mod error;
mod leader;
pub mod locate;
mod model;
mod projections;
pub mod subject;
mod subscriptions;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use leader::{Every, Leader, Tick};
pub use model::{
    Backend, BackendKind, CallMode, Canary, Config, Delivery, Grant, InstanceMode, LbPolicy, Match,
    OnError, PathRule, PipelineStep, Plugin, PubSub, Route, Server, Subscription, Upstream,
};
pub use projections::Projection;

use locate::{line_col, Locator};

/// Reads, parses and validates the configuration file at `path`.
///
/// Relative paths inside it are relative to its directory (see [`Config::resolve`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(path, "", format!("cannot read the configuration file: {e}"))
    })?;
    parse_str(&text, path)
}

/// Parses and validates configuration `text`, reporting errors against `file` (which also
/// anchors relative paths, see [`Config::resolve`]; it is not read).
///
/// On success methods are uppercased, and match hosts and header names lowercased.
pub fn parse_str(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    if let Err(e) = toml_edit::Document::parse(text) {
        return Err(at_span(text, file, e.span(), "", e.message()).into());
    }
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let key_path = e
            .span()
            .and_then(|span| Locator::new(text).path_at(span.start))
            .unwrap_or_default();
        at_span(text, file, e.span(), &key_path, e.message())
    })?;
    config.set_origin(file, text);
    config.validate()?;
    config.normalise();
    Ok(config)
}

/// An error at a byte span of `text`.
fn at_span(
    text: &str,
    file: &Path,
    span: Option<std::ops::Range<usize>>,
    key_path: &str,
    message: &str,
) -> ConfigError {
    let position = span.map(|s| line_col(text, s.start));
    ConfigError {
        file: file.to_path_buf(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        key_path: key_path.to_owned(),
        message: message.trim().to_owned(),
    }
}

/// JSON Schema (draft 2020-12) of the configuration file, pretty-printed; editors can use it
/// to complete and check `gateway.toml` (through a TOML language server).
pub fn schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).expect("a JSON Schema always serialises")
}
