//! Route matching: exact paths, segment-aware prefixes, methods, host, headers, first match
//! wins, the 404 for requests no route takes, and HTTP/2 with prior knowledge.
//!
//! Every route forwards to its own upstream server named like the route, so `x-upstream`
//! tells which route took a request.

use crate::support::{Cfg, Gateway, Req, Shared, Upstream};
use hyper::Version;

struct Env {
    gw: Gateway,
    _upstreams: Vec<Upstream>,
}

const ROUTES: &str = r#"
[[routes]]
name = "exact"
match = { path = "/exact" }
upstream = "exact"

[[routes]]
name = "methods"
match = { path_prefix = "/m", methods = ["POST", "put"] }
upstream = "methods"

[[routes]]
name = "host"
match = { path_prefix = "/h", host = "API.example.com" }
upstream = "host"

[[routes]]
name = "any-host"
match = { path_prefix = "/h" }
upstream = "any-host"

[[routes]]
name = "canary"
match = { path_prefix = "/canary", headers = { "X-Env" = "canary" } }
upstream = "canary"

[[routes]]
name = "first"
match = { path_prefix = "/o", headers = { x-first = "1" } }
upstream = "first"

[[routes]]
name = "second"
match = { path_prefix = "/o/deep" }
upstream = "second"

[[routes]]
name = "orders"
match = { path_prefix = "/orders" }
upstream = "orders"

[[routes]]
name = "files"
match = { path_prefix = "/files/" }
upstream = "files"
"#;

static ENV: Shared<Env> = Shared::new(|| {
    let names = [
        "exact", "methods", "host", "any-host", "canary", "first", "second", "orders", "files",
    ];
    let upstreams: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let mut cfg = Cfg::new();
    for up in &upstreams {
        cfg = cfg.upstream(up.name(), &[up.endpoint()], "");
    }
    Env {
        gw: Gateway::start(&cfg.toml(ROUTES)),
        _upstreams: upstreams,
    }
});

/// Which route took the request: the upstream's name, or `404` when none did.
async fn landed(req: Req) -> String {
    let resp = req.send().await;
    match resp.status {
        200 => resp
            .header("x-upstream")
            .unwrap_or_else(|| panic!("200 without x-upstream: {resp:?}")),
        404 => {
            resp.assert_gateway_error(404, "no_route");
            "404".into()
        }
        _ => panic!("unexpected response: {resp:?}"),
    }
}

#[tokio::test]
async fn exact_path_matches_only_that_path() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();

    let resp = gw.get("/exact").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(echo.upstream, "exact");
    assert_eq!(echo.path, "/exact");

    // The query is not part of the path match, and is forwarded unchanged.
    let resp = gw.get("/exact?page=2&x=%20y").send().await;
    assert_eq!(resp.echo().upstream, "exact", "{resp:?}");
    assert_eq!(resp.echo().path, "/exact?page=2&x=%20y");

    for path in ["/exact/", "/exact/more", "/exactly", "/EXACT", "/"] {
        assert_eq!(landed(gw.get(path)).await, "404", "GET {path}");
    }
}

#[tokio::test]
async fn prefix_matches_whole_segments_only() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for (path, want) in [
        ("/orders", "orders"),
        ("/orders/", "orders"),
        ("/orders/7", "orders"),
        ("/orders/7/items?all=1", "orders"),
        ("/orders-admin", "404"),
        ("/ordersx", "404"),
        ("/order", "404"),
        // A prefix ending in `/` takes what is below it, not the bare directory.
        ("/files/a.txt", "files"),
        ("/files/", "files"),
        ("/files", "404"),
        ("/filesystem", "404"),
    ] {
        assert_eq!(landed(gw.get(path)).await, want, "GET {path}");
    }
}

#[tokio::test]
async fn methods_restrict_a_route() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for (method, want) in [
        ("POST", "methods"),
        // Written lowercase in the config: methods are normalised.
        ("PUT", "methods"),
        ("GET", "404"),
        ("DELETE", "404"),
        ("PATCH", "404"),
    ] {
        let got = landed(gw.request(method, "/m/x").body("payload")).await;
        assert_eq!(got, want, "{method} /m/x");
    }
    let resp = gw.request("POST", "/m/x").body("payload").send().await;
    let echo = resp.echo();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.body, "payload");
}

#[tokio::test]
async fn host_is_matched_without_port_and_case() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for (host, want) in [
        ("api.example.com", "host"),
        ("API.Example.COM:8443", "host"),
        ("api.example.com.evil", "any-host"),
        ("other.example.com", "any-host"),
    ] {
        let got = landed(gw.get("/h/1").header("host", host)).await;
        assert_eq!(got, want, "Host: {host}");
    }
    // Without a custom Host header the client sends the gateway's own address.
    assert_eq!(landed(gw.get("/h/1")).await, "any-host");
    // The Host header reaches the upstream unchanged.
    let resp = gw
        .get("/h/1")
        .header("host", "api.example.com")
        .send()
        .await;
    assert_eq!(resp.echo().header("host"), Some("api.example.com"));
}

#[tokio::test]
async fn header_condition_needs_the_exact_value() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    assert_eq!(
        landed(gw.get("/canary/a").header("x-env", "canary")).await,
        "canary"
    );
    // Header names are case-insensitive, values are not.
    assert_eq!(
        landed(gw.get("/canary/a").header("X-ENV", "canary")).await,
        "canary"
    );
    assert_eq!(
        landed(gw.get("/canary/a").header("x-env", "Canary")).await,
        "404"
    );
    assert_eq!(
        landed(gw.get("/canary/a").header("x-env", "canary2")).await,
        "404"
    );
    assert_eq!(landed(gw.get("/canary/a")).await, "404");
    // One of several values is enough.
    assert_eq!(
        landed(
            gw.get("/canary/a")
                .header("x-env", "prod")
                .header("x-env", "canary")
        )
        .await,
        "canary"
    );
}

#[tokio::test]
async fn first_matching_route_wins() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    // Both "first" (/o + header) and "second" (/o/deep) match: the earlier one wins.
    assert_eq!(
        landed(gw.get("/o/deep/1").header("x-first", "1")).await,
        "first"
    );
    assert_eq!(landed(gw.get("/o/deep/1")).await, "second");
    assert_eq!(
        landed(gw.get("/o/shallow").header("x-first", "1")).await,
        "first"
    );
    assert_eq!(landed(gw.get("/o/shallow")).await, "404");
}

#[tokio::test]
async fn unmatched_request_gets_a_plain_404() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/no/such/route").send().await;
    resp.assert_gateway_error(404, "no_route");
    assert!(
        resp.text().starts_with("404 Not Found: "),
        "body should be a short status line: {resp:?}"
    );
    assert!(resp.text().ends_with('\n'), "{resp:?}");

    // A body on an unmatched request does not change the answer.
    let resp = gw
        .request("POST", "/nowhere")
        .body(vec![b'x'; 10_000])
        .send()
        .await;
    resp.assert_gateway_error(404, "no_route");
}

#[tokio::test]
async fn http2_prior_knowledge_is_routed_like_http1() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/orders/h2?q=1").http2().send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.version, Version::HTTP_2, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(echo.upstream, "orders");
    assert_eq!(echo.path, "/orders/h2?q=1");
    // HTTP/2 has no Host header: the gateway forwards the :authority as Host.
    assert_eq!(
        echo.header("host"),
        Some(gw.addr().to_string().as_str()),
        "{echo:?}"
    );

    let resp = gw
        .request("POST", "/m/h2")
        .body("over h2")
        .http2()
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.echo().body, "over h2");

    let resp = gw.get("/nowhere").http2().send().await;
    assert_eq!(resp.version, Version::HTTP_2);
    resp.assert_gateway_error(404, "no_route");
}
