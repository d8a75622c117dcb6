//! Handler routes: a `wasi:http` component (`hello`) answers instead of an upstream, with or
//! without a filter pipeline in front of it.

use crate::support::{has_field, metric, Cfg, Fixture, Gateway, Shared};

/// `memory_limit_bytes` of `hello-small`.
const SMALL_MEMORY: usize = 2 * 1024 * 1024;

const ROUTES: &str = r#"
[[routes]]
name = "tiny"
match = { path = "/echo", headers = { x-tiny = "1" } }
handler = "hello-small"

[[routes]]
name = "echo"
match = { path = "/echo" }
handler = "hello"

[[routes]]
name = "decorated"
match = { path_prefix = "/decorated" }
handler = "hello"
pipeline = [
  { plugin = "headers", config = { request = { set = { x-from-pipeline = "1" } }, response = { set = { x-decorated = "yes" }, remove = ["x-hello-method"] } } },
]

[[routes]]
name = "hello"
match = { path_prefix = "/" }
handler = "hello"
"#;

static GW: Shared<Gateway> = Shared::new(|| {
    let cfg = Cfg::new()
        // A generous deadline: the tests run many gateways at once on few cores.
        .plugin("hello", Fixture::Hello, "timeout_ms = 2000")
        .plugin("headers", Fixture::Headers, "")
        // Room to start, not to buffer a large body.
        .plugin(
            "hello-small",
            Fixture::Hello,
            &format!("memory_limit_bytes = {SMALL_MEMORY}\ntimeout_ms = 5000"),
        )
        .server("max_request_body_bytes = 8388608")
        .toml(ROUTES);
    Gateway::start(&cfg)
});

#[tokio::test]
async fn hello_handler_answers() {
    let gw = GW.get();
    let _watch = gw.watch();
    let resp = gw.get("/hello/world?x=1").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "Hello from Ficus!\n");
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(resp.header("x-hello-method").as_deref(), Some("GET"));
    assert_eq!(
        resp.header("x-hello-path").as_deref(),
        Some("/hello/world?x=1")
    );

    for method in ["POST", "DELETE"] {
        let resp = gw.request(method, "/anything").body("ignored").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-hello-method").as_deref(), Some(method));
    }

    // Over HTTP/2 too.
    let resp = gw.get("/h2").http2().send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "Hello from Ficus!\n");
}

#[tokio::test]
async fn echo_handler_returns_the_body() {
    let gw = GW.get();
    let _watch = gw.watch();
    let resp = gw
        .request("POST", "/echo")
        .header("content-type", "application/x-test")
        .body("ping pong")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "ping pong");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/x-test")
    );

    // A larger body, not valid UTF-8, arrives byte for byte.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let resp = gw.request("PUT", "/echo").body(body.clone()).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "the echoed body differs");

    // An empty body is fine.
    let resp = gw.request("POST", "/echo").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.is_empty(), "{resp:?}");
}

#[tokio::test]
async fn handler_route_runs_its_pipeline() {
    let gw = GW.get();
    let _watch = gw.watch();
    let resp = gw.get("/decorated/page").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "Hello from Ficus!\n");
    assert_eq!(
        resp.header("x-decorated").as_deref(),
        Some("yes"),
        "{resp:?}"
    );
    assert_eq!(
        resp.header("x-hello-method"),
        None,
        "removed by the pipeline"
    );
    assert_eq!(
        resp.header("x-hello-path").as_deref(),
        Some("/decorated/page")
    );
}

#[tokio::test]
async fn failing_handler_is_reported_with_plugin_route_and_hook() {
    let gw = GW.get();
    let _watch = gw.watch();
    // Echoing a body larger than the instance's memory limit cannot succeed.
    let resp = gw
        .request("POST", "/echo")
        .header("x-tiny", "1")
        .body(vec![b'z'; 2 * SMALL_MEMORY])
        .send()
        .await;
    resp.assert_gateway_error(500, "plugin_error");

    gw.wait_for_log("the handler failure, naming plugin, route and hook", |e| {
        has_field(e, "plugin", "hello-small")
            && has_field(e, "route", "tiny")
            && has_field(e, "hook", "handle")
            && e.contains("memory limit")
    })
    .await;
    let text = gw.metrics().await;
    let labels = [
        ("plugin", "hello-small"),
        ("route", "tiny"),
        ("hook", "handle"),
        ("kind", "memory"),
    ];
    let n = metric(&text, "ficus_plugin_errors_total", &labels);
    assert!(
        n.is_some_and(|n| n >= 1.0),
        "ficus_plugin_errors_total{labels:?} = {n:?} in:\n{text}"
    );

    // The same plugin with a small body still works: only that request failed.
    let resp = gw
        .request("POST", "/echo")
        .header("x-tiny", "1")
        .body("small")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "small");
}
