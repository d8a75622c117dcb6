//! `ficus plugin new` and `ficus plugin build`: a project scaffolded in each language builds
//! into a component that a real gateway loads and serves requests through; bad names and
//! occupied directories are refused; a missing toolchain is reported with what to install.

use crate::polyglot::{build, ficus_plugin, scratch, tools};
use crate::support::{unique, Cfg, Gateway, TempDir, Upstream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const LANGS: [&str; 3] = ["rust", "python", "js"];

/// `ficus plugin new NAME --lang LANG --dir DIR`; panics with the output when it fails.
fn new_project(name: &str, lang: &str, dir: &Path) {
    let out = ficus_plugin(&["new", name, "--lang", lang, "--dir"])
        .arg(dir)
        .output()
        .expect("run ficus plugin new");
    assert!(
        out.status.success(),
        "ficus plugin new {name} --lang {lang}: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "build it with: ficus plugin build {}",
            dir.display()
        )),
        "{stdout}"
    );
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn scaffolded_projects_build_and_serve_in_every_language() {
    let root = scratch().join(unique("scaffold"));
    let mut built = Vec::new();
    for lang in LANGS {
        let name = format!("scaffold-{lang}");
        let dir = root.join(lang);
        new_project(&name, lang, &dir);
        // What every project has, and the README names the build command.
        assert!(dir.join("ficus-plugin.toml").is_file());
        let readme = std::fs::read_to_string(dir.join("README.md")).expect("a README");
        assert!(readme.contains("ficus plugin build"), "{readme}");
        match lang {
            "rust" => {
                let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
                assert!(
                    cargo.contains("ficus-sdk = { path = \"../"),
                    "relative SDK path: {cargo}"
                );
                assert!(dir.join("src/lib.rs").is_file());
            }
            _ => {
                let contract =
                    std::fs::read_to_string(dir.join("wit/deps/ficus-gateway/gateway.wit"))
                        .expect("the contract is copied");
                let original =
                    std::fs::read_to_string(crate::polyglot::repo_root().join("wit/gateway.wit"))
                        .expect("wit/gateway.wit");
                assert_eq!(contract, original, "{lang}: the copy is the contract");
                assert!(dir.join("wit/world.wit").is_file());
            }
        }
        // The default output: build/<name>.wasm in the project.
        let out = dir.join("build").join(format!("{name}.wasm"));
        built.push((lang, name, build(&dir, &out)));
    }
    for (lang, _, b) in &built {
        println!(
            "scaffolded {lang} plugin: {:.0} KB, built in {:.1} s",
            b.size as f64 / 1024.0,
            b.build_time.as_secs_f64()
        );
    }

    // Load all three into one gateway, one route each.
    let main = Upstream::start("main");
    let mut cfg = Cfg::new().upstream("main", &[main.endpoint()], "");
    let mut routes = String::new();
    for (lang, name, b) in &built {
        let limits = match *lang {
            "python" => "memory_limit_bytes = 67108864\ntimeout_ms = 5000",
            _ => "timeout_ms = 5000",
        };
        cfg = cfg.plugin_source(name, &b.path.to_string_lossy(), limits);
        routes.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{lang}\" }}\n\
             upstream = \"main\"\npipeline = [{{ plugin = \"{name}\", config = {{}} }}]\n\n"
        ));
    }
    let cfg = cfg.toml(&routes);
    // `ficus check` first: it compiles the components into the suite's cache (no start-up
    // deadline), so the gateway below starts warm.
    let checked = cfg.check();
    assert_eq!(checked.code, Some(0), "{checked}");
    for (_, name, _) in &built {
        assert!(
            checked.stdout.contains(&format!("route {name}: [{name}]")),
            "{checked}"
        );
    }
    let gw = Gateway::start(&cfg);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for (lang, _, _) in &built {
            for _ in 0..2 {
                let id = unique("scaffold");
                let path = format!("/{lang}/hello?x=1");
                let resp = gw
                    .get(&path)
                    .test_id(&id)
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await;
                assert_eq!(resp.status, 200, "{lang}: {resp:?}");
                let echo = resp.echo();
                assert_eq!(echo.upstream, "main");
                assert_eq!(echo.path, path, "{lang}: the stub changes nothing");
                assert_eq!(main.count(&id), 1);
            }
        }
    });
    drop(gw);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn new_refuses_bad_names_and_occupied_directories() {
    let dir = TempDir::new("scaffold-refuse");
    let occupied = dir.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    for (args, message) in [
        (
            vec!["new", "Api_Key", "--lang", "python"],
            "is not a valid plugin name",
        ),
        (vec!["new", "loop", "--lang", "rust"], "Rust keyword"),
        (
            vec!["new", "fine", "--lang", "cobol"],
            "invalid value 'cobol'",
        ),
    ] {
        let out = ficus_plugin(&args)
            .current_dir(dir.path())
            .output()
            .expect("run ficus");
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = ficus_plugin(&["new", "fine", "--lang", "js", "--dir"])
        .arg(&occupied)
        .output()
        .expect("run ficus");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(occupied.join("keep.txt")).unwrap(),
        "mine",
        "nothing is overwritten"
    );
    let out = ficus_plugin(&["build"])
        .arg(&occupied)
        .output()
        .expect("run ficus");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a Ficus plugin project"),
        "{}",
        text(&out)
    );
}

/// A directory to use as `PATH`: links to the few programs a shell needs, and none of
/// python, node or cargo.
fn bare_path(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["sh", "env", "cat", "ls"] {
        if let Some(found) = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
        {
            let _ = std::os::unix::fs::symlink(found, bin.join(tool));
        }
    }
    bin
}

#[test]
fn build_without_a_toolchain_says_what_to_install() {
    let dir = TempDir::new("scaffold-missing");
    let path = bare_path(dir.path());
    let no_tools = dir.path().join("no-tools");
    std::fs::create_dir_all(&no_tools).unwrap();
    let cases: [(&str, &Path, &[&str]); 3] = [
        // Nothing installed: componentize-py is not in the tools directory, nor on PATH.
        (
            "python",
            &no_tools,
            &[
                "error: componentize-py was not found.",
                "componentize-py 0.25.1",
                "polyglot-tools python",
                "pip install componentize-py==0.25.1",
            ],
        ),
        // The pinned componentize-js is installed, but node is not on PATH.
        (
            "js",
            tools(),
            &[
                "error: node was not found.",
                "Node.js 18 or newer",
                "apt-get install nodejs npm",
            ],
        ),
        (
            "rust",
            &no_tools,
            &[
                "error: cargo was not found.",
                "rustup",
                "rustup target add wasm32-wasip2",
            ],
        ),
    ];
    for (lang, tools_dir, messages) in cases {
        let project = dir.path().join(lang);
        new_project(&format!("missing-{lang}"), lang, &project);
        let out = ficus_plugin(&["build"])
            .arg(&project)
            .env("PATH", &path)
            .env("FICUS_TOOLS_DIR", tools_dir)
            .env("HOME", dir.path())
            .env("CARGO_HOME", dir.path().join("no-cargo"))
            .output()
            .expect("run ficus");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{lang}: {}", text(&out));
        for message in messages {
            assert!(
                stderr.contains(message),
                "{lang}: {message:?} in:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{lang}: a message, not a crash:\n{stderr}"
        );
        assert!(
            !project
                .join("build")
                .join(format!("missing-{lang}.wasm"))
                .exists(),
            "{lang}: no output"
        );
    }
}
