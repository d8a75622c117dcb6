//! The strangler plugin (`plugins/strangler`): a strangler-fig migration between two real
//! upstreams, `legacy` and `new`, that name themselves in `x-upstream` and echo the request.
//!
//! Rule routing by path, method, header, cookie and query; sticky users; force overrides; the
//! weighted split measured over many users; a ramp by config reload that moves no user back;
//! shadow traffic (copies reach the other side, the client sees only the primary, mismatches
//! and matches are counted by the host); per-side metrics; bad configs refused by
//! `ficus check` with the key named.
//!
//! The plugin's pure logic (`decide.rs`) is compiled into this binary too: its unit tests run
//! here (`strangler::decide::tests`), and the end-to-end tests use its bucket hash to predict
//! which side each user must land on.

use crate::support::{dead_endpoint, metric, unique, Cfg, Gateway, Req, Shared, Upstream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[allow(dead_code)] // Parts of it are used only by the plugin's Wasm glue.
#[path = "../../plugins/strangler/src/decide.rs"]
mod decide;

/// The plugins this module adds (see `config::every_built_plugin_is_a_known_fixture`).
pub(crate) const FIXTURES: [&str; 1] = ["strangler.wasm"];

/// The component imports `ficus:gateway/metrics` only.
const GRANTS: &str = r#"grants = ["metrics"]"#;

/// Longest wait for something asynchronous (shadow copies, host counters).
const WAIT: Duration = Duration::from_secs(10);

/// The built plugin, as written in a config's `source`.
fn plugin_path() -> String {
    let path: PathBuf = Path::new(ficus::WASM_DIR).join("strangler.wasm");
    assert!(
        path.is_file(),
        "{} is missing (host/build.rs builds plugins/ into {})",
        path.display(),
        ficus::WASM_DIR
    );
    path.to_string_lossy().into_owned()
}

/// A config with the strangler plugin and the clusters `legacy`, `new` and `dead`.
fn base(legacy: &Upstream, new: &Upstream) -> Cfg {
    Cfg::new()
        .plugin_source("strangler", &plugin_path(), GRANTS)
        .upstream("legacy", &[legacy.endpoint()], "")
        .upstream("new", &[new.endpoint()], "")
        .upstream("dead", &[dead_endpoint()], "")
}

const ROUTES: &str = r#"
[[routes]]
name = "rules"
match = { path_prefix = "/rules" }
upstream = "legacy"

[[routes.pipeline]]
plugin = "strangler"

[routes.pipeline.config]
override = { cookie = "strangler" }

[[routes.pipeline.config.rules]]
name = "orders-write"
path_prefix = "/rules/orders"
methods = ["POST", "PUT"]
side = "new"

[[routes.pipeline.config.rules]]
name = "beta-header"
headers = { x-beta = "1" }
side = "new"

[[routes.pipeline.config.rules]]
name = "beta-cookie"
cookies = { beta = "yes" }
side = "new"

[[routes.pipeline.config.rules]]
name = "v2-query"
query = { v = "2" }
side = "new"

[[routes.pipeline.config.rules]]
name = "catalog"
path_prefix = "/rules/catalog"
percent = 100

[[routes.pipeline.config.rules]]
name = "rest"
percent = 0

[[routes]]
name = "split"
match = { path_prefix = "/split" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { rules = [{ percent = 30 }], sticky = { by = ["header:x-user"], salt = "e2e" } } },
]

[[routes]]
name = "cookie"
match = { path_prefix = "/cookie" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { rules = [{ percent = 50 }], sticky = { set_cookie = { name = "sid", max_age_s = 3600 } } } },
]

[[routes]]
name = "shadow-diff"
match = { path_prefix = "/shadow-diff" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { rules = [{ percent = 0 }], shadow = { headers = ["content-type"] } } },
]

[[routes]]
name = "shadow-match"
match = { path_prefix = "/shadow-match" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { rules = [{ side = "new" }], shadow = { label = "ignored-noise", ignore_fields = ["upstream", "headers"] } } },
]

[[routes]]
name = "shadow-dead"
match = { path_prefix = "/shadow-dead" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { new = "dead", rules = [{ percent = 0 }], shadow = {} } },
]

[[routes]]
name = "metrics"
match = { path_prefix = "/metrics-route" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { rules = [{ name = "half", percent = 50 }], sticky = { by = ["header:x-user"] } } },
]

[[routes]]
name = "dead-new"
match = { path_prefix = "/dead-new" }
upstream = "legacy"
pipeline = [
  { plugin = "strangler", config = { new = "dead", rules = [{ side = "new" }] } },
]
"#;

struct Env {
    gw: Gateway,
    legacy: Upstream,
    new: Upstream,
}

static ENV: Shared<Env> = Shared::new(|| {
    let legacy = Upstream::start("legacy");
    let new = Upstream::start("new");
    let cfg = base(&legacy, &new).toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        legacy,
        new,
    }
});

/// Send `req`; return the side that answered (the upstream's `x-upstream`), checking that
/// the plugin's `x-strangler-side` header agrees.
async fn side_of(req: Req) -> String {
    let resp = req.send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let upstream = resp
        .header("x-upstream")
        .unwrap_or_else(|| panic!("no x-upstream: {resp:?}"));
    assert_eq!(
        resp.header("x-strangler-side").as_deref(),
        Some(upstream.as_str()),
        "the side header names the side that answered: {resp:?}"
    );
    upstream
}

/// The side the plugin must choose for a sticky key at `percent`.
fn predicted(salt: &str, key: &str, percent: f64) -> &'static str {
    decide::side_for(decide::bucket(salt, key), decide::threshold(percent)).as_str()
}

/// Poll `/metrics` until `metric(name, labels)` reaches `at_least`; returns the value.
async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = gw.metrics().await;
        let value = metric(&text, name, labels).unwrap_or(0.0);
        if value >= at_least {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} stayed at {value} (< {at_least}) for {WAIT:?}; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until `count()` reaches `want`.
async fn wait_count(what: &str, want: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + WAIT;
    while count() < want {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {want} within {WAIT:?}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rules_route_by_path_method_header_cookie_and_query() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let cases: [(&str, Req, &str); 11] = [
        (
            "GET on the orders prefix",
            gw.get("/rules/orders/7"),
            "legacy",
        ),
        ("POST on it", gw.request("POST", "/rules/orders/7"), "new"),
        ("PUT on it", gw.request("PUT", "/rules/orders"), "new"),
        (
            "POST elsewhere (segment-aware prefix)",
            gw.request("POST", "/rules/ordersx"),
            "legacy",
        ),
        (
            "beta header",
            gw.get("/rules/x").header("x-beta", "1"),
            "new",
        ),
        (
            "other beta value",
            gw.get("/rules/x").header("x-beta", "0"),
            "legacy",
        ),
        (
            "beta cookie",
            gw.get("/rules/x").header("cookie", "a=1; beta=yes"),
            "new",
        ),
        ("v=2 query", gw.get("/rules/x?a=1&v=2"), "new"),
        ("v=3 query", gw.get("/rules/x?v=3"), "legacy"),
        ("catalog at 100 %", gw.get("/rules/catalog/42"), "new"),
        ("the rest at 0 %", gw.get("/rules/anything"), "legacy"),
    ];
    for (what, req, want) in cases {
        assert_eq!(side_of(req).await, want, "{what}");
    }
    // The request reaches the side as the client sent it.
    let resp = gw
        .request("POST", "/rules/orders/7?x=1")
        .body("payload")
        .send()
        .await;
    let echo = resp.echo();
    assert_eq!(
        (
            echo.upstream.as_str(),
            echo.method.as_str(),
            echo.path.as_str()
        ),
        ("new", "POST", "/rules/orders/7?x=1")
    );
    assert_eq!(echo.body, "payload");
}

#[tokio::test]
async fn override_header_and_cookie_pin_a_side() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    // The rest is at 0 %: only an override reaches new.
    assert_eq!(
        side_of(gw.get("/rules/x").header("x-strangler", "new")).await,
        "new"
    );
    assert_eq!(
        side_of(gw.get("/rules/x").header("cookie", "strangler=new")).await,
        "new"
    );
    // And back: a write rule says new, the tester says legacy.
    assert_eq!(
        side_of(
            gw.request("POST", "/rules/orders")
                .header("x-strangler", "Legacy")
        )
        .await,
        "legacy"
    );
    // Unknown values are ignored.
    assert_eq!(
        side_of(gw.get("/rules/x").header("x-strangler", "newest")).await,
        "legacy"
    );
    // The header wins over the cookie.
    assert_eq!(
        side_of(
            gw.get("/rules/catalog")
                .header("x-strangler", "legacy")
                .header("cookie", "strangler=new")
        )
        .await,
        "legacy"
    );
}

#[tokio::test]
async fn users_stick_to_their_side() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let mut seen = BTreeMap::new();
    for round in 0..4 {
        for u in 0..25 {
            let user = format!("sticky-{u}");
            let side = side_of(
                gw.get(&format!("/split/page/{round}?r={round}"))
                    .header("x-user", &user),
            )
            .await;
            assert_eq!(side, predicted("e2e", &user, 30.0), "{user}");
            let first = seen.entry(user.clone()).or_insert_with(|| side.clone());
            assert_eq!(*first, side, "{user} changed side in round {round}");
        }
    }
    let new = seen.values().filter(|s| *s == "new").count();
    println!("sticky: 25 users x 4 requests, {new} of them on new, none changed side");
    assert!(new > 0 && new < 25, "both sides are used: {seen:?}");
}

#[tokio::test]
async fn weighted_split_is_close_to_the_configured_percentage() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("split");
    let users = 400;
    let mut new = 0;
    for u in 0..users {
        let user = format!("customer-{u}");
        let side = side_of(gw.get("/split/x").header("x-user", &user).test_id(&id)).await;
        assert_eq!(side, predicted("e2e", &user, 30.0), "{user}");
        new += usize::from(side == "new");
    }
    let share = 100.0 * new as f64 / users as f64;
    println!("weighted split: configured 30% new, measured {share:.1}% ({new} of {users} users)");
    assert!((share - 30.0).abs() < 10.0, "measured {share:.1}%");
    assert_eq!(env.new.count(&id), new);
    assert_eq!(env.legacy.count(&id), users - new);
}

#[tokio::test]
async fn a_minted_cookie_keeps_a_new_user_on_its_side() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let mut sides = Vec::new();
    for _ in 0..12 {
        let resp = gw.get("/cookie/home").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let set = resp
            .header("set-cookie")
            .unwrap_or_else(|| panic!("a user without the cookie gets one: {resp:?}"));
        let id = set
            .strip_prefix("sid=")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("unexpected set-cookie {set:?}"))
            .to_owned();
        assert_eq!(id.len(), 32, "{set}");
        assert!(
            set.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let first = resp.header("x-upstream").expect("x-upstream");
        assert_eq!(first, predicted("", &id, 50.0), "the minted id decided");
        for _ in 0..3 {
            let resp = gw
                .get("/cookie/next")
                .header("cookie", &format!("theme=dark; sid={id}"))
                .send()
                .await;
            assert_eq!(resp.header("x-upstream").as_deref(), Some(first.as_str()));
            assert_eq!(resp.header("set-cookie"), None, "{resp:?}");
        }
        sides.push(first);
    }
    println!("minted cookies: sides of 12 new users {sides:?}");
}

#[tokio::test]
async fn shadow_copies_reach_the_other_side_and_mismatches_are_counted() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("shadow");
    let n = 5;
    for _ in 0..n {
        let resp = gw.get("/shadow-diff/item?x=1").test_id(&id).send().await;
        // The client sees only the primary (legacy at 0 %).
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-upstream").as_deref(), Some("legacy"));
        assert_eq!(resp.echo().upstream, "legacy");
        assert_eq!(resp.header("x-strangler-side").as_deref(), Some("legacy"));
    }
    assert_eq!(env.legacy.count(&id), n);
    // The copies reach new in the background.
    wait_count("shadow copies at new", n, || env.new.count(&id)).await;
    // The sides answer with their own names: the bodies differ.
    let labels = [
        ("route", "shadow-diff"),
        ("label", "strangler"),
        ("result", "mismatch"),
    ];
    let mismatches = wait_metric(gw, "ficus_shadow_total", &labels, n as f64).await;
    println!(
        "shadow: {n} requests, {} copies at new, {mismatches} mismatches counted",
        env.new.count(&id)
    );
    gw.wait_for_log("a shadow mismatch sample", |e| {
        e.contains("shadow mismatch") && e.contains("shadow-diff") && e.contains("body")
    })
    .await;
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "strangler_shadow_requests_total",
            &[
                ("route", "shadow-diff"),
                ("side", "new"),
                ("outcome", "sent")
            ]
        ),
        Some(n as f64),
        "{text}"
    );

    // Writes are not copied by default (shadow.methods): a POST reaches legacy only.
    let post = unique("shadow-post");
    let resp = gw
        .request("POST", "/shadow-diff/item")
        .body("{}")
        .test_id(&post)
        .send()
        .await;
    assert_eq!(resp.header("x-upstream").as_deref(), Some("legacy"));
    // A later GET's copy arriving proves the POST's would have arrived by now.
    let after = unique("shadow-after");
    gw.get("/shadow-diff/item").test_id(&after).send().await;
    wait_count("the later GET's copy", 1, || env.new.count(&after)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.new.count(&post), 0, "a POST was shadowed");
}

#[tokio::test]
async fn shadow_matches_when_noisy_fields_are_ignored() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("shadow-match");
    let n = 4;
    for _ in 0..n {
        let resp = gw.get("/shadow-match/a").test_id(&id).send().await;
        // Primary new (side = "new"); the copy goes to legacy.
        assert_eq!(
            resp.header("x-upstream").as_deref(),
            Some("new"),
            "{resp:?}"
        );
    }
    wait_count("shadow copies at legacy", n, || env.legacy.count(&id)).await;
    assert_eq!(env.new.count(&id), n);
    // Only `upstream` (the side's name) and `headers` (x-ficus-shadow) differ: ignored.
    let labels = [
        ("route", "shadow-match"),
        ("label", "ignored-noise"),
        ("result", "match"),
    ];
    let matches = wait_metric(gw, "ficus_shadow_total", &labels, n as f64).await;
    println!("shadow with ignored fields: {matches} matches counted");
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "ficus_shadow_total",
            &[("route", "shadow-match"), ("result", "mismatch")]
        ),
        None,
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_shadow_side_does_not_affect_the_client() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("shadow-dead");
    for _ in 0..3 {
        let resp = gw.get("/shadow-dead/x").test_id(&id).send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.echo().upstream, "legacy");
    }
    assert_eq!(env.legacy.count(&id), 3);
    let labels = [("route", "shadow-dead"), ("result", "error")];
    wait_metric(gw, "ficus_shadow_total", &labels, 3.0).await;
}

#[tokio::test]
async fn per_side_metrics_count_requests_errors_and_latency() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let mut count = BTreeMap::<String, usize>::new();
    for u in 0..30 {
        let side = side_of(
            gw.get("/metrics-route/x")
                .header("x-user", &format!("m-{u}")),
        )
        .await;
        *count.entry(side).or_default() += 1;
    }
    // Three 5xx answers from new, forced there by the override.
    for _ in 0..3 {
        let resp = gw
            .get("/metrics-route/fail")
            .header("x-strangler", "new")
            .header("x-want-status", "500")
            .send()
            .await;
        assert_eq!(resp.status, 500, "{resp:?}");
        assert_eq!(resp.header("x-strangler-side").as_deref(), Some("new"));
    }
    // Two connection failures: the new side of `dead-new` is a dead endpoint.
    for _ in 0..2 {
        let resp = gw.get("/dead-new/x").send().await;
        assert_eq!(resp.status, 502, "{resp:?}");
        assert_eq!(resp.header("x-strangler-side").as_deref(), Some("new"));
    }
    let text = gw.metrics().await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
    let legacy = count.get("legacy").copied().unwrap_or(0) as f64;
    let new = count.get("new").copied().unwrap_or(0) as f64;
    println!("metrics route: {legacy} requests on legacy, {new} on new (+3 forced to new)");
    let route = ("route", "metrics");
    assert_eq!(
        m(
            "strangler_requests_total",
            &[
                route,
                ("side", "legacy"),
                ("rule", "half"),
                ("forced", "false")
            ]
        ),
        legacy,
        "{text}"
    );
    assert_eq!(
        m(
            "strangler_requests_total",
            &[route, ("side", "new"), ("forced", "false")]
        ),
        new,
        "{text}"
    );
    assert_eq!(
        m(
            "strangler_requests_total",
            &[route, ("side", "new"), ("forced", "true")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        m(
            "strangler_errors_total",
            &[route, ("side", "new"), ("kind", "5xx")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        m("strangler_errors_total", &[route, ("side", "legacy")]),
        0.0,
        "{text}"
    );
    assert_eq!(
        m(
            "strangler_errors_total",
            &[
                ("route", "dead-new"),
                ("side", "new"),
                ("kind", "connect-failed")
            ]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        m(
            "strangler_latency_seconds_count",
            &[route, ("side", "legacy")]
        ),
        legacy,
        "{text}"
    );
    assert_eq!(
        m("strangler_latency_seconds_count", &[route, ("side", "new")]),
        new + 3.0,
        "{text}"
    );
    assert!(m("strangler_latency_seconds_sum", &[route]) > 0.0, "{text}");
    assert_eq!(
        m("strangler_new_percent", &[route, ("rule", "half")]),
        50.0,
        "{text}"
    );
}

/// A config whose only route splits `/ramp` at `percent` by `x-user`.
fn ramp_cfg(legacy: &Upstream, new: &Upstream, percent: &str) -> Cfg {
    base(legacy, new).toml(&format!(
        r#"
        [[routes]]
        name = "ramp"
        match = {{ path_prefix = "/ramp" }}
        upstream = "legacy"
        pipeline = [
          {{ plugin = "strangler", config = {{ rules = [{{ name = "all", percent = {percent} }}], sticky = {{ by = ["header:x-user"], salt = "ramp" }} }} }},
        ]
        "#
    ))
}

/// Rewrite the gateway's config file (atomically) and `POST /admin/reload`; returns the
/// answer's status and JSON.
async fn reload(gw: &Gateway, cfg: &Cfg) -> (u16, serde_json::Value) {
    let path = gw.config_file();
    let tmp = path.with_extension("strangler-tmp");
    std::fs::write(&tmp, cfg.render()).expect("write the config");
    std::fs::rename(&tmp, &path).expect("replace the config");
    let resp = gw.admin_request("POST", "/admin/reload").send().await;
    (resp.status, resp.json())
}

/// The side of each user on `/ramp`.
async fn sides(gw: &Gateway, users: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.push(side_of(gw.get("/ramp/x").header("x-user", user)).await);
    }
    out
}

#[tokio::test]
async fn ramping_up_by_config_reload_moves_no_user_back() {
    let legacy = Upstream::start("legacy");
    let new = Upstream::start("new");
    let gw = Gateway::start(&ramp_cfg(&legacy, &new, "10"));
    let users: Vec<String> = (0..200).map(|u| format!("ramp-user-{u}")).collect();
    let share =
        |s: &[String]| 100.0 * s.iter().filter(|x| *x == "new").count() as f64 / s.len() as f64;

    let mut before = sides(&gw, &users).await;
    println!(
        "ramp: 10% configured, {:.1}% of 200 users on new",
        share(&before)
    );
    for (step, pct) in [(1, 50.0), (2, 90.0)] {
        let (status, json) = reload(&gw, &ramp_cfg(&legacy, &new, &pct.to_string())).await;
        assert_eq!(status, 200, "reload to {pct}%: {json:#}");
        assert_eq!(json["outcome"]["ok"], true, "{json:#}");
        let after = sides(&gw, &users).await;
        let back: Vec<&String> = users
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| *b == "new" && *a == "legacy")
            .map(|(u, _)| u)
            .collect();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| *b == "legacy" && *a == "new")
            .count();
        println!(
            "ramp step {step}: {pct}% configured, {:.1}% of 200 users on new, {moved} moved \
             legacy->new, {} moved back",
            share(&after),
            back.len()
        );
        assert!(back.is_empty(), "users moved back to legacy: {back:?}");
        assert!(moved > 0, "raising the percentage moves some users");
        assert!((share(&after) - pct).abs() < 12.0, "{}", share(&after));
        for (user, side) in users.iter().zip(&after) {
            assert_eq!(side, predicted("ramp", user, pct), "{user}");
        }
        before = after;
    }
    // A bad percentage is refused by the reload, naming the key; the split stays at 90 %.
    let (status, json) = reload(&gw, &ramp_cfg(&legacy, &new, "150")).await;
    assert_eq!(status, 422, "{json:#}");
    let error = json["outcome"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("config.rules[0].percent: 150 is out of range"),
        "{json:#}"
    );
    assert_eq!(
        sides(&gw, &users).await,
        before,
        "a refused reload changes nothing"
    );
}

#[test]
fn bad_configs_are_refused_by_ficus_check_naming_the_key() {
    let route = |name: &str, config: &str| {
        format!(
            "[[routes]]\nname = {name:?}\nmatch = {{ path_prefix = \"/{name}\" }}\n\
             upstream = \"legacy\"\npipeline = [{{ plugin = \"strangler\", config = {config} }}]\n"
        )
    };
    let cases = [
        (
            "percent",
            "{ rules = [{ percent = 150 }] }",
            "config.rules[0].percent: 150 is out of range",
        ),
        (
            "side",
            "{ rules = [{ percent = 5 }, { path_prefix = \"/x\", side = \"neww\" }] }",
            "config.rules[1].side: unknown side \"neww\": expected \"legacy\" or \"new\"",
        ),
        (
            "empty",
            "{ rules = [] }",
            "config.rules: empty: at least one rule is required",
        ),
        ("missing", "{}", "config.rules: missing"),
        (
            "default",
            "{ default = \"old\", rules = [{ percent = 1 }] }",
            "config.default: unknown side \"old\"",
        ),
        (
            "same",
            "{ legacy = \"legacy\", new = \"legacy\", rules = [{ percent = 1 }] }",
            "config.new: the new side's cluster must differ",
        ),
        (
            "typo",
            "{ rules = [{ percent = 1, weight = 3 }] }",
            "config.rules[0].weight: unknown field `weight`",
        ),
        (
            "shadow",
            "{ rules = [{ percent = 1 }], shadow = { sides = [\"old\"] } }",
            "config.shadow.sides[0]: unknown side \"old\"",
        ),
        (
            "cookie",
            "{ rules = [{ percent = 1 }], sticky = { by = [\"client\"], set_cookie = { name = \"sid\" } } }",
            "config.sticky.set_cookie.name: the cookie \"sid\" is not a key source",
        ),
    ];
    let legacy = "127.0.0.1:9".to_owned();
    let mut cfg = Cfg::new()
        .plugin_source("strangler", &plugin_path(), GRANTS)
        .upstream("legacy", std::slice::from_ref(&legacy), "")
        .upstream("new", std::slice::from_ref(&legacy), "");
    for (name, config, _) in &cases {
        cfg = cfg.toml(&route(name, config));
    }
    let checked = cfg.check();
    assert_eq!(checked.code, Some(2), "{checked}");
    for (i, (name, _, message)) in cases.iter().enumerate() {
        let key = format!("routes[{i}].pipeline[0].config: ");
        let route = format!("route \"{name}\"");
        assert!(
            checked
                .stderr
                .lines()
                .any(|l| l.contains(&key) && l.contains(&route) && l.contains(message)),
            "expected a line with {key:?}, {route:?} and {message:?}\n{checked}"
        );
    }

    // The same plugin with a good config passes.
    let good = Cfg::new()
        .plugin_source("strangler", &plugin_path(), GRANTS)
        .upstream("legacy", std::slice::from_ref(&legacy), "")
        .upstream("new", std::slice::from_ref(&legacy), "")
        .toml(&route(
            "good",
            "{ rules = [{ path_prefix = \"/api\", methods = [\"GET\"], percent = 12.5 }, { side = \"legacy\" }], shadow = { ignore_fields = [\"date\"] } }",
        ));
    let checked = good.check();
    assert_eq!(checked.code, Some(0), "{checked}");
    // Without the metrics grant the plugin does not load.
    let ungranted = Cfg::new()
        .plugin_source("strangler", &plugin_path(), "")
        .upstream("legacy", std::slice::from_ref(&legacy), "")
        .toml(&route("r", "{ rules = [{ percent = 1 }] }"));
    let checked = ungranted.check();
    assert_ne!(checked.code, Some(0), "{checked}");
    assert!(checked.stderr.contains("metrics"), "{checked}");
}
