//! Plugins in other languages: the Python and JavaScript examples of
//! `plugins-polyglot/` are built from source (once per test run, with `ficus plugin build`
//! and the pinned toolchains that `scripts/polyglot-tools` installs), then served by a real
//! gateway next to their Rust twins, and every request assertion runs against both builds of
//! the same filter:
//!
//! * `api-key` — Python (`python/api-key`) and Rust (`rust/api-key`): header API key, 401
//!   otherwise, a per-key counter in `state`;
//! * `geo-router` — JavaScript (`js/geo-router`) and Rust (`rust/geo-router`): picks the
//!   upstream from a header with `route(...)`.
//!
//! Also: a bad config rejected by the guest's `configure` fails `ficus check` naming the
//! pipeline step; an exception raised (Python) or thrown (JavaScript) in a hook is handled by
//! the plugin's fail policy like a Rust panic. [`figures_per_language`] prints, for each
//! language, the component size, the build time and the `ficus check` wall time with an empty
//! and with a warm compile cache.
//!
//! The Rust twins are built in `target/plugins`, the directory where `host/build.rs` builds
//! the plugins workspace, so that the SDK's dependencies are not compiled again.

use crate::support::{
    dead_endpoint, has_field, metric, unique, Cfg, Gateway, Shared, TempDir, Upstream,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary under test.
const FICUS: &str = env!("CARGO_BIN_EXE_ficus");

/// The repository root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Where this module and `scaffold` put what they build.
pub(crate) fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polyglot")
}

/// The compile cache that `support::Cfg` gives every gateway of the suite (seeded below
/// with the artifacts compiled while measuring, so gateways start warm).
fn suite_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("ficus-e2e")
        .join("cache")
}

/// Runs `scripts/polyglot-tools` once per test run (it is fast when the pinned toolchains
/// are already installed; `scripts/test` runs it before `cargo test` too). Panics with the
/// script's message when a prerequisite (python3, node, npm) is missing.
pub(crate) fn tools() -> &'static Path {
    static TOOLS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = TOOLS.get_or_init(|| {
        let root = repo_root();
        let out = Command::new(root.join("scripts").join("polyglot-tools"))
            .current_dir(&root)
            .env_remove("FICUS_TOOLS_DIR")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/polyglot-tools: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/polyglot-tools failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root.join("target").join("polyglot"))
    });
    match result {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

/// `ficus plugin` with the pinned toolchains and the shared Rust target directory.
pub(crate) fn ficus_plugin(args: &[&str]) -> Command {
    let mut command = Command::new(FICUS);
    command
        .arg("plugin")
        .args(args)
        .env("FICUS_TOOLS_DIR", tools())
        .env(
            "CARGO_TARGET_DIR",
            repo_root().join("target").join("plugins"),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// A component built by a test.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) build_time: Duration,
}

/// `ficus plugin build DIR --out OUT`; panics with the build's output when it fails.
pub(crate) fn build(dir: &Path, out: &Path) -> Built {
    let started = Instant::now();
    let output = ficus_plugin(&["build"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {FICUS}: {e}"));
    let build_time = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ficus plugin build {} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        dir.display(),
        output.status
    );
    assert!(
        stdout.contains(&format!("built {}", out.display())),
        "ficus plugin build names the component it wrote:\n{stdout}"
    );
    let size = std::fs::metadata(out)
        .unwrap_or_else(|e| panic!("{} was not written: {e}", out.display()))
        .len();
    Built {
        path: out.to_path_buf(),
        size,
        build_time,
    }
}

/// One example or fixture, in one language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Example {
    ApiKeyRust,
    ApiKeyPython,
    GeoRouterRust,
    GeoRouterJs,
    TrapPython,
    TrapJs,
}

impl Example {
    const ALL: [Example; 6] = [
        Example::ApiKeyRust,
        Example::ApiKeyPython,
        Example::GeoRouterRust,
        Example::GeoRouterJs,
        Example::TrapPython,
        Example::TrapJs,
    ];

    /// The project under `plugins-polyglot/`.
    fn dir(self) -> &'static str {
        match self {
            Example::ApiKeyRust => "rust/api-key",
            Example::ApiKeyPython => "python/api-key",
            Example::GeoRouterRust => "rust/geo-router",
            Example::GeoRouterJs => "js/geo-router",
            Example::TrapPython => "fixtures/trap-python",
            Example::TrapJs => "fixtures/trap-js",
        }
    }

    /// The plugin name in the gateway config (and the file name of the build).
    fn plugin(self) -> &'static str {
        match self {
            Example::ApiKeyRust => "api-key-rust",
            Example::ApiKeyPython => "api-key-python",
            Example::GeoRouterRust => "geo-router-rust",
            Example::GeoRouterJs => "geo-router-js",
            Example::TrapPython => "trap-python",
            Example::TrapJs => "trap-js",
        }
    }

    fn lang(self) -> &'static str {
        match self {
            Example::ApiKeyRust | Example::GeoRouterRust => "rust",
            Example::ApiKeyPython | Example::TrapPython => "python",
            Example::GeoRouterJs | Example::TrapJs => "js",
        }
    }

    /// The `[plugins.NAME]` lines besides `source`. CPython needs more than the default
    /// 16 MiB of linear memory; both engines get a generous deadline because the first call
    /// of a fresh instance initialises the language runtime (and the machine may be busy).
    fn plugin_lines(self) -> &'static str {
        match self {
            Example::ApiKeyRust => "grants = [\"state\"]\ntimeout_ms = 5000",
            Example::ApiKeyPython => {
                "grants = [\"state\"]\nmemory_limit_bytes = 67108864\ntimeout_ms = 5000"
            }
            Example::GeoRouterRust => "timeout_ms = 5000",
            Example::GeoRouterJs => "timeout_ms = 5000",
            Example::TrapPython => "memory_limit_bytes = 67108864\ntimeout_ms = 5000",
            Example::TrapJs => "timeout_ms = 5000",
        }
    }

    /// A valid per-route config.
    fn config(self) -> &'static str {
        match self {
            Example::ApiKeyRust | Example::ApiKeyPython => "{ keys = [\"k1\", \"k2\"] }",
            Example::GeoRouterRust | Example::GeoRouterJs => {
                "{ header = \"x-country\", routes = { de = \"eu\", FR = \"eu\", us = \"main\" } }"
            }
            Example::TrapPython | Example::TrapJs => "{}",
        }
    }
}

/// Every example built, with the figures measured on the way.
struct Examples {
    built: Vec<(Example, Built)>,
    /// `ficus check` wall time with an empty compile cache, then with a warm one.
    check_times: Vec<(Example, Duration, Duration)>,
}

impl Examples {
    fn source(&self, example: Example) -> String {
        self.built
            .iter()
            .find(|(e, _)| *e == example)
            .map(|(_, b)| b.path.to_string_lossy().into_owned())
            .expect("every example is built")
    }
}

/// Builds every example once per test run (in parallel), then measures and seeds the
/// suite's compile cache.
fn examples() -> &'static Examples {
    static EXAMPLES: Shared<Examples> = Shared::new(|| {
        let out_dir = scratch().join("examples");
        std::fs::create_dir_all(&out_dir).expect("create the output directory");
        let source_root = repo_root().join("plugins-polyglot");
        tools();
        let built = std::thread::scope(|scope| {
            let handles: Vec<_> = Example::ALL
                .iter()
                .map(|&example| {
                    let dir = source_root.join(example.dir());
                    let out = out_dir.join(format!("{}.wasm", example.plugin()));
                    scope.spawn(move || (example, build(&dir, &out)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Vec<_>>()
        });
        let mut examples = Examples {
            built,
            check_times: Vec::new(),
        };
        // One at a time, so that each compilation has the machine to itself.
        for example in Example::ALL {
            let (cold, warm) = measure_check(&examples, example);
            examples.check_times.push((example, cold, warm));
        }
        examples
    });
    EXAMPLES.get()
}

/// The config that `measure_check` checks: one route with `example`.
fn single_plugin_config(examples: &Examples, example: Example, cache: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ncache_dir = {cache:?}\n\n\
         [plugins.{plugin}]\nsource = {source:?}\n{lines}\n\n\
         [upstreams.main]\nendpoints = [\"127.0.0.1:9\"]\n\n\
         [upstreams.eu]\nendpoints = [\"127.0.0.1:9\"]\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"main\"\n\
         pipeline = [{{ plugin = \"{plugin}\", config = {config} }}]\n",
        cache = cache.to_string_lossy(),
        plugin = example.plugin(),
        source = examples.source(example),
        lines = example.plugin_lines(),
        config = example.config(),
    )
}

/// `ficus check` wall time with an empty cache directory, then again with the artifact it
/// left there. The artifacts are then copied into the suite's cache so that the gateways
/// started by the tests load them instead of compiling again.
fn measure_check(examples: &Examples, example: Example) -> (Duration, Duration) {
    let dir = scratch().join(unique(&format!("measure-{}", example.plugin())));
    let cache = dir.join("cache");
    std::fs::create_dir_all(&dir).expect("create the measurement directory");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, single_plugin_config(examples, example, &cache))
        .expect("write the measurement config");
    let check = || {
        let started = Instant::now();
        let out = Command::new(FICUS)
            .args(["check", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {FICUS}: {e}"));
        let elapsed = started.elapsed();
        assert!(
            out.status.success(),
            "ficus check of the {} example failed:\n{}{}",
            example.plugin(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    };
    let cold = check();
    let warm = check();
    seed_suite_cache(&cache);
    let _ = std::fs::remove_dir_all(&dir);
    (cold, warm)
}

fn seed_suite_cache(from: &Path) {
    let to = suite_cache_dir();
    std::fs::create_dir_all(&to).expect("create the suite cache");
    for entry in std::fs::read_dir(from)
        .expect("read the measurement cache")
        .flatten()
    {
        let name = entry.file_name();
        let target = to.join(&name);
        if target.exists() || !name.to_string_lossy().ends_with(".cwasm") {
            continue;
        }
        // Through a temporary name and a rename, as the gateway writes its artifacts.
        let tmp = to.join(format!(
            "{}.seed{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if std::fs::copy(entry.path(), &tmp).is_ok() {
            let _ = std::fs::rename(&tmp, &target);
        }
    }
}

struct Env {
    gw: Gateway,
    main: Upstream,
    eu: Upstream,
}

/// Route prefix of an example.
fn prefix(example: Example) -> String {
    format!("/{}", example.plugin())
}

static ENV: Shared<Env> = Shared::new(|| {
    let examples = examples();
    let main = Upstream::start("main");
    let eu = Upstream::start("eu");
    let mut cfg = Cfg::new()
        .upstream("main", &[main.endpoint()], "")
        .upstream("eu", &[eu.endpoint()], "");
    let mut routes = String::new();
    for example in Example::ALL {
        cfg = cfg.plugin_source(
            example.plugin(),
            &examples.source(example),
            example.plugin_lines(),
        );
        routes.push_str(&format!(
            "[[routes]]\nname = \"{plugin}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n\
             upstream = \"main\"\npipeline = [{{ plugin = \"{plugin}\", config = {config} }}]\n\n",
            plugin = example.plugin(),
            prefix = prefix(example),
            config = example.config(),
        ));
    }
    // The trap fixtures once more, fail-open.
    for example in [Example::TrapPython, Example::TrapJs] {
        let open = format!("{}-open", example.plugin());
        cfg = cfg.plugin_source(
            &open,
            &examples.source(example),
            &format!("{}\non_error = \"fail-open\"", example.plugin_lines()),
        );
        routes.push_str(&format!(
            "[[routes]]\nname = \"{open}\"\nmatch = {{ path_prefix = \"/{open}\" }}\n\
             upstream = \"main\"\npipeline = [{{ plugin = \"{open}\" }}]\n\n"
        ));
    }
    Env {
        gw: Gateway::start(&cfg.toml(&routes)),
        main,
        eu,
    }
});

/// The api-key assertions, for one build of the filter.
async fn assert_api_key(env: &Env, example: Example) {
    let gw = &env.gw;
    let path = format!("{}/orders", prefix(example));
    let what = example.lang();

    let id = unique("no-key");
    let resp = gw.get(&path).test_id(&id).send().await;
    assert_eq!(resp.status, 401, "{what}: no key: {resp:?}");
    assert_eq!(
        resp.header("www-authenticate").as_deref(),
        Some("ApiKey"),
        "{what}"
    );
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain"),
        "{what}"
    );
    assert_eq!(resp.text(), "missing or unknown API key\n", "{what}");
    assert_eq!(env.main.count(&id), 0, "{what}: the upstream is not called");

    let id = unique("bad-key");
    let resp = gw
        .get(&path)
        .test_id(&id)
        .header("x-api-key", "nope")
        .send()
        .await;
    assert_eq!(resp.status, 401, "{what}: unknown key: {resp:?}");
    assert_eq!(env.main.count(&id), 0, "{what}");

    for (key, expected) in [("k1", "1"), ("k1", "2"), ("k2", "1"), ("k1", "3")] {
        let id = unique("good-key");
        let resp = gw
            .get(&path)
            .test_id(&id)
            .header("x-api-key", key)
            .send()
            .await;
        assert_eq!(resp.status, 200, "{what}: key {key}: {resp:?}");
        let echo = resp.echo();
        assert_eq!(echo.upstream, "main", "{what}");
        assert_eq!(echo.path, path, "{what}");
        assert_eq!(
            echo.header("x-api-key"),
            None,
            "{what}: the key is not forwarded"
        );
        assert_eq!(
            resp.header("x-api-key-requests").as_deref(),
            Some(expected),
            "{what}: the counter in `state` for {key}: {resp:?}"
        );
        assert_eq!(env.main.count(&id), 1, "{what}");
    }
}

#[tokio::test]
async fn api_key_in_python_behaves_like_its_rust_twin() {
    let env = ENV.get();
    let _watch = env.gw.watch();
    assert_api_key(env, Example::ApiKeyRust).await;
    assert_api_key(env, Example::ApiKeyPython).await;
}

/// The geo-router assertions, for one build of the filter.
async fn assert_geo_router(env: &Env, example: Example) {
    let gw = &env.gw;
    let path = format!("{}/catalog?page=2", prefix(example));
    let what = example.lang();
    for (country, upstream, routed) in [
        (Some("DE"), "eu", Some("eu")),
        (Some("fr"), "eu", Some("eu")),
        (Some("us"), "main", Some("main")),
        (Some("jp"), "main", None),
        (None, "main", None),
    ] {
        let id = unique("geo");
        let mut req = gw.get(&path).test_id(&id);
        if let Some(country) = country {
            req = req.header("x-country", country);
        }
        let resp = req.send().await;
        assert_eq!(resp.status, 200, "{what}: {country:?}: {resp:?}");
        let echo = resp.echo();
        assert_eq!(
            echo.upstream, upstream,
            "{what}: {country:?} goes to {upstream}"
        );
        assert_eq!(echo.path, path, "{what}");
        assert_eq!(
            resp.header("x-routed-to").as_deref(),
            routed,
            "{what}: {country:?}: {resp:?}"
        );
        let counted = if upstream == "eu" { &env.eu } else { &env.main };
        assert_eq!(counted.count(&id), 1, "{what}: {country:?}");
    }
}

#[tokio::test]
async fn geo_router_in_javascript_behaves_like_its_rust_twin() {
    let env = ENV.get();
    let _watch = env.gw.watch();
    assert_geo_router(env, Example::GeoRouterRust).await;
    assert_geo_router(env, Example::GeoRouterJs).await;
}

/// A log entry about a failed plugin call, naming plugin, route and hook.
fn plugin_failure(entry: &str, plugin: &str, hook: &str) -> bool {
    entry.contains("plugin failed")
        && has_field(entry, "plugin", plugin)
        && has_field(entry, "route", plugin)
        && has_field(entry, "hook", hook)
}

#[tokio::test]
async fn exception_in_a_python_or_javascript_hook_follows_the_fail_policy() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for (example, message) in [
        (
            Example::TrapPython,
            "trap-python: deliberate failure in on_request",
        ),
        (Example::TrapJs, "trap-js: deliberate failure in onRequest"),
    ] {
        // Twice: the instance that raised is discarded and the next request gets a new one.
        for _ in 0..2 {
            let id = unique("trap");
            let resp = gw
                .get(&format!("{}/x", prefix(example)))
                .test_id(&id)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            resp.assert_gateway_error(500, "plugin_error");
            assert!(
                !resp.text().contains("deliberate"),
                "the client does not see the exception: {resp:?}"
            );
            assert_eq!(env.main.count(&id), 0, "fail-closed: no upstream call");
        }
        gw.wait_for_log(&format!("the {} exception", example.lang()), |e| {
            plugin_failure(e, example.plugin(), "on-request") && e.contains(message)
        })
        .await;

        let open = format!("{}-open", example.plugin());
        let id = unique("trap-open");
        let resp = gw
            .get(&format!("/{open}/x"))
            .test_id(&id)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        assert_eq!(
            resp.status, 200,
            "fail-open passes the request on: {resp:?}"
        );
        assert_eq!(resp.echo().upstream, "main");
        assert_eq!(env.main.count(&id), 1);
    }
}

#[test]
fn bad_config_is_rejected_by_the_guest_and_fails_check_naming_the_step() {
    let examples = examples();
    let cases = [
        (
            Example::ApiKeyRust,
            "{ keys = [] }",
            "config.keys: at least one key is required",
        ),
        (
            Example::ApiKeyPython,
            "{ keys = [] }",
            "config.keys: at least one key is required",
        ),
        (
            Example::ApiKeyPython,
            "{ keys = [\"k\"], head = \"x\" }",
            "config.head: unknown field",
        ),
        (
            Example::ApiKeyPython,
            "{ header = \"bad header\", keys = [\"k\"] }",
            "config.header:",
        ),
        (
            Example::GeoRouterRust,
            "{ routes = {} }",
            "config.routes: at least one route is required",
        ),
        (
            Example::GeoRouterJs,
            "{ routes = {} }",
            "config.routes: at least one route is required",
        ),
        (
            Example::GeoRouterJs,
            "{ routes = { de = 1 } }",
            "config.routes.de: expected a cluster name",
        ),
        (
            Example::GeoRouterJs,
            "{ routes = { de = \"eu\" }, sticky = true }",
            "config.sticky: unknown field",
        ),
    ];
    for (example, config, message) in cases {
        let checked = Cfg::new()
            .plugin_source(example.plugin(), &examples.source(example), example.plugin_lines())
            .upstream("main", &["127.0.0.1:9".to_owned()], "")
            .upstream("eu", &["127.0.0.1:9".to_owned()], "")
            .toml(&format!(
                "[[routes]]\nname = \"ok\"\nmatch = {{ path_prefix = \"/ok\" }}\nupstream = \"main\"\n\
                 pipeline = [{{ plugin = \"{plugin}\", config = {good} }}]\n\n\
                 [[routes]]\nname = \"bad\"\nupstream = \"main\"\n\
                 pipeline = [{{ plugin = \"{plugin}\", config = {config} }}]\n",
                plugin = example.plugin(),
                good = example.config(),
            ))
            .check();
        assert_eq!(checked.code, Some(2), "{example:?} {config}: {checked}");
        let line = checked
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{example:?} {config}: no error line: {checked}"));
        for needle in [
            "routes[1].pipeline[0].config",
            &format!("plugin \"{}\" in route \"bad\"", example.plugin()),
            "configure rejected the config",
            message,
        ] {
            assert!(
                line.contains(needle),
                "{example:?} {config}: {needle:?} in {line:?}"
            );
        }
        assert_eq!(
            checked.stderr.matches("error: ").count(),
            1,
            "only the bad step fails: {checked}"
        );
    }
}

#[test]
fn figures_per_language() {
    let examples = examples();
    println!(
        "\nplugin sizes and compile times (ficus check wall time: empty cache = Cranelift \
         compile, warm cache = load the precompiled artifact; machine shared with other \
         builds, so read ratios, not absolutes)"
    );
    println!(
        "{:<16} {:<7} {:>12} {:>10} {:>16} {:>15}",
        "plugin", "lang", "size", "build", "check cold", "check warm"
    );
    for (example, built) in &examples.built {
        let (_, cold, warm) = examples
            .check_times
            .iter()
            .find(|(e, _, _)| e == example)
            .expect("measured");
        println!(
            "{:<16} {:<7} {:>9.0} KB {:>8.1} s {:>14.0} ms {:>12.0} ms",
            example.plugin(),
            example.lang(),
            built.size as f64 / 1024.0,
            built.build_time.as_secs_f64(),
            cold.as_secs_f64() * 1000.0,
            warm.as_secs_f64() * 1000.0,
        );
    }
}

/// A tick plugin in Python (`python/heartbeat`, the twin of the Rust fixture `tick-counter`):
/// scheduled by `[[ticks]]`, it runs on the leader of its group (a node alone leads), checks
/// `leader.status` agrees, and counts its runs in a metric. A config its `configure` rejects
/// fails `ficus check` at `ticks[0].config`.
#[tokio::test]
async fn tick_plugin_in_python_runs_on_the_leader() {
    let out_dir = scratch().join("examples");
    std::fs::create_dir_all(&out_dir).expect("create the output directory");
    let built = build(
        &repo_root().join("plugins-polyglot/python/heartbeat"),
        &out_dir.join("heartbeat-python.wasm"),
    );
    let data = TempDir::new("heartbeat-data");
    let cfg = |config: &str| {
        Cfg::new()
            .plugin_source(
                "heartbeat",
                &built.path.to_string_lossy(),
                "grants = [\"leader\", \"log\", \"metrics\"]\nmemory_limit_bytes = 67108864\n\
                 timeout_ms = 5000",
            )
            .upstream("nowhere", &[dead_endpoint()], "")
            .toml(&format!(
                "[backend]\ndata_dir = {:?}\n[leader]\nnode_id = \"solo\"\n\
                 [[routes]]\nupstream = \"nowhere\"\n\n\
                 [[ticks]]\nname = \"beat\"\nplugin = \"heartbeat\"\nevery = \"200ms\"\n\
                 group = \"cron\"\nconfig = {config}\n",
                data.path().to_string_lossy()
            ))
    };

    let checked = cfg("{ label = \"\" }").check();
    assert_eq!(
        checked.code,
        Some(2),
        "an empty label is rejected: {checked}"
    );
    assert!(
        checked.stderr.contains("ticks[0].config") && checked.stderr.contains("config.label"),
        "the error names the tick and the guest's message: {checked}"
    );

    let gw = Gateway::start(&cfg("{ label = \"edge\" }"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = gw.metrics().await;
        let runs = metric(
            &metrics,
            "heartbeat_ticks",
            &[("group", "cron"), ("label", "edge")],
        )
        .unwrap_or(0.0);
        let ok = metric(
            &metrics,
            "ficus_tick_total",
            &[("tick", "beat"), ("result", "ok")],
        )
        .unwrap_or(0.0);
        if runs >= 3.0 && ok >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Python tick did not run 3 times in 30 s (runs {runs}, ok {ok}):\n{metrics}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.wait_for_log("the Python tick's log line", |e| {
        e.contains("heartbeat group=cron term=")
    })
    .await;
}

/// `calls = "sync"` links only the WASI a Rust guest imports (`wasi:cli`, `wasi:clocks`,
/// `wasi:io`, `wasi:random`): the JavaScript build, whose runtime imports
/// `wasi:filesystem` and more, fails `ficus check` saying which import and what to do,
/// while its Rust twin checks fine.
#[test]
fn sync_calls_refuse_a_component_importing_more_wasi_than_they_provide() {
    let examples = examples();
    let check = |example: Example| {
        Cfg::new()
            .plugin_source(
                example.plugin(),
                &examples.source(example),
                &format!("{}\ncalls = \"sync\"", example.plugin_lines()),
            )
            .upstream("main", &["127.0.0.1:9".to_owned()], "")
            .upstream("eu", &["127.0.0.1:9".to_owned()], "")
            .toml(&format!(
                "[[routes]]\nname = \"r\"\nupstream = \"main\"\n\
                 pipeline = [{{ plugin = \"{plugin}\", config = {config} }}]\n",
                plugin = example.plugin(),
                config = example.config(),
            ))
            .check()
    };
    let rust = check(Example::GeoRouterRust);
    assert_eq!(rust.code, Some(0), "{rust}");
    let js = check(Example::GeoRouterJs);
    assert_eq!(js.code, Some(2), "{js}");
    for needle in [
        "routes[0].pipeline[0].plugin",
        "plugin \"geo-router-js\" in route \"r\"",
        "imports wasi:",
        "plugins with calls = \"sync\" do not get",
        "use calls = \"async\"",
    ] {
        assert!(js.stderr.contains(needle), "{needle:?} is not in:\n{js}");
    }
}
