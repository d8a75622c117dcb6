//! Builds the plugins workspace (`plugins/`) for `wasm32-wasip2` and copies each
//! component to `target/wasm/<plugin directory name>.wasm`, so the host's tests
//! and the quick start always run plugins compiled from the current source.
//!
//! It runs only when `plugins/`, `sdk/` or `wit/` change (and when an output in
//! `target/wasm/` is missing). The directory is passed to the host crate as
//! `env!("FICUS_WASM_DIR")`.
//!
//! Set `FICUS_SKIP_PLUGIN_BUILD=1` to skip the plugin build (the outputs are
//! then whatever `target/wasm/` already holds).

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

const WASM_TARGET: &str = "wasm32-wasip2";

/// A cargo package of the plugins workspace.
struct Plugin {
    /// Directory name: the name of the output file (`memory-hog`).
    name: String,
    /// Library target name: the name of cargo's artifact (`fixture_memory_hog`).
    lib_name: String,
    /// The package directory.
    dir: PathBuf,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: building the Ficus plugins failed\n\n{message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let root = manifest_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", manifest_dir.display()))?
        .to_path_buf();
    let plugins_dir = root.join("plugins");
    let target_dir = root.join("target").join("plugins");
    let wasm_dir = root.join("target").join("wasm");

    println!("cargo:rustc-env=FICUS_WASM_DIR={}", wasm_dir.display());
    println!("cargo:rerun-if-env-changed=FICUS_SKIP_PLUGIN_BUILD");

    let plugins = discover(&plugins_dir)?;
    watch(&root, &plugins, &wasm_dir);

    if std::env::var_os("FICUS_SKIP_PLUGIN_BUILD").is_some_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning=FICUS_SKIP_PLUGIN_BUILD is set: plugins were not rebuilt");
        return Ok(());
    }

    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    check_wasm_target(&rustc, &root)?;
    build(&rustc, &root, &plugins_dir, &target_dir)?;

    let artifacts = target_dir.join(WASM_TARGET).join("release");
    let stamp = invocation_time();
    fs::create_dir_all(&wasm_dir)
        .map_err(|e| format!("cannot create {}: {e}", wasm_dir.display()))?;
    for plugin in &plugins {
        let from = artifacts.join(format!("{}.wasm", plugin.lib_name));
        let to = wasm_dir.join(format!("{}.wasm", plugin.name));
        install(&from, &to, stamp).map_err(|e| {
            format!(
                "plugin `{}` ({}): {e}\n(is it listed in `members` of plugins/Cargo.toml, with \
                 crate-type = [\"cdylib\"]?)",
                plugin.name,
                plugin.dir.display()
            )
        })?;
    }
    Ok(())
}

fn env_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("environment variable {name} is not set (not run by cargo?)"))
}

/// Every package directory under `plugins/`: `plugins/<name>/Cargo.toml` and
/// `plugins/<group>/<name>/Cargo.toml` (e.g. `plugins/fixtures/probe`).
fn discover(plugins_dir: &Path) -> Result<Vec<Plugin>, String> {
    let mut plugins = Vec::new();
    for dir in subdirs(plugins_dir)? {
        if dir.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if dir.join("Cargo.toml").is_file() {
            plugins.push(plugin(&dir)?);
        } else {
            for sub in subdirs(&dir)? {
                if sub.join("Cargo.toml").is_file() {
                    plugins.push(plugin(&sub)?);
                }
            }
        }
    }
    if plugins.is_empty() {
        return Err(format!(
            "no plugin packages found under {}",
            plugins_dir.display()
        ));
    }
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in plugins.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(format!(
                "two plugins would both be installed as target/wasm/{}.wasm: {} and {}",
                pair[0].name,
                pair[0].dir.display(),
                pair[1].dir.display()
            ));
        }
    }
    Ok(plugins)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Reads the package's library name: `[lib] name`, else `[package] name` with
/// `-` replaced by `_` (what cargo names the artifact).
fn plugin(dir: &Path) -> Result<Plugin, String> {
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut section = String::new();
    let (mut package_name, mut lib_name) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value.trim().trim_matches('"').to_string();
        match section.as_str() {
            "package" => package_name = Some(value),
            "lib" => lib_name = Some(value),
            _ => {}
        }
    }
    let lib_name = lib_name
        .or(package_name)
        .ok_or_else(|| format!("{}: no `[package] name`", manifest.display()))?
        .replace('-', "_");
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: directory name is not UTF-8", dir.display()))?
        .to_string();
    Ok(Plugin {
        name,
        lib_name,
        dir: dir.to_path_buf(),
    })
}

fn watch(root: &Path, plugins: &[Plugin], wasm_dir: &Path) {
    let mut paths = vec![
        root.join("plugins").join("Cargo.toml"),
        root.join("plugins").join("Cargo.lock"),
        root.join("sdk").join("Cargo.toml"),
        root.join("sdk").join("src"),
        root.join("wit"),
        root.join("rust-toolchain.toml"),
    ];
    for plugin in plugins {
        paths.push(plugin.dir.join("Cargo.toml"));
        paths.push(plugin.dir.join("src"));
        // A missing output makes cargo rerun this script.
        paths.push(wasm_dir.join(format!("{}.wasm", plugin.name)));
    }
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Fails with instructions when the toolchain has no `wasm32-wasip2` standard
/// library.
fn check_wasm_target(rustc: &OsString, root: &Path) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rustc.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --print sysroot` failed:\n{}",
            rustc.to_string_lossy(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target_lib = sysroot
        .join("lib")
        .join("rustlib")
        .join(WASM_TARGET)
        .join("lib");
    if target_lib.is_dir() {
        return Ok(());
    }
    Err(format!(
        "the Rust target `{WASM_TARGET}` is not installed for the toolchain at {}.\n\
         The plugins are WebAssembly components built for it. Install it with\n\n    \
         rustup target add {WASM_TARGET}\n\n\
         or, in {}, `rustup toolchain install` (rust-toolchain.toml lists the target).",
        sysroot.display(),
        root.display()
    ))
}

/// Variables the outer build sets (or reads) that must not leak into the
/// plugin build: it has its own target, target directory, flags and profile.
/// The jobserver (`CARGO_MAKEFLAGS`) is kept so both builds share the job slots.
fn leaks(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_ENCODED_",
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "DEP_",
        "__CARGO",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

fn build(
    rustc: &OsString,
    root: &Path,
    plugins_dir: &Path,
    target_dir: &Path,
) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(leaks) {
            command.env_remove(&name);
        }
    }
    command.env("RUSTC", rustc);

    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`cargo build --release --target {WASM_TARGET} --manifest-path {} --target-dir {}` \
         failed ({}):\n\n{}{}",
        plugins_dir.join("Cargo.toml").display(),
        target_dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// When cargo started this script (the mtime of the `invoked.timestamp` file
/// it writes next to `OUT_DIR`), if known.
///
/// The outputs are watched with `rerun-if-changed` so that a deleted one is
/// rebuilt; cargo counts any file modified after this time as changed, so the
/// outputs written now get this time as their mtime, or every build would
/// rerun the script and recompile the host.
fn invocation_time() -> Option<SystemTime> {
    let out_dir = env_path("OUT_DIR").ok()?;
    fs::metadata(out_dir.parent()?.join("invoked.timestamp"))
        .ok()?
        .modified()
        .ok()
}

/// Copies `from` to `to` unless `to` already has the same bytes, through a
/// temporary file and a rename so a reader never sees a partial component.
fn install(from: &Path, to: &Path, mtime: Option<SystemTime>) -> Result<(), String> {
    let bytes = fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    if fs::read(to).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    let tmp = to.with_extension("wasm.tmp");
    let mut file =
        fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    file.write_all(&bytes)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    if let Some(mtime) = mtime {
        file.set_modified(mtime)
            .map_err(|e| format!("cannot set the mtime of {}: {e}", tmp.display()))?;
    }
    drop(file);
    fs::rename(&tmp, to)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), to.display()))
}
