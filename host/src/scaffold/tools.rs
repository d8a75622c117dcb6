//! Finding the toolchain programs: `cargo`, `componentize-py`, `node` and
//! `componentize-js`.

use super::ScaffoldError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The Ficus source tree this binary was built from (for the SDK path and
/// the toolchains installed by `scripts/polyglot-tools`), when it exists.
pub(crate) fn source_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("wit")
        .join("gateway.wit")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Where the toolchain programs are looked up.
///
/// 1. The pinned, project-local toolchains that `scripts/polyglot-tools`
///    installs (`venv/bin` and `node/node_modules/.bin` under a tools
///    directory): `$FICUS_TOOLS_DIR` when set, otherwise `target/polyglot` next
///    to this binary's `target/` directory and in the source tree it was built
///    from.
/// 2. `PATH`.
#[derive(Debug, Clone, Default)]
pub struct Toolbox {
    /// Tools directories, in order.
    pub tools_dirs: Vec<PathBuf>,
    /// The `PATH` entries.
    pub path: Vec<PathBuf>,
}

impl Toolbox {
    /// The lookup order described on [`Toolbox`], from the environment.
    pub fn from_env() -> Toolbox {
        let mut tools_dirs = Vec::new();
        match std::env::var_os("FICUS_TOOLS_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => tools_dirs.push(PathBuf::from(dir)),
            None => {
                // <target>/<profile>/ficus -> <target>/polyglot
                if let Some(target) = std::env::current_exe()
                    .ok()
                    .and_then(|exe| Some(exe.parent()?.parent()?.join("polyglot")))
                {
                    tools_dirs.push(target);
                }
                if let Some(root) = source_root() {
                    tools_dirs.push(root.join("target").join("polyglot"));
                }
                tools_dirs.dedup();
            }
        }
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Toolbox { tools_dirs, path }
    }

    /// `name` in a tools directory's `sub` folder, else on `PATH`.
    fn find(&self, sub: &[&str], name: &str) -> Option<PathBuf> {
        self.tools_dirs
            .iter()
            .map(|dir| sub.iter().fold(dir.clone(), |p, s| p.join(s)))
            .chain(self.path.iter().cloned())
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }

    /// `name` on `PATH` only.
    fn on_path(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }

    /// How to install the pinned toolchain for `lang` (`python` or `js`).
    fn install_hint(lang: &str) -> String {
        match source_root() {
            Some(root) => format!(
                "In the Ficus repository, `{} {lang}` installs it (pinned) into \
                 target/polyglot/, where `ficus plugin build` finds it",
                root.join("scripts").join("polyglot-tools").display()
            ),
            None => "Install it with the command below and put it on PATH, or point \
                     FICUS_TOOLS_DIR at a directory made by the Ficus repository's \
                     `scripts/polyglot-tools`"
                .to_owned(),
        }
    }

    fn searched(&self, sub: &[&str]) -> String {
        let dirs: Vec<String> = self
            .tools_dirs
            .iter()
            .map(|d| {
                sub.iter()
                    .fold(d.clone(), |p, s| p.join(s))
                    .display()
                    .to_string()
            })
            .collect();
        if dirs.is_empty() {
            "PATH".to_owned()
        } else {
            format!("{} and PATH", dirs.join(", "))
        }
    }

    /// `cargo`, for Rust plugins.
    pub fn cargo(&self) -> Result<PathBuf, ScaffoldError> {
        let home_cargo = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|home| home.join("bin").join("cargo"));
        self.on_path("cargo")
            .or_else(|| home_cargo.filter(|c| is_executable(c)))
            .ok_or_else(|| ScaffoldError::MissingTool {
                tool: "cargo".into(),
                help: "Rust plugins are built with cargo for the wasm32-wasip2 target: install \
                       Rust with rustup (https://rustup.rs), then run \
                       `rustup target add wasm32-wasip2`."
                    .into(),
            })
    }

    /// `rustc` on `PATH`, if any (to check the wasm32-wasip2 target).
    pub fn rustc(&self) -> Option<PathBuf> {
        self.on_path("rustc")
    }

    /// `componentize-py`, for Python plugins.
    pub fn componentize_py(&self) -> Result<PathBuf, ScaffoldError> {
        self.find(&["venv", "bin"], "componentize-py")
            .ok_or_else(|| ScaffoldError::MissingTool {
                tool: "componentize-py".into(),
                help: format!(
                    "Python plugins are built with componentize-py 0.25.1 (PyPI), which needs \
                     Python 3 to install. Looked in {}. {}; or: \
                     `python3 -m pip install componentize-py==0.25.1`.",
                    self.searched(&["venv", "bin"]),
                    Self::install_hint("python")
                ),
            })
    }

    /// `node` and the `componentize-js` script, for JavaScript plugins.
    pub fn componentize_js(&self) -> Result<(PathBuf, PathBuf), ScaffoldError> {
        let node = self
            .on_path("node")
            .ok_or_else(|| ScaffoldError::MissingTool {
                tool: "node".into(),
                help:
                    "JavaScript plugins are built with componentize-js, which runs on Node.js 18 \
                   or newer: install Node.js and npm (e.g. `apt-get install nodejs npm` on \
                   Debian/Ubuntu) and put `node` on PATH."
                        .into(),
            })?;
        let script = self
            .find(&["node", "node_modules", ".bin"], "componentize-js")
            .ok_or_else(|| ScaffoldError::MissingTool {
                tool: "componentize-js".into(),
                help: format!(
                    "JavaScript plugins are built with @bytecodealliance/componentize-js 0.23.0 \
                     (npm). Looked in {}. {}; or: \
                     `npm install @bytecodealliance/componentize-js@0.23.0` and put its \
                     node_modules/.bin on PATH.",
                    self.searched(&["node", "node_modules", ".bin"]),
                    Self::install_hint("js")
                ),
            })?;
        Ok((node, script))
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// A command line for messages: program and arguments, quoted when needed.
pub(crate) fn display_command(program: &Path, args: &[OsString]) -> String {
    let mut words = vec![shell_word(&program.to_string_lossy())];
    words.extend(args.iter().map(|a| shell_word(&a.to_string_lossy())));
    words.join(" ")
}

fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
