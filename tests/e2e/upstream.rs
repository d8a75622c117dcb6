//! Upstream clusters: connection failures (502), connect timeouts and per-attempt timeouts (504), keep-alive
//! connections, round robin, forwarding headers, hop-by-hop headers, request bodies and the request body limit (413).

use crate::hanging::HangingEndpoint;
use crate::support::{
    dead_endpoint, metric, raw_http, unique, BrokenUpstream, Cfg, Gateway, Shared, Upstream,
};
use std::time::{Duration, Instant};

struct Env {
    gw: Gateway,
    dead: String,
    slow: Upstream,
    echo: Upstream,
    keep: Upstream,
    _hanging: HangingEndpoint,
    _rr: [Upstream; 2],
    _broken: [BrokenUpstream; 3],
}

/// `server.max_request_body_bytes` of this module's gateway.
const BODY_LIMIT: usize = 1024;

/// `timeout_ms` of the `slow` cluster.
const SLOW_TIMEOUT_MS: u64 = 300;

const ROUTES: &str = r#"
[[routes]]
name = "dead"
match = { path_prefix = "/dead" }
upstream = "dead"

[[routes]]
name = "slow"
match = { path_prefix = "/slow" }
upstream = "slow"

[[routes]]
name = "leaving"
match = { path_prefix = "/leaving" }
upstream = "slow"

[[routes]]
name = "rr"
match = { path_prefix = "/rr" }
upstream = "rr"

[[routes]]
name = "echo"
match = { path_prefix = "/echo" }
upstream = "echo"

[[routes]]
name = "hangup"
match = { path_prefix = "/hangup" }
upstream = "hangup"

[[routes]]
name = "garbage"
match = { path_prefix = "/garbage" }
upstream = "garbage"

[[routes]]
name = "hanging"
match = { path_prefix = "/hanging" }
upstream = "hanging"

[[routes]]
name = "keep"
match = { path_prefix = "/keep" }
upstream = "keep"

[[routes]]
name = "once"
match = { path_prefix = "/once" }
upstream = "once"
"#;

static ENV: Shared<Env> = Shared::new(|| {
    let dead = dead_endpoint();
    let slow = Upstream::start("slow");
    let echo = Upstream::start("echo");
    let rr = [Upstream::start("rr1"), Upstream::start("rr2")];
    let hangup = BrokenUpstream::start(b"");
    let garbage = BrokenUpstream::start(b"SPEAKING NO HTTP\r\n\r\n");
    let keep = Upstream::start("keep");
    let hanging = HangingEndpoint::start();
    // Answers one request per connection, without saying it closes.
    let once = BrokenUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce");
    let cfg = Cfg::new()
        .server(&format!("max_request_body_bytes = {BODY_LIMIT}"))
        .upstream(
            "dead",
            std::slice::from_ref(&dead),
            "connect_timeout_ms = 500",
        )
        .upstream(
            "slow",
            &[slow.endpoint()],
            &format!("timeout_ms = {SLOW_TIMEOUT_MS}"),
        )
        .upstream("rr", &[rr[0].endpoint(), rr[1].endpoint()], "")
        .upstream("echo", &[echo.endpoint()], "")
        .upstream("hangup", &[hangup.endpoint()], "")
        .upstream("garbage", &[garbage.endpoint()], "")
        .upstream("keep", &[keep.endpoint()], "")
        .upstream(
            "hanging",
            &[hanging.addr().to_string()],
            "connect_timeout_ms = 300",
        )
        .upstream("once", &[once.endpoint()], "")
        .toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        dead,
        slow,
        echo,
        keep,
        _hanging: hanging,
        _rr: rr,
        _broken: [hangup, garbage, once],
    }
});

#[tokio::test]
async fn refused_connection_is_502_without_internals() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let resp = gw.get("/dead/x").send().await;
    resp.assert_gateway_error(502, "upstream_connect_failed");
    let port = env.dead.rsplit(':').next().unwrap_or_default();
    assert!(
        !resp.text().contains(port) && !resp.text().to_lowercase().contains("refused"),
        "the client must not see upstream details: {resp:?}"
    );
    // The operator does: the log names route, cluster and endpoint.
    gw.wait_for_log("the failed attempt", |e| {
        e.contains("upstream attempt failed") && e.contains(&env.dead) && e.contains("dead")
    })
    .await;
}

#[tokio::test]
async fn a_connect_that_hangs_is_504_at_the_connect_timeout() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let sent = Instant::now();
    let resp = gw.get("/hanging").send().await;
    resp.assert_gateway_error(504, "upstream_connect_timeout");
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "not before the connect timeout: {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn broken_upstreams_are_502_by_kind() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    // The connection closes before a response head arrives.
    let resp = gw.get("/hangup").send().await;
    resp.assert_gateway_error(502, "upstream_reset");
    // Something that is not HTTP comes back.
    let resp = gw.get("/garbage").send().await;
    resp.assert_gateway_error(502, "upstream_protocol");
    assert!(
        !resp.text().contains("SPEAKING"),
        "the upstream's bytes are not passed on: {resp:?}"
    );
}

#[tokio::test]
async fn slow_upstream_times_out_with_504() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("slow");
    let started = Instant::now();
    let resp = gw
        .get("/slow")
        .test_id(&id)
        .header("x-delay-ms", "5000")
        .send()
        .await;
    let elapsed = started.elapsed();
    resp.assert_gateway_error(504, "upstream_timeout");
    assert!(
        elapsed < Duration::from_millis(4000),
        "the 504 should come after about {SLOW_TIMEOUT_MS} ms, not when the upstream answers \
         (took {elapsed:?})"
    );
    assert_eq!(env.slow.count(&id), 1, "the upstream got the request");

    // Within the timeout the answer gets through.
    let resp = gw.get("/slow").header("x-delay-ms", "20").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// A route without response hooks runs its pipeline on the client's own
/// connection task; a client that goes away still shows in the route's
/// metrics, as a `499` (class 4xx), and the gateway keeps serving.
#[tokio::test]
async fn a_client_that_goes_away_is_counted_as_499() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let gone = gw
        .get("/leaving")
        .header("x-delay-ms", "250")
        .timeout(Duration::from_millis(80))
        .try_send()
        .await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        let left = metric(
            &text,
            "ficus_requests_total",
            &[("route", "leaving"), ("class", "4xx")],
        );
        if left == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request is counted once as 4xx (499): {left:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = gw.get("/leaving").header("x-delay-ms", "10").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// Upstream connections are kept alive: sequential requests share one. An
/// upstream that closes each connection after its answer, without a
/// `connection: close`, costs a new connection per request, never a failed
/// request.
#[tokio::test]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for i in 0..5 {
        let resp = gw.get("/keep").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    assert_eq!(env.keep.connections(), 1, "one kept-alive connection");
    for i in 0..5 {
        let resp = gw.get("/once").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.text(), "once");
    }
}

#[tokio::test]
async fn round_robin_alternates_between_endpoints() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let mut order = Vec::new();
    for _ in 0..6 {
        let resp = gw.get("/rr").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        order.push(resp.header("x-upstream").expect("x-upstream"));
    }
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {order:?}");
    }
    assert_eq!(order.iter().filter(|u| *u == "rr1").count(), 3, "{order:?}");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_dropped() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/echo/fwd").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{echo:?}"
    );
    assert_eq!(echo.header("x-forwarded-proto"), Some("http"), "{echo:?}");
    assert_eq!(echo.header("host"), Some(gw.addr().to_string().as_str()));

    // A request naming no host (HTTP/1.0) reaches the upstream with the
    // endpoint's address as its `Host`, and in origin form: the pool's
    // placeholder authority (`Endpoint::pool_authority`) never leaves.
    let answer = raw_http(gw.addr(), b"GET /echo/nohost?q=1 HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let json: serde_json::Value = serde_json::from_str(body).expect("the echo");
    assert_eq!(json["path"], "/echo/nohost?q=1", "{json}");
    assert_eq!(
        json["headers"]["host"],
        ENV.get().echo.endpoint().as_str(),
        "{json}"
    );

    // HEAD is forwarded as HEAD and answered without a body.
    let resp = gw.request("HEAD", "/echo/head").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-upstream").as_deref(), Some("echo"));
    assert!(resp.body.is_empty(), "{resp:?}");

    // An existing X-Forwarded-For is extended, not replaced.
    let resp = gw
        .get("/echo/fwd")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await;
    assert_eq!(
        resp.echo().header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );

    // Hop-by-hop headers, and those named in Connection, stay on the client's hop.
    let resp = gw
        .get("/echo/hop")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-kept", "1")
        .send()
        .await;
    let echo = resp.echo();
    assert_eq!(echo.header("x-hop"), None, "{echo:?}");
    assert_eq!(echo.header("keep-alive"), None, "{echo:?}");
    assert_eq!(echo.header("x-kept"), Some("1"), "{echo:?}");
}

#[tokio::test]
async fn request_bodies_are_forwarded_up_to_the_limit() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let body = "b".repeat(BODY_LIMIT);
    let resp = gw
        .request("PUT", "/echo/body")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(echo.method, "PUT");
    assert_eq!(echo.body, body, "the body at the limit is forwarded whole");
}

#[tokio::test]
async fn oversized_request_body_is_413() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();

    // Declared by Content-Length.
    let id = unique("big");
    let resp = gw
        .request("POST", "/echo/big")
        .test_id(&id)
        .body(vec![b'x'; BODY_LIMIT + 1])
        .send()
        .await;
    resp.assert_gateway_error(413, "request_body_too_large");
    assert_eq!(env.echo.count(&id), 0, "the upstream must not be called");

    // Chunked, so the size is only known while reading.
    let id = unique("chunked");
    let chunk = "y".repeat(BODY_LIMIT);
    let request = format!(
        "POST /echo/chunked HTTP/1.1\r\nhost: test\r\nx-test-id: {id}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let answer = raw_http(gw.addr(), request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked body over the limit: {answer}"
    );
    assert!(answer.contains("request_body_too_large"), "{answer}");
    assert_eq!(env.echo.count(&id), 0, "the upstream must not be called");
}
