//! `ficus plugin new` and `ficus plugin build`: start a filter plugin project
//! in Rust, Python or JavaScript from templates embedded in this binary, and
//! build it into a component with the language's own toolchain.
//!
//! A plugin project is a directory with a `ficus-plugin.toml` ([`Manifest`])
//! naming the plugin and its language:
//!
//! | language | sources | toolchain run by `ficus plugin build` |
//! | --- | --- | --- |
//! | `rust` | `Cargo.toml`, `src/lib.rs` (depends on `ficus-sdk` by path) | `cargo build --release --target wasm32-wasip2` |
//! | `python` | `app.py`, `wit/` | `componentize-py -d wit -w plugin componentize app` |
//! | `js` | `filter.js`, `wit/` | `componentize-js filter.js --wit wit --world-name plugin -d http -d fetch-event` |
//!
//! The component lands in `build/<name>.wasm`. Python and JavaScript projects
//! carry the Ficus contract in `wit/deps/ficus-gateway/gateway.wit` and their
//! own world in `wit/world.wit` (which host capabilities they import); Rust
//! projects get both from the SDK. The toolchains are looked up as
//! [`Toolbox`] describes; a missing one is reported with what to install.

mod builder;
pub mod cli;
mod manifest;
mod new;
mod tools;

pub use builder::{build, BuildOptions, Built};
pub use manifest::{Manifest, MANIFEST_FILE};
pub use new::{new_project, Created, NewOptions};
pub use tools::Toolbox;

use std::fmt;
use std::path::Path;

/// The plugin contract this gateway speaks (`wit/gateway.wit`): copied into
/// new Python and JavaScript projects, printed by `ficus plugin wit`.
pub const GATEWAY_WIT: &str = include_str!("../../../wit/gateway.wit");

/// Where a project keeps its copy of [`GATEWAY_WIT`].
pub const GATEWAY_WIT_PATH: &str = "wit/deps/ficus-gateway/gateway.wit";

/// The language of a plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with `ficus-sdk`, built by cargo.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-js.
    #[value(alias = "javascript")]
    Js,
}

impl Lang {
    /// Every language, in the order they are listed in messages.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// The name used in `--lang` and `ficus-plugin.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// Parse a language name (`javascript` is accepted for `js`).
    pub fn parse(name: &str) -> Option<Lang> {
        match name {
            "rust" => Some(Lang::Rust),
            "python" => Some(Lang::Python),
            "js" | "javascript" => Some(Lang::Js),
            _ => None,
        }
    }

    /// The default entry: Python module or JavaScript file (none for Rust).
    pub fn default_entry(self) -> Option<&'static str> {
        match self {
            Lang::Rust => None,
            Lang::Python => Some("app"),
            Lang::Js => Some("filter.js"),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin command failed. The message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Bad arguments or project files.
    #[error("{0}")]
    Invalid(String),
    /// A toolchain program is not installed.
    #[error("{tool} was not found. {help}")]
    MissingTool {
        /// The program.
        tool: String,
        /// What it is for and how to install it.
        help: String,
    },
    /// Reading or writing files failed.
    #[error("{0}")]
    Io(String),
    /// The toolchain ran and failed (its own output was shown above).
    #[error("{0}")]
    Build(String),
}

impl ScaffoldError {
    fn io(what: &str, path: &Path, err: std::io::Error) -> ScaffoldError {
        ScaffoldError::Io(format!("cannot {what} {}: {err}", path.display()))
    }
}
