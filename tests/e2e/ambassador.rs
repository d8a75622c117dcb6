//! The `ambassador` plugin (`plugins/ambassador`): retries (conditions, idempotency gate,
//! attempts cap, backoff, `Retry-After`, budget), per-try timeout and overall deadline, header
//! injection, the access log and metrics — against an upstream that fails on command
//! ([`Flaky`]). Timing checks are loose on purpose: they measure gaps on the upstream's side
//! and only assert bounds far from the expected values.
//!
//! The plugin's pure logic and its unit tests are compiled into this binary as well (module
//! [`logic`]), so that `cargo test --workspace`, which does not build the plugins workspace,
//! runs them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{
    dead_endpoint, has_field, metric, unique, Cfg, Fault, Fixture, Flaky, Gateway, Shared,
};

/// The plugin's pure logic (no host imports) with its unit tests, shared with the plugin crate
/// through `#[path]`: one source, tested natively by the plugin crate's `cargo test` and here.
#[allow(dead_code)] // Parts of it are used only by the plugin's Wasm glue.
#[path = "../../plugins/ambassador/src/logic.rs"]
mod logic;

/// The ambassador imports log, metrics and state, and needs a real clock.
const GRANTS: &str = r#"grants = ["log", "metrics", "state", "clock"]"#;

const ROUTES: &str = r#"
[[routes]]
name = "retry"
match = { path_prefix = "/retry" }
upstream = "flaky"
max_attempts = 3
pipeline = [{ plugin = "amb", config = { retry = { attempts = 3, backoff_base_ms = 20, backoff_max_ms = 80 }, budget = { enabled = false } } }]

[[routes]]
name = "backoff"
match = { path_prefix = "/backoff" }
upstream = "flaky"
max_attempts = 4
pipeline = [{ plugin = "amb", config = { retry = { attempts = 4, backoff_base_ms = 100, backoff_max_ms = 150 }, budget = { enabled = false } } }]

[[routes]]
name = "unsent"
match = { path_prefix = "/unsent" }
upstream = "mixed"
max_attempts = 2
pipeline = [{ plugin = "amb", config = { retry = { attempts = 2, backoff_base_ms = 1, backoff_max_ms = 1 }, budget = { enabled = false } } }]

[[routes]]
name = "retry-after"
match = { path_prefix = "/retry-after" }
upstream = "flaky"
max_attempts = 2
pipeline = [{ plugin = "amb", config = { retry = { attempts = 2, statuses = [429, "5xx"], backoff_base_ms = 1, backoff_max_ms = 1, max_retry_after_ms = 5000 }, budget = { enabled = false } } }]

[[routes]]
name = "no-budget"
match = { path_prefix = "/budget-zero" }
upstream = "flaky"
max_attempts = 3
pipeline = [{ plugin = "amb", config = { retry = { attempts = 3, backoff_base_ms = 1, backoff_max_ms = 1 }, budget = { ratio = 0.0, min_per_second = 0, scope = "route" } } }]

[[routes]]
name = "small-budget"
match = { path_prefix = "/budget-small" }
upstream = "flaky"
max_attempts = 2
pipeline = [{ plugin = "amb", config = { retry = { attempts = 2, backoff_base_ms = 1, backoff_max_ms = 1 }, budget = { ratio = 0.0, min_per_second = 2, scope = "route" } } }]

[[routes]]
name = "per-try"
match = { path_prefix = "/per-try" }
upstream = "flaky"
max_attempts = 2
pipeline = [{ plugin = "amb", config = { retry = { attempts = 2, per_try_timeout_ms = 300, backoff_base_ms = 1, backoff_max_ms = 1 }, budget = { enabled = false } } }]

[[routes]]
name = "deadline"
match = { path_prefix = "/deadline" }
upstream = "flaky"
max_attempts = 10
pipeline = [{ plugin = "amb", config = { retry = { attempts = 10, per_try_timeout_ms = 300, deadline_ms = 800, backoff_base_ms = 1, backoff_max_ms = 1 }, budget = { enabled = false } } }]

[[routes]]
name = "edge"
match = { path_prefix = "/edge" }
upstream = "flaky"
pipeline = [{ plugin = "amb", config = { auth = { bearer_token = "s3cret", api_key = { value = "k-123" } }, strip = { request = ["x-internal-user"], response = ["x-upstream"] } } }]
"#;

struct Env {
    gw: Gateway,
    flaky: Flaky,
}

static ENV: Shared<Env> = Shared::new(|| {
    let flaky = Flaky::start("flaky");
    let cfg = Cfg::new()
        .plugin("amb", Fixture::Ambassador, GRANTS)
        .upstream("flaky", &[flaky.endpoint()], "")
        // Round robin over a refusing endpoint and a live one.
        .upstream("mixed", &[dead_endpoint(), flaky.endpoint()], "")
        .toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        flaky,
    }
});

/// The access-log line of the request with this `x-request-id`.
async fn access_line(gw: &Gateway, request_id: &str) -> String {
    gw.wait_for_log(&format!("the access line of request {request_id}"), |e| {
        e.contains("access method=") && has_field(e, "request_id", request_id)
    })
    .await
}

fn assert_fields(line: &str, fields: &[(&str, &str)]) {
    for (name, value) in fields {
        assert!(
            has_field(line, name, value),
            "expected {name}={value} in the access line:\n{line}"
        );
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for Unix seconds.
fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn http_dates_round_trip() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    for t in [0, 951_782_400, 1_709_251_199, unix_now()] {
        assert_eq!(logic::parse_http_date(&http_date(t)), Some(t), "{t}");
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-5xx");
    env.flaky
        .fail_next(&id, [Fault::status(500), Fault::status(503)]);
    let resp = gw
        .get("/retry/a?secret=1")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 3);
    // Full jitter under caps of 20 and 40 ms: generous slack for a loaded machine.
    for (gap, cap) in env.flaky.gaps(&id).into_iter().zip([20, 40]) {
        assert!(gap < Duration::from_millis(cap + 1000), "gap {gap:?}");
    }
    let line = access_line(gw, &id).await;
    assert_fields(
        &line,
        &[
            ("method", "GET"),
            ("path", "/retry/a"),
            ("status", "200"),
            ("attempts", "3"),
            ("upstream", "flaky"),
            ("error", "-"),
            ("retried_on", "500,503"),
            ("denied", "-"),
            ("plugin", "amb"),
            ("route", "retry"),
        ],
    );
    assert!(!line.contains("secret"), "the query is not logged: {line}");
}

#[tokio::test]
async fn attempts_are_capped() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-cap");
    env.flaky.fail_next(&id, Fault::status(503).times(5));
    let resp = gw
        .get("/retry/cap")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 3, "retry.attempts = 3");
    let line = access_line(gw, &id).await;
    assert_fields(
        &line,
        &[
            ("status", "503"),
            ("attempts", "3"),
            ("retried_on", "503,503"),
            ("denied", "attempts"),
        ],
    );
}

#[tokio::test]
async fn only_idempotent_requests_are_retried() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();

    // POST without an idempotency key: the 503 goes to the client.
    let id = unique("amb-post");
    env.flaky.fail_next(&id, Fault::status(503).times(2));
    let resp = gw
        .request("POST", "/retry/post")
        .test_id(&id)
        .header("x-request-id", &id)
        .body("order")
        .send()
        .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 1, "a POST is not retried");
    let line = access_line(gw, &id).await;
    assert_fields(&line, &[("method", "POST"), ("denied", "not-idempotent")]);

    // Nor after a reset: the upstream may have acted on it.
    let id = unique("amb-post-reset");
    env.flaky.fail_next(&id, [Fault::Drop]);
    let resp = gw.request("POST", "/retry/post").test_id(&id).send().await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 1);

    // With an Idempotency-Key it is.
    let id = unique("amb-post-key");
    env.flaky.fail_next(&id, [Fault::status(503)]);
    let resp = gw
        .request("POST", "/retry/post")
        .test_id(&id)
        .header("Idempotency-Key", &id)
        .body("order")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let hits = env.flaky.hits(&id);
    assert_eq!(hits.len(), 2);
    for hit in &hits {
        assert_eq!(hit.method, "POST");
        assert_eq!(
            hit.headers.get("idempotency-key").map(String::as_str),
            Some(id.as_str())
        );
    }
    assert_eq!(resp.echo().body, "order", "the retry re-sends the body");

    // So are PUT and DELETE.
    for method in ["PUT", "DELETE"] {
        let id = unique("amb-idem");
        env.flaky.fail_next(&id, [Fault::status(502)]);
        let resp = gw.request(method, "/retry/x").test_id(&id).send().await;
        assert_eq!(resp.status, 200, "{method}: {resp:?}");
        assert_eq!(env.flaky.count(&id), 2, "{method}");
    }
}

#[tokio::test]
async fn resets_are_retried() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-reset");
    env.flaky.fail_next(&id, [Fault::Drop]);
    let resp = gw
        .get("/retry/reset")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 2);
    let line = access_line(gw, &id).await;
    assert_fields(&line, &[("attempts", "2"), ("retried_on", "reset")]);
}

#[tokio::test]
async fn refused_connections_are_retried_even_for_post() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    // Round robin over [dead, live]: of two requests in a row, at least one starts on the dead
    // endpoint. Only this test uses the `mixed` cluster.
    let id = unique("amb-unsent");
    let mut retried = 0;
    for n in 0..2 {
        let rid = format!("{id}-{n}");
        let resp = gw
            .request("POST", "/unsent")
            .test_id(&id)
            .header("x-request-id", &rid)
            .send()
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let line = access_line(gw, &rid).await;
        if has_field(&line, "retried_on", "connect-failed") {
            assert_fields(&line, &[("attempts", "2"), ("method", "POST")]);
            retried += 1;
        }
    }
    assert!(retried >= 1, "no request met the refusing endpoint");
    assert_eq!(
        env.flaky.count(&id),
        2,
        "each POST reached the upstream once"
    );
}

#[tokio::test]
async fn backoff_delays_stay_within_their_caps() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-backoff");
    env.flaky.fail_next(&id, Fault::status(503).times(3));
    let resp = gw.get("/backoff").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let gaps = env.flaky.gaps(&id);
    assert_eq!(gaps.len(), 3, "four attempts");
    // Caps: 100, 150 (200 capped at backoff_max_ms), 150 ms; slack for a loaded machine.
    for (gap, cap) in gaps.iter().zip([100u64, 150, 150]) {
        assert!(
            *gap <= Duration::from_millis(cap + 600),
            "gap {gap:?} exceeds the backoff cap {cap} ms (+600 ms slack): {gaps:?}"
        );
    }
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-ra-secs");
    env.flaky.fail_next(
        &id,
        [Fault::Status(429, vec![("retry-after", "1".to_string())])],
    );
    let resp = gw.get("/retry-after").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let gaps = env.flaky.gaps(&id);
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] >= Duration::from_millis(950),
        "Retry-After: 1 but the retry came after {:?}",
        gaps[0]
    );
    assert!(gaps[0] < Duration::from_secs(4), "{:?}", gaps[0]);
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-ra-date");
    // Two seconds ahead at one-second resolution: at least one second of waiting.
    let date = http_date(unix_now() + 2);
    env.flaky
        .fail_next(&id, [Fault::Status(503, vec![("retry-after", date)])]);
    let resp = gw.get("/retry-after/date").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let gaps = env.flaky.gaps(&id);
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] >= Duration::from_millis(900),
        "the retry came after {:?}",
        gaps[0]
    );
    assert!(gaps[0] < Duration::from_secs(5), "{:?}", gaps[0]);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_is_not_waited_for() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-ra-long");
    env.flaky.fail_next(
        &id,
        [Fault::Status(429, vec![("retry-after", "30".to_string())])],
    );
    let started = Instant::now();
    let resp = gw
        .get("/retry-after/long")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("retry-after").as_deref(), Some("30"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(env.flaky.count(&id), 1);
    let line = access_line(gw, &id).await;
    assert_fields(&line, &[("status", "429"), ("denied", "retry-after")]);
}

#[tokio::test]
async fn an_empty_budget_stops_retry_storms() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = unique("amb-budget0");
        env.flaky.fail_next(&id, Fault::status(503).times(3));
        let resp = gw
            .get("/budget-zero")
            .test_id(&id)
            .header("x-request-id", &id)
            .send()
            .await;
        assert_eq!(resp.status, 503, "{resp:?}");
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(env.flaky.count(id), 1, "budget 0 %, minimum 0: no retry");
    }
    let line = access_line(gw, &ids[0]).await;
    assert_fields(&line, &[("attempts", "1"), ("denied", "budget")]);
    let text = gw.metrics().await;
    let denied = metric(
        &text,
        "ambassador_retries_denied_total",
        &[("route", "no-budget"), ("reason", "budget")],
    );
    assert!(
        denied.is_some_and(|n| n >= 6.0),
        "budget exhaustion = {denied:?} in:\n{text}"
    );
}

#[tokio::test]
async fn a_small_budget_allows_a_few_retries_per_second() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    // Budget: 0 % of requests, at least 2 retries per one-second window.
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = unique("amb-budget2");
        env.flaky.fail_next(&id, [Fault::status(503)]);
        let resp = gw.get("/budget-small").test_id(&id).send().await;
        assert!(matches!(resp.status, 200 | 503), "{resp:?}");
        ids.push(id);
    }
    let elapsed = started.elapsed();
    let retries: usize = ids.iter().map(|id| env.flaky.count(id) - 1).sum();
    let windows = elapsed.as_secs() as usize + 2;
    assert!(retries >= 1, "the minimum allows some retries");
    assert!(
        retries <= 2 * windows,
        "{retries} retries in {elapsed:?} ({windows} windows of at most 2)"
    );
}

#[tokio::test]
async fn a_slow_answer_past_the_per_try_timeout_is_retried() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-per-try");
    env.flaky
        .fail_next(&id, [Fault::Slow(Duration::from_secs(3))]);
    let started = Instant::now();
    let resp = gw
        .get("/per-try")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.flaky.count(&id), 2);
    assert!(
        elapsed < Duration::from_millis(2500),
        "the slow attempt was not cut at 300 ms: {elapsed:?}"
    );
    let line = access_line(gw, &id).await;
    assert_fields(&line, &[("attempts", "2"), ("retried_on", "timeout")]);
}

#[tokio::test]
async fn the_deadline_stops_retries() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-deadline");
    env.flaky
        .fail_next(&id, Fault::Slow(Duration::from_secs(5)).times(10));
    let started = Instant::now();
    let resp = gw
        .get("/deadline")
        .test_id(&id)
        .header("x-request-id", &id)
        .send()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    // 300 ms per try, 800 ms in all: three attempts (the last one cut short), never ten.
    let hits = env.flaky.count(&id);
    assert!((2..=4).contains(&hits), "{hits} attempts");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
    let line = access_line(gw, &id).await;
    assert_fields(
        &line,
        &[
            ("status", "504"),
            ("error", "timeout"),
            ("denied", "deadline"),
        ],
    );
}

#[tokio::test]
async fn headers_are_injected_propagated_and_stripped() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();

    let id = unique("amb-edge");
    let resp = gw
        .get("/edge")
        .test_id(&id)
        .header("authorization", "Basic Y2xpZW50")
        .header("x-internal-user", "root")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(echo.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(echo.header("x-api-key"), Some("k-123"));
    assert_eq!(echo.header("x-internal-user"), None, "stripped");
    let generated = echo
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no request id reached the upstream: {echo:?}"))
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    assert_eq!(&generated[14..15], "4", "version 4: {generated}");
    assert_eq!(resp.header("x-request-id"), Some(generated.clone()));
    assert_eq!(
        resp.header("x-upstream"),
        None,
        "stripped from the response"
    );
    let line = access_line(gw, &generated).await;
    assert_fields(&line, &[("path", "/edge"), ("route", "edge")]);

    // A request id from the client is propagated as is.
    let given = unique("given-id");
    let resp = gw.get("/edge").header("x-request-id", &given).send().await;
    assert_eq!(resp.echo().header("x-request-id"), Some(given.as_str()));
    assert_eq!(resp.header("x-request-id"), Some(given));
}

#[tokio::test]
async fn metrics_are_exported() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("amb-metrics");
    env.flaky.fail_next(&id, [Fault::status(503)]);
    let resp = gw.get("/retry/metrics").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let text = gw.metrics().await;
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let value = metric(&text, name, labels);
        assert!(
            value.is_some_and(|v| v >= min),
            "{name}{labels:?} = {value:?} (expected >= {min}) in:\n{text}"
        );
    };
    let route = [("plugin", "amb"), ("route", "retry"), ("cluster", "flaky")];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = route.to_vec();
        labels.push(extra);
        labels
    };
    at_least("ambassador_attempts_total", &with(("outcome", "5xx")), 1.0);
    at_least("ambassador_attempts_total", &with(("outcome", "2xx")), 1.0);
    at_least("ambassador_retries_total", &with(("reason", "503")), 1.0);
    at_least("ambassador_requests_total", &with(("class", "2xx")), 1.0);
    at_least("ambassador_attempt_duration_seconds_count", &route, 2.0);
    at_least("ambassador_attempt_duration_seconds_bucket", &route, 2.0);
}

#[test]
fn check_rejects_bad_config_naming_the_key() {
    let checked = Cfg::new()
        .plugin("amb", Fixture::Ambassador, GRANTS)
        .upstream("main", &[dead_endpoint()], "")
        .toml(
            r#"
            [[routes]]
            name = "zero"
            match = { path_prefix = "/a" }
            upstream = "main"
            pipeline = [{ plugin = "amb", config = { retry = { attempts = 0 } } }]

            [[routes]]
            name = "fraction"
            match = { path_prefix = "/b" }
            upstream = "main"
            pipeline = [{ plugin = "amb", config = { budget = { ratio = 1.5 } } }]

            [[routes]]
            name = "class"
            match = { path_prefix = "/c" }
            upstream = "main"
            pipeline = [{ plugin = "amb", config = { retry = { statuses = ["5xx", "6xx"] } } }]

            [[routes]]
            name = "backoff"
            match = { path_prefix = "/d" }
            upstream = "main"
            pipeline = [{ plugin = "amb", config = { retry = { backoff_base_ms = 500, backoff_max_ms = 100 } } }]

            [[routes]]
            name = "typo"
            match = { path_prefix = "/e" }
            upstream = "main"
            pipeline = [{ plugin = "amb", config = { retry = { atempts = 2 } } }]
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    for (route, message) in [
        (
            "zero",
            "config.retry.attempts: must be between 1 and 10, got 0",
        ),
        (
            "fraction",
            "config.budget.ratio: must be a fraction between 0 and 1",
        ),
        (
            "class",
            "config.retry.statuses[1]: unknown status class \"6xx\"",
        ),
        (
            "backoff",
            "config.retry.backoff_base_ms: 500 is larger than retry.backoff_max_ms (100)",
        ),
        ("typo", "config.retry.atempts: unknown field `atempts`"),
    ] {
        assert!(
            checked
                .stderr
                .lines()
                .any(|l| l.contains(&format!("route \"{route}\"")) && l.contains(message)),
            "expected {message:?} for route {route:?}\n{checked}"
        );
    }
}

#[test]
fn check_requires_the_clock_grant() {
    let without_clock = Cfg::new()
        .plugin(
            "amb",
            Fixture::Ambassador,
            r#"grants = ["log", "metrics", "state"]"#,
        )
        .upstream("main", &[dead_endpoint()], "")
        .toml(
            r#"
            [[routes]]
            name = "r"
            upstream = "main"
            pipeline = [{ plugin = "amb" }]
            "#,
        );
    let checked = without_clock.check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("add \\\"clock\\\"")
            || checked
                .stderr
                .contains("add \"clock\" to this plugin's grants"),
        "{checked}"
    );

    let with_clock = Cfg::new()
        .plugin("amb", Fixture::Ambassador, GRANTS)
        .upstream("main", &[dead_endpoint()], "")
        .toml(
            r#"
            [[routes]]
            name = "r"
            upstream = "main"
            max_attempts = 3
            pipeline = [{ plugin = "amb", config = { retry = { attempts = 3, statuses = [429, "5xx"], deadline_ms = 5000 }, auth = { bearer_token = "t" } } }]
            "#,
        )
        .check();
    assert_eq!(with_clock.code, Some(0), "{with_clock}");
}
