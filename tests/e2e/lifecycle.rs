//! The process and its admin listener: health, metrics, status behind a token, malformed
//! requests, and graceful shutdown on SIGTERM.

use crate::support::{metric, raw_http, unique, Cfg, Fixture, Gateway, Shared, Upstream};
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-token";

struct Env {
    gw: Gateway,
    _main: Upstream,
}

static ENV: Shared<Env> = Shared::new(|| {
    let main = Upstream::start("main");
    let cfg = Cfg::new()
        .server(&format!("admin_token = {TOKEN:?}"))
        .plugin("headers", Fixture::Headers, "")
        .upstream("main", &[main.endpoint()], "")
        .toml(
            r#"
            [[routes]]
            name = "metered"
            match = { path_prefix = "/metered" }
            upstream = "main"
            pipeline = [{ plugin = "headers", config = { response = { set = { x-metered = "1" } } } }]

            [[routes]]
            name = "plain"
            match = { path_prefix = "/plain" }
            upstream = "main"
            "#,
        );
    Env {
        gw: Gateway::start(&cfg),
        _main: main,
    }
});

#[tokio::test]
async fn healthz_answers_ok() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.admin_get("/healthz").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "ok\n");
    // The admin listener is not the proxy: the proxy has no such route.
    let resp = gw.get("/healthz").send().await;
    resp.assert_gateway_error(404, "no_route");
    let resp = gw.admin_get("/nope").send().await;
    assert_eq!(resp.status, 404, "{resp:?}");
}

#[tokio::test]
async fn admin_status_requires_the_token() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Basic czNjcmV0"),
    ] {
        let mut req = gw.admin_get("/admin/status");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await;
        assert_eq!(resp.status, 401, "authorization {auth:?}: {resp:?}");
        assert_eq!(
            resp.header("x-ficus-error").as_deref(),
            Some("unauthorized")
        );
    }
    let resp = gw
        .admin_get("/admin/status")
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let status = resp.json();
    assert!(status["uptime_seconds"].is_u64(), "{status}");
    let routes = status["routes"].as_array().expect("routes");
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["metered", "plain"], "{status}");
    assert_eq!(
        routes[0]["pipeline"],
        serde_json::json!(["headers"]),
        "{status}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_class() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for want in ["200", "200", "404", "503"] {
        let resp = gw
            .get("/metered")
            .header("x-want-status", want)
            .send()
            .await;
        assert_eq!(resp.status.to_string(), want, "{resp:?}");
        assert_eq!(resp.header("x-metered").as_deref(), Some("1"));
    }
    // /metrics needs no token.
    let text = gw.metrics().await;
    let count = |class: &str| {
        metric(
            &text,
            "ficus_requests_total",
            &[("route", "metered"), ("class", class)],
        )
    };
    assert_eq!(count("2xx"), Some(2.0), "{text}");
    assert_eq!(count("4xx"), Some(1.0), "{text}");
    assert_eq!(count("5xx"), Some(1.0), "{text}");
    assert!(
        text.contains("# TYPE ficus_requests_total counter"),
        "Prometheus type lines: {text}"
    );
    let observed = metric(
        &text,
        "ficus_request_duration_seconds_count",
        &[("route", "metered")],
    );
    assert_eq!(observed, Some(4.0), "{text}");
}

#[tokio::test]
async fn malformed_requests_are_rejected_and_the_gateway_carries_on() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let answer = raw_http(gw.addr(), b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "garbage: {answer:?}");

    // A request head larger than server.max_header_bytes (16 KiB by default).
    let big = format!(
        "GET /plain HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let answer = raw_http(gw.addr(), big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized head: {answer:?}"
    );

    // A bad Content-Length.
    let answer = raw_http(
        gw.addr(),
        b"POST /plain HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "bad content-length: {answer:?}"
    );

    assert!(gw.is_running());
    let resp = gw.get("/plain").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// Whether a new TCP connection to `addr` is refused.
async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start("slow");
    let gw = Gateway::start(
        &Cfg::new()
            .upstream("slow", &[up.endpoint()], "")
            .toml("[[routes]]\nname = \"slow\"\nupstream = \"slow\""),
    );
    let id = unique("inflight");
    let in_flight = tokio::spawn(
        gw.get("/work")
            .test_id(&id)
            .header("x-delay-ms", "1000")
            .send(),
    );
    // Wait until the upstream holds the request, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count(&id) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.terminate();

    // The listener closes at once, while the request is still being served.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !refused(gw.addr()).await {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the in-flight request should still be waiting on the upstream"
    );

    let resp = in_flight.await.expect("the request task");
    assert_eq!(
        resp.status, 200,
        "the in-flight request completes: {resp:?}"
    );
    assert_eq!(resp.echo().upstream, "slow");

    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits after draining");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(refused(gw.addr()).await);
    gw.wait_for_log("the shutdown", |e| e.contains("shutdown requested"))
        .await;
}

#[tokio::test]
async fn shutdown_grace_period_bounds_the_drain() {
    let up = Upstream::start("stuck");
    let gw = Gateway::start(
        &Cfg::new()
            .server("shutdown_grace_ms = 300")
            .upstream("stuck", &[up.endpoint()], "")
            .toml("[[routes]]\nname = \"stuck\"\nupstream = \"stuck\""),
    );
    let id = unique("stuck");
    let in_flight = tokio::spawn(
        gw.get("/work")
            .test_id(&id)
            .header("x-delay-ms", "20000")
            .try_send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count(&id) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits when the grace period ends");
    let took = stopping.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "exit should follow the 300 ms grace period, took {took:?}"
    );
    gw.wait_for_log("the expired grace period", |e| {
        e.contains("grace period elapsed")
    })
    .await;
    let result = in_flight.await.expect("the request task");
    assert!(
        result.is_err(),
        "the stuck request cannot have completed: {result:?}"
    );
}

/// Read one HTTP/1.1 response (head and `content-length` body) from a
/// keep-alive connection; `None` when the connection ends first.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the gateway closes `stream` within `within` (reads until EOF).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let eof = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, eof).await.is_ok()
}

/// `server.header_read_timeout_ms`: a client trickling a request head is cut
/// off at the timeout, an idle keep-alive connection is closed after it, and a
/// keep-alive connection whose requests come within it stays open across many
/// timeout periods (each head gets its own deadline; the per-connection timer
/// is re-armed, not fired, for a deadline left by an earlier request). The
/// upstream attempt timeouts of the same connection share that timer: a
/// shorter one fires on time, and the header deadlines still hold after it.
#[tokio::test]
async fn header_read_timeout_cuts_slow_heads_not_busy_keep_alive_connections() {
    use tokio::io::AsyncWriteExt;
    let main = Upstream::start("main");
    let slow = Upstream::start("slow");
    let cfg = Cfg::new()
        .server("header_read_timeout_ms = 400")
        .upstream("main", &[main.endpoint()], "")
        .upstream("slow", &[slow.endpoint()], "timeout_ms = 150")
        .toml(
            r#"
            [[routes]]
            name = "plain"
            match = { path_prefix = "/plain" }
            upstream = "main"

            [[routes]]
            name = "slow"
            match = { path_prefix = "/slow" }
            upstream = "slow"
            "#,
        );
    let gw = Gateway::start(&cfg);
    let _watch = gw.watch();

    // Half a request head, then nothing: closed at the timeout, not before.
    let mut slow = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    slow.write_all(b"GET /plain HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "a connection trickling its head was not closed"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the 400 ms timeout",
        sent.elapsed()
    );

    // Requests 250 ms apart on one connection: 6 requests span 3 timeout
    // periods, and every head comes within 400 ms of the previous response.
    // Every third one goes to an upstream slower than its 150 ms timeout.
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    for i in 0..6 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let timed_out = i % 3 == 2;
        let request: &[u8] = if timed_out {
            b"GET /slow/ka HTTP/1.1\r\nhost: x\r\nx-delay-ms: 3000\r\n\r\n"
        } else {
            b"GET /plain/ka HTTP/1.1\r\nhost: x\r\n\r\n"
        };
        conn.write_all(request)
            .await
            .unwrap_or_else(|e| panic!("request {i}: write failed: {e}"));
        let sent = Instant::now();
        let resp = read_response(&mut conn)
            .await
            .unwrap_or_else(|| panic!("request {i}: the connection was closed"));
        if timed_out {
            assert!(resp.starts_with("HTTP/1.1 504"), "request {i}: {resp:?}");
            assert!(
                sent.elapsed() < Duration::from_millis(2500),
                "request {i}: the 504 came after {:?}, not at the 150 ms timeout",
                sent.elapsed()
            );
        } else {
            assert!(resp.starts_with("HTTP/1.1 200"), "request {i}: {resp:?}");
        }
    }
    // Then idle: closed after the timeout.
    let idle = Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(10)).await,
        "an idle keep-alive connection was not closed"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(300),
        "{:?}",
        idle.elapsed()
    );

    assert!(gw.is_running());
    let resp = gw.get("/plain").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// A header-read timeout outside its range is a config error naming the key.
#[test]
fn header_read_timeout_out_of_range_is_a_config_error() {
    let checked = Cfg::new()
        .server("header_read_timeout_ms = 5")
        .upstream("main", &["127.0.0.1:9".to_string()], "")
        .toml(
            r#"
            [[routes]]
            name = "plain"
            match = { path_prefix = "/" }
            upstream = "main"
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked
            .stderr
            .contains("server.header_read_timeout_ms: must be between 100 and 3600000 (got 5)"),
        "{checked}"
    );
}
