//! `ficus plugin new`: write a buildable project from the embedded templates.

use super::manifest::{check_name, Manifest, MANIFEST_FILE};
use super::tools::source_root;
use super::{Lang, ScaffoldError, GATEWAY_WIT, GATEWAY_WIT_PATH};
use std::path::{Component, Path, PathBuf};

const RUST_CARGO_TOML: &str = include_str!("templates/rust/Cargo.toml");
const RUST_LIB_RS: &str = include_str!("templates/rust/lib.rs");
const RUST_README: &str = include_str!("templates/rust/README.md");
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");
/// The lockfile of the Ficus plugins: a new Rust project starts from the
/// dependency versions the SDK is tested with (cargo drops the entries it does
/// not need on the first build).
const RUST_LOCKFILE: &str = include_str!("../../../plugins/Cargo.lock");
const PYTHON_APP: &str = include_str!("templates/python/app.py");
const PYTHON_README: &str = include_str!("templates/python/README.md");
const JS_FILTER: &str = include_str!("templates/js/filter.js");
const JS_README: &str = include_str!("templates/js/README.md");
const WORLD_WIT: &str = include_str!("templates/world.wit");
const GITIGNORE: &str = include_str!("templates/gitignore");

/// What to create.
#[derive(Debug, Clone)]
pub struct NewOptions {
    /// Plugin name (also the default directory and the output file name).
    pub name: String,
    /// Language of the project.
    pub lang: Lang,
    /// Project directory; default `./<name>`. Must not exist or be empty.
    pub dir: Option<PathBuf>,
    /// Rust only: the `ficus-sdk` crate directory; default the `sdk/` of the
    /// Ficus source tree this binary was built from.
    pub sdk: Option<PathBuf>,
}

/// A created project.
#[derive(Debug, Clone)]
pub struct Created {
    /// The project directory.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
}

/// Create a plugin project from the templates.
pub fn new_project(options: &NewOptions) -> Result<Created, ScaffoldError> {
    check_name(&options.name).map_err(ScaffoldError::Invalid)?;
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&options.name));
    if let Ok(mut entries) = std::fs::read_dir(&dir) {
        if entries.next().is_some() {
            return Err(ScaffoldError::Invalid(format!(
                "{} already exists and is not empty: choose another directory with --dir",
                dir.display()
            )));
        }
    } else if dir.exists() {
        return Err(ScaffoldError::Invalid(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    let manifest = Manifest {
        name: options.name.clone(),
        lang: options.lang,
        entry: options.lang.default_entry().unwrap_or_default().to_owned(),
        world: "plugin".to_owned(),
    };
    let files = match options.lang {
        Lang::Rust => rust_files(&dir, options.sdk.as_deref())?,
        Lang::Python => wit_files(vec![
            ("app.py".to_owned(), PYTHON_APP.to_owned()),
            ("README.md".to_owned(), PYTHON_README.to_owned()),
        ]),
        Lang::Js => wit_files(vec![
            ("filter.js".to_owned(), JS_FILTER.to_owned()),
            ("README.md".to_owned(), JS_README.to_owned()),
        ]),
    };
    let mut written = Vec::new();
    let common = [
        (MANIFEST_FILE.to_owned(), manifest.render()),
        (".gitignore".to_owned(), GITIGNORE.to_owned()),
    ];
    for (rel, text) in common.into_iter().chain(files) {
        let text = text
            .replace("{{name}}", &options.name)
            .replace("{{crate_name}}", &options.name.replace('-', "_"));
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ScaffoldError::io("create", parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| ScaffoldError::io("write", &path, e))?;
        written.push(PathBuf::from(rel));
    }
    Ok(Created {
        dir,
        files: written,
    })
}

/// Python and JavaScript: the sources plus the world and the contract.
fn wit_files(mut files: Vec<(String, String)>) -> Vec<(String, String)> {
    files.push(("wit/world.wit".to_owned(), WORLD_WIT.to_owned()));
    files.push((GATEWAY_WIT_PATH.to_owned(), GATEWAY_WIT.to_owned()));
    files
}

fn rust_files(dir: &Path, sdk: Option<&Path>) -> Result<Vec<(String, String)>, ScaffoldError> {
    let sdk = match sdk {
        Some(sdk) => sdk.to_path_buf(),
        None => source_root().map(|r| r.join("sdk")).ok_or_else(|| {
            ScaffoldError::Invalid(
                "cannot find the ficus-sdk crate (this ficus was built from a source tree that \
                 is gone): pass --sdk PATH to the sdk/ directory of a Ficus checkout"
                    .to_owned(),
            )
        })?,
    };
    if !sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::Invalid(format!(
            "{} is not the ficus-sdk crate (no Cargo.toml): pass --sdk PATH to the sdk/ \
             directory of a Ficus checkout",
            sdk.display()
        )));
    }
    // A relative path, so the project keeps building when the tree that holds
    // both is moved; the directory must exist to be resolved.
    std::fs::create_dir_all(dir).map_err(|e| ScaffoldError::io("create", dir, e))?;
    let from = dir
        .canonicalize()
        .map_err(|e| ScaffoldError::io("resolve", dir, e))?;
    let to = sdk
        .canonicalize()
        .map_err(|e| ScaffoldError::io("resolve", &sdk, e))?;
    let sdk_path = relative_path(&from, &to)
        .to_string_lossy()
        .replace('\\', "/");
    let cargo = RUST_CARGO_TOML.replace("{{sdk_path}}", &sdk_path);
    let readme = RUST_README.replace("{{sdk_path}}", &sdk_path);
    Ok(vec![
        ("Cargo.toml".to_owned(), cargo),
        ("src/lib.rs".to_owned(), RUST_LIB_RS.to_owned()),
        ("README.md".to_owned(), readme),
        ("rust-toolchain.toml".to_owned(), RUST_TOOLCHAIN.to_owned()),
        ("Cargo.lock".to_owned(), RUST_LOCKFILE.to_owned()),
    ])
}

/// `to` relative to the directory `from` (both absolute and normalised).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for part in &to[common..] {
        rel.push(part.as_os_str());
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use std::path::{Path, PathBuf};

    #[test]
    fn relative_paths() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(rel("/a/b/c", "/a/sdk"), PathBuf::from("../../sdk"));
        assert_eq!(rel("/a", "/a/sdk"), PathBuf::from("sdk"));
        assert_eq!(rel("/x/y", "/a/sdk"), PathBuf::from("../../a/sdk"));
        assert_eq!(rel("/a", "/a"), PathBuf::from("."));
    }
}
