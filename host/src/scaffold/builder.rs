//! `ficus plugin build`: run the project's toolchain and put the component in
//! `build/<name>.wasm`.

use super::manifest::Manifest;
use super::tools::display_command;
use super::{Lang, ScaffoldError, Toolbox, GATEWAY_WIT, GATEWAY_WIT_PATH};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Rust target plugins are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where to write the component; default `<dir>/build/<name>.wasm`.
    pub out: Option<PathBuf>,
    /// Where to find the toolchains.
    pub toolbox: Toolbox,
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The plugin name from the manifest.
    pub name: String,
    /// The project's language.
    pub lang: Lang,
    /// The component file.
    pub output: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// How long the toolchain took.
    pub elapsed: Duration,
    /// Python/JS: the host capabilities `wit/world.wit` imports, which the
    /// gateway config must grant (`None` for Rust: they follow from the SDK
    /// calls the code makes).
    pub grants: Option<Vec<String>>,
}

/// Build the project in `dir`. Progress and the toolchain's own messages go
/// to stderr; the component is written atomically (a gateway watching the
/// file never sees half of it).
pub fn build(dir: &Path, options: &BuildOptions) -> Result<Built, ScaffoldError> {
    let manifest = Manifest::load(dir)?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| dir.join("build").join(format!("{}.wasm", manifest.name)));
    let out = std::path::absolute(&out).map_err(|e| ScaffoldError::io("resolve", &out, e))?;
    let out_dir = out
        .parent()
        .ok_or_else(|| ScaffoldError::Invalid(format!("{} is not a file path", out.display())))?;
    std::fs::create_dir_all(out_dir).map_err(|e| ScaffoldError::io("create", out_dir, e))?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = out_dir.join(format!(".{file_name}.partial.wasm"));
    let _ = std::fs::remove_file(&partial);

    let started = Instant::now();
    let toolbox = &options.toolbox;
    let grants = match manifest.lang {
        Lang::Rust => {
            let artifact = build_rust(dir, toolbox)?;
            std::fs::copy(&artifact, &partial)
                .map_err(|e| ScaffoldError::io("copy the component to", &partial, e))?;
            None
        }
        Lang::Python => {
            check_wit(dir)?;
            check_entry(dir, &manifest)?;
            let program = toolbox.componentize_py()?;
            let mut args: Vec<OsString> = vec![
                "-d".into(),
                "wit".into(),
                "-w".into(),
                manifest.world.clone().into(),
                "componentize".into(),
                manifest.entry.clone().into(),
                "-o".into(),
            ];
            args.push(partial.clone().into());
            run(&manifest, dir, Command::new(&program), &program, &args)?;
            Some(world_grants(dir)?)
        }
        Lang::Js => {
            check_wit(dir)?;
            check_entry(dir, &manifest)?;
            let (node, script) = toolbox.componentize_js()?;
            let mut args: Vec<OsString> = vec![
                script.into(),
                manifest.entry.clone().into(),
                "--wit".into(),
                "wit".into(),
                "--world-name".into(),
                manifest.world.clone().into(),
                // Filters get no wasi:http: leave the HTTP client and the
                // fetch-event handler out of the component.
                "-d".into(),
                "http".into(),
                "-d".into(),
                "fetch-event".into(),
                "-o".into(),
            ];
            args.push(partial.clone().into());
            run(&manifest, dir, Command::new(&node), &node, &args)?;
            Some(world_grants(dir)?)
        }
    };
    let elapsed = started.elapsed();
    if !partial.is_file() {
        return Err(ScaffoldError::Build(format!(
            "the {} toolchain reported success but wrote no component to {}",
            manifest.lang,
            partial.display()
        )));
    }
    std::fs::rename(&partial, &out).map_err(|e| ScaffoldError::io("write", &out, e))?;
    let size = std::fs::metadata(&out)
        .map_err(|e| ScaffoldError::io("read", &out, e))?
        .len();
    Ok(Built {
        name: manifest.name,
        lang: manifest.lang,
        output: out,
        size,
        elapsed,
        grants,
    })
}

/// Run a toolchain program in the project directory, its output going to
/// our stderr.
fn run(
    manifest: &Manifest,
    dir: &Path,
    mut command: Command,
    program: &Path,
    args: &[OsString],
) -> Result<(), ScaffoldError> {
    eprintln!(
        "ficus: building {} ({}) in {}: {}",
        manifest.name,
        manifest.lang,
        dir.display(),
        display_command(program, args)
    );
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit());
    let status = command
        .status()
        .map_err(|e| ScaffoldError::Io(format!("cannot run {}: {e}", program.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(ScaffoldError::Build(format!(
            "{} failed ({status}); its messages are above",
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )))
    }
}

/// Python/JS projects need the contract and a world; warn when the contract
/// differs from the one this gateway speaks.
fn check_wit(dir: &Path) -> Result<(), ScaffoldError> {
    let world = dir.join("wit").join("world.wit");
    if !world.is_file() {
        return Err(ScaffoldError::Invalid(format!(
            "{} is missing: it declares the world the plugin targets (see `ficus plugin new`)",
            world.display()
        )));
    }
    let contract = dir.join(GATEWAY_WIT_PATH);
    match std::fs::read_to_string(&contract) {
        Ok(text) if text == GATEWAY_WIT => Ok(()),
        Ok(_) => {
            eprintln!(
                "ficus: note: {} differs from the contract of this ficus; if the build or the \
                 gateway complains, refresh it with `ficus plugin wit > {GATEWAY_WIT_PATH}`",
                contract.display()
            );
            Ok(())
        }
        Err(_) => Err(ScaffoldError::Invalid(format!(
            "{} is missing: write the Ficus contract there with `ficus plugin wit > \
             {GATEWAY_WIT_PATH}` (run in {})",
            contract.display(),
            dir.display()
        ))),
    }
}

fn check_entry(dir: &Path, manifest: &Manifest) -> Result<(), ScaffoldError> {
    let found = match manifest.lang {
        Lang::Python => {
            dir.join(format!("{}.py", manifest.entry)).is_file()
                || dir.join(&manifest.entry).join("__init__.py").is_file()
        }
        _ => dir.join(&manifest.entry).is_file(),
    };
    if found {
        return Ok(());
    }
    let expected = match manifest.lang {
        Lang::Python => format!("{}.py", manifest.entry),
        _ => manifest.entry.clone(),
    };
    Err(ScaffoldError::Invalid(format!(
        "{} is missing (`entry` in ficus-plugin.toml)",
        dir.join(expected).display()
    )))
}

/// The Ficus host capabilities imported by `wit/world.wit`.
fn world_grants(dir: &Path) -> Result<Vec<String>, ScaffoldError> {
    let path = dir.join("wit").join("world.wit");
    let text = std::fs::read_to_string(&path).map_err(|e| ScaffoldError::io("read", &path, e))?;
    let mut grants = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default().trim();
        if let Some(rest) = code
            .strip_prefix("import")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix("ficus:gateway/"))
        {
            let iface: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if iface != "types" && !grants.contains(&iface) {
                grants.push(iface);
            }
        }
    }
    Ok(grants)
}

/// `cargo build --release --target wasm32-wasip2`; returns the component.
fn build_rust(dir: &Path, toolbox: &Toolbox) -> Result<PathBuf, ScaffoldError> {
    let manifest_path = dir.join("Cargo.toml");
    if !manifest_path.is_file() {
        return Err(ScaffoldError::Invalid(format!(
            "{} is missing: a Rust plugin is a cargo package",
            manifest_path.display()
        )));
    }
    let cargo = toolbox.cargo()?;
    check_wasm_target(dir, toolbox)?;
    let manifest_path = manifest_path
        .canonicalize()
        .map_err(|e| ScaffoldError::io("resolve", &manifest_path, e))?;
    let args: Vec<OsString> = vec![
        "build".into(),
        "--release".into(),
        "--target".into(),
        WASM_TARGET.into(),
        "--message-format".into(),
        "json-render-diagnostics".into(),
        "--manifest-path".into(),
        manifest_path.clone().into(),
    ];
    eprintln!(
        "ficus: building {} (rust): {}",
        dir.display(),
        display_command(&cargo, &args)
    );
    let mut child = Command::new(&cargo)
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| ScaffoldError::Io(format!("cannot run {}: {e}", cargo.display())))?;
    let mut artifact = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let is_ours = message["reason"] == "compiler-artifact"
                && message["manifest_path"].as_str().map(Path::new) == Some(&manifest_path)
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
            if is_ours {
                artifact = message["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| ScaffoldError::Io(format!("cannot wait for cargo: {e}")))?;
    if !status.success() {
        return Err(ScaffoldError::Build(format!(
            "cargo build failed ({status}); its messages are above"
        )));
    }
    artifact.ok_or_else(|| {
        ScaffoldError::Build(format!(
            "cargo built no component for {}: is `crate-type = [\"cdylib\"]` set in [lib]?",
            manifest_path.display()
        ))
    })
}

/// Fails with instructions when the toolchain for `dir` has no wasm32-wasip2
/// standard library (skipped when `rustc` is not on PATH).
fn check_wasm_target(dir: &Path, toolbox: &Toolbox) -> Result<(), ScaffoldError> {
    let Some(rustc) = toolbox.rustc() else {
        return Ok(());
    };
    let Ok(output) = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
    else {
        return Ok(());
    };
    if !output.status.success() {
        return Ok(()); // cargo will say what is wrong
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot
        .join("lib")
        .join("rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    Err(ScaffoldError::MissingTool {
        tool: format!("The Rust target {WASM_TARGET}"),
        help: format!(
            "Plugins are WebAssembly components built for it, and the toolchain at {} does not \
             have it: run `rustup target add {WASM_TARGET}` (or `rustup toolchain install` in \
             the project: its rust-toolchain.toml names the target).",
            sysroot.display()
        ),
    })
}
