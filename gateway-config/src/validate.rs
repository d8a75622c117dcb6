//! The validation pass: rules that serde's shape checks cannot express — ranges, address
//! syntax, cross references between routes, plugins and upstreams, duplicates and routes that
//! can never be reached.
//!
//! Every rule runs; all problems are reported at once, each at the key path it concerns.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::error::{ConfigError, ConfigErrors};
use crate::locate::{join_index, join_key, Locator};
use crate::model::{CallMode, Config, Match, Plugin, Route, Server, Upstream};

/// Pattern of plugin and upstream names.
pub(crate) const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]*$";

impl Config {
    /// Checks every rule that spans fields or tables and reports all problems at once, each
    /// located in the configuration's file (see [`Config::error_at`]), in file order.
    ///
    /// [`crate::load`] and [`crate::parse_str`] already call it; call it again after changing
    /// a configuration in code.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let problems = problems(self);
        if problems.is_empty() {
            return Ok(());
        }
        let locator = Locator::new(self.source_text());
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| locator.error(self.file(), &p.path, p.message))
            .collect();
        // Stable: problems on the same line keep the order of the checks.
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

/// A rule violation before it is located in the text.
struct Problem {
    path: String,
    message: String,
}

/// Collects problems as the checks find them.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn range<T: PartialOrd + Display>(
        &mut self,
        path: String,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.push(
                path,
                format!("must be between {min} and {max} (got {value})"),
            );
        }
    }

    fn at_least<T: PartialOrd + Display>(&mut self, path: String, value: T, min: T) {
        if value < min {
            self.push(path, format!("must be at least {min} (got {value})"));
        }
    }
}

/// Every problem of `config`, in check order.
fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Problems::default();
    check_server(&config.server, &mut out);
    check_backend(&config.backend, &mut out);
    for (name, plugin) in &config.plugins {
        check_plugin(name, plugin, &mut out);
    }
    for (name, upstream) in &config.upstreams {
        check_upstream(name, upstream, &mut out);
    }
    check_routes(config, &mut out);
    crate::leader::check(config, &mut out);
    crate::subscriptions::check(config, &mut out);
    crate::projections::check(config, &mut out);
    out.0
}

fn check_backend(backend: &crate::Backend, out: &mut Problems) {
    use crate::BackendKind;
    if backend.data_dir.as_os_str().is_empty() {
        out.push("backend.data_dir", "must not be empty");
    }
    match backend.kind {
        BackendKind::Embedded => {
            let nats_only = [
                ("backend.servers", !backend.servers.is_empty()),
                ("backend.credentials", backend.credentials.is_some()),
                ("backend.events_stream", backend.events_stream.is_some()),
                (
                    "backend.readmodels_stream",
                    backend.readmodels_stream.is_some(),
                ),
                ("backend.replicas", backend.replicas.is_some()),
            ];
            for (key, set) in nats_only {
                if set {
                    out.push(
                        key,
                        "only used with kind = \"nats\" (the backend is \"embedded\")",
                    );
                }
            }
        }
        BackendKind::Nats => {
            if backend.servers.is_empty() {
                out.push(
                    "backend.servers",
                    "list at least one NATS server (e.g. [\"nats://127.0.0.1:4222\"]) when kind = \"nats\"",
                );
            }
            for (i, server) in backend.servers.iter().enumerate() {
                let host = server
                    .strip_prefix("nats://")
                    .or_else(|| server.strip_prefix("tls://"));
                match host {
                    Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {}
                    _ => out.push(
                        format!("backend.servers[{i}]"),
                        format!("{server:?} is not a NATS URL (expected nats://host:port or tls://host:port)"),
                    ),
                }
            }
            if backend
                .credentials
                .as_ref()
                .is_some_and(|c| c.as_os_str().is_empty())
            {
                out.push("backend.credentials", "must not be empty");
            }
            let streams = [
                ("backend.events_stream", &backend.events_stream),
                ("backend.readmodels_stream", &backend.readmodels_stream),
            ];
            for (key, name) in streams {
                let Some(name) = name else { continue };
                let ok = !name.is_empty()
                    && name.len() <= 255
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    out.push(
                        key,
                        format!(
                            "{name:?} is not a JetStream stream name (1 to 255 letters, digits, `-` or `_`)"
                        ),
                    );
                }
            }
            if backend.readmodels_stream.is_some()
                && backend.readmodels_stream() == backend.events_stream()
            {
                out.push(
                    "backend.readmodels_stream",
                    "must differ from backend.events_stream (they are two JetStream streams)",
                );
            }
            if let Some(r) = backend.replicas {
                if ![1, 3, 5].contains(&r) {
                    out.push("backend.replicas", format!("must be 1, 3 or 5 (got {r})"));
                }
            }
        }
    }
}

fn check_server(server: &Server, out: &mut Problems) {
    let token_set = server.admin_token.as_deref().is_some_and(|t| !t.is_empty());
    if server.admin_token.as_deref() == Some("") {
        out.push("server.admin_token", "must not be empty");
    }
    if !server.admin.ip().is_loopback() && !token_set {
        out.push(
            "server.admin",
            format!(
                "admin listener {} is not loopback: set server.admin_token",
                server.admin
            ),
        );
    }
    if server.admin == server.listen && server.admin.port() != 0 {
        out.push(
            "server.admin",
            format!(
                "admin listener {} is the same address as server.listen",
                server.admin
            ),
        );
    }
    out.range(
        "server.max_header_bytes".into(),
        server.max_header_bytes,
        1024,
        1_048_576,
    );
    out.range("server.max_headers".into(), server.max_headers, 1, 1000);
    out.range(
        "server.header_read_timeout_ms".into(),
        server.header_read_timeout_ms,
        100,
        3_600_000,
    );
    out.range(
        "server.max_plugin_instances".into(),
        server.max_plugin_instances,
        1,
        100_000,
    );
    if server.cache_dir.as_os_str().is_empty() {
        out.push("server.cache_dir", "must not be empty");
    }
}

/// Whether `name` matches [`NAME_PATTERN`].
pub(crate) fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(crate) fn check_name(kind: &str, name: &str, path: &str, out: &mut Problems) {
    if !valid_name(name) {
        out.push(
            path,
            format!(
                "invalid {kind} name {name:?} (expected lowercase letters, digits, '_' or '-', \
                 starting with a letter or digit)"
            ),
        );
    }
}

fn check_plugin(name: &str, plugin: &Plugin, out: &mut Problems) {
    let base = join_key("plugins", name);
    check_name("plugin", name, &base, out);
    if plugin.source.as_os_str().is_empty() {
        out.push(
            join_key(&base, "source"),
            "must not be empty (expected the path of a .wasm component)",
        );
    }
    let grants = join_key(&base, "grants");
    for (i, grant) in plugin.grants.iter().enumerate() {
        if let Some(first) = plugin.grants[..i].iter().position(|g| g == grant) {
            out.push(
                join_index(&grants, i),
                format!("duplicate grant \"{grant}\" (already at grants[{first}])"),
            );
        }
    }
    out.range(join_key(&base, "timeout_ms"), plugin.timeout_ms, 1, 60_000);
    out.range(
        join_key(&base, "memory_limit_bytes"),
        plugin.memory_limit_bytes,
        65_536,
        1_073_741_824,
    );
    out.range(join_key(&base, "pool_size"), plugin.pool_size, 1, 1024);
    if plugin.calls == CallMode::Sync {
        let waiting: Vec<String> = plugin
            .grants
            .iter()
            .filter(|g| g.waits())
            .map(|g| format!("\"{g}\""))
            .collect();
        if !waiting.is_empty() {
            out.push(
                join_key(&base, "calls"),
                format!(
                    "calls = \"sync\" cannot be combined with the grants {} (their host \
                     functions wait): expected calls = \"async\" or grants without them",
                    waiting.join(", ")
                ),
            );
        }
    }
    if let Some(canary) = &plugin.canary {
        let c = join_key(&base, "canary");
        if canary.source.as_os_str().is_empty() {
            out.push(
                join_key(&c, "source"),
                "must not be empty (expected the path of a .wasm component)",
            );
        }
        out.range(join_key(&c, "percent"), canary.percent, 0, 100);
        if !(0.0..=1.0).contains(&canary.max_error_rate) {
            out.push(
                join_key(&c, "max_error_rate"),
                format!(
                    "{} is out of range (expected 0.0..=1.0)",
                    canary.max_error_rate
                ),
            );
        }
        if !(canary.max_latency_ms > 0.0 && canary.max_latency_ms.is_finite()) {
            out.push(
                join_key(&c, "max_latency_ms"),
                format!(
                    "{} is out of range (expected a positive number)",
                    canary.max_latency_ms
                ),
            );
        }
        out.range(
            join_key(&c, "min_requests"),
            canary.min_requests,
            1,
            u64::MAX,
        );
        if canary.promote_after < canary.min_requests {
            out.push(
                join_key(&c, "promote_after"),
                format!(
                    "{} is below min_requests ({}): expected promote_after >= min_requests",
                    canary.promote_after, canary.min_requests
                ),
            );
        }
    }
}

fn check_upstream(name: &str, upstream: &Upstream, out: &mut Problems) {
    let base = join_key("upstreams", name);
    check_name("upstream", name, &base, out);
    let endpoints = join_key(&base, "endpoints");
    if upstream.endpoints.is_empty() {
        out.push(
            endpoints.clone(),
            "expected at least one endpoint (host:port)",
        );
    }
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for (i, endpoint) in upstream.endpoints.iter().enumerate() {
        let path = join_index(&endpoints, i);
        match parse_endpoint(endpoint) {
            Ok(key) => {
                if let Some(first) = seen.get(&key) {
                    out.push(
                        path,
                        format!("duplicate endpoint {endpoint:?} (already at endpoints[{first}])"),
                    );
                } else {
                    seen.insert(key, i);
                }
            }
            Err(message) => out.push(path, message),
        }
    }
    out.at_least(
        join_key(&base, "connect_timeout_ms"),
        upstream.connect_timeout_ms,
        1,
    );
    out.at_least(join_key(&base, "timeout_ms"), upstream.timeout_ms, 1);
}

/// Parses `host:port` into a canonical (host, port) pair for duplicate detection, or says what
/// is wrong.
fn parse_endpoint(endpoint: &str) -> Result<(String, u16), String> {
    let bad_port =
        || format!("invalid port in {endpoint:?} (expected host:port with a port in 1..65535)");
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad_port());
        }
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let invalid = || format!("invalid address {endpoint:?} (expected host:port)");
    if endpoint.starts_with('[') {
        return Err(invalid());
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(invalid());
    };
    if host.contains(':') {
        return Err(format!(
            "invalid address {endpoint:?} (expected host:port; write IPv6 addresses in \
             brackets, e.g. \"[::1]:8080\")"
        ));
    }
    if host.is_empty() || port.is_empty() {
        return Err(invalid());
    }
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err(bad_port()),
    };
    if !valid_dns_name(host) {
        return Err(format!(
            "invalid host in {endpoint:?} (expected an IP address or DNS name)"
        ));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 characters, not starting or
/// ending with `-`; 253 characters at most.
fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 9110 token (method names, header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"a, b"` or `"none"`.
pub(crate) fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

fn check_routes(config: &Config, out: &mut Problems) {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut match_ok = Vec::with_capacity(config.routes.len());
    for (i, route) in config.routes.iter().enumerate() {
        let base = join_index("routes", i);
        if let Some(name) = &route.name {
            if name.trim().is_empty() {
                out.push(join_key(&base, "name"), "must not be empty");
            }
        }
        let name = config.route_name(i);
        if let Some(first) = names.get(&name) {
            let path = if route.name.is_some() {
                join_key(&base, "name")
            } else {
                base.clone()
            };
            out.push(
                path,
                format!("duplicate route name {name:?} (already used by routes[{first}])"),
            );
        } else {
            names.insert(name, i);
        }
        match_ok.push(check_match(&route.match_, &join_key(&base, "match"), out));
        check_target(config, route, &base, out);
        for (j, step) in route.pipeline.iter().enumerate() {
            let step_path = join_index(&join_key(&base, "pipeline"), j);
            if !config.plugins.contains_key(&step.plugin) {
                out.push(
                    join_key(&step_path, "plugin"),
                    format!(
                        "unknown plugin {:?} (known: {})",
                        step.plugin,
                        known(config.plugins.keys())
                    ),
                );
            }
            if !step.config.is_object() && !step.config.is_null() {
                out.push(
                    join_key(&step_path, "config"),
                    format!("expected a table (got {})", json_kind(&step.config)),
                );
            }
        }
        out.range(join_key(&base, "max_attempts"), route.max_attempts, 1, 10);
    }
    check_reachability(config, &match_ok, out);
}

pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a table",
    }
}

/// `upstream` xor `handler`, and that the one set exists.
fn check_target(config: &Config, route: &Route, base: &str, out: &mut Problems) {
    match (&route.upstream, &route.handler) {
        (Some(_), Some(_)) => out.push(
            base,
            "expected exactly one of \"upstream\" or \"handler\" (both are set)",
        ),
        (None, None) => out.push(
            base,
            "expected exactly one of \"upstream\" or \"handler\" (neither is set)",
        ),
        _ => {}
    }
    if let Some(upstream) = &route.upstream {
        if !config.upstreams.contains_key(upstream) {
            out.push(
                join_key(base, "upstream"),
                format!(
                    "unknown upstream {upstream:?} (known: {})",
                    known(config.upstreams.keys())
                ),
            );
        }
    }
    if let Some(handler) = &route.handler {
        if !config.plugins.contains_key(handler) {
            out.push(
                join_key(base, "handler"),
                format!(
                    "unknown plugin {handler:?} (known: {})",
                    known(config.plugins.keys())
                ),
            );
        }
    }
}

/// Checks one `match`; returns whether it is well-formed (so reachability can be judged).
fn check_match(m: &Match, base: &str, out: &mut Problems) -> bool {
    let before = out.0.len();
    if m.path.is_some() && m.path_prefix.is_some() {
        out.push(
            base,
            "expected at most one of \"path\" or \"path_prefix\" (both are set)",
        );
    }
    for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        let Some(value) = value else { continue };
        let path = join_key(base, key);
        if !value.starts_with('/') {
            out.push(path, format!("{key} {value:?} must start with \"/\""));
        } else if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            out.push(
                path,
                format!("{key} {value:?} must not contain whitespace, \"?\" or \"#\""),
            );
        }
    }
    let methods = join_key(base, "methods");
    for (i, method) in m.methods.iter().enumerate() {
        let path = join_index(&methods, i);
        if !is_token(method) {
            out.push(
                path,
                format!("invalid HTTP method {method:?} (expected a token such as \"GET\")"),
            );
        } else if let Some(first) = m.methods[..i]
            .iter()
            .position(|other| other.eq_ignore_ascii_case(method))
        {
            out.push(
                path,
                format!("duplicate method {method:?} (already at methods[{first}])"),
            );
        }
    }
    if let Some(host) = &m.host {
        if let Some(message) = host_problem(host) {
            out.push(join_key(base, "host"), message);
        }
    }
    let headers = join_key(base, "headers");
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &m.headers {
        let path = join_key(&headers, name);
        if !is_token(name) {
            out.push(
                path,
                format!("invalid header name {name:?} (expected a token such as \"x-env\")"),
            );
        } else if let Some(first) = seen.iter().find(|s| s.eq_ignore_ascii_case(name)) {
            out.push(
                path,
                format!(
                    "duplicate header {name:?} (same as {first:?}; header names are \
                     case-insensitive)"
                ),
            );
        } else if value.chars().any(|c| c.is_control() && c != '\t') {
            out.push(
                path,
                "invalid header value (control characters are not allowed)",
            );
        }
        seen.push(name);
    }
    out.0.len() == before
}

/// What is wrong with a `match.host`, if anything.
fn host_problem(host: &str) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() && !host.contains(':') {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<Ipv6Addr>().is_ok() {
            return None;
        }
    }
    if valid_dns_name(host) {
        return None;
    }
    let has_port = match host.rsplit_once(':') {
        Some((h, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (valid_dns_name(h) || h.starts_with('['))
        }
        None => false,
    };
    if has_port {
        Some(format!(
            "host {host:?} must not include a port (the request's port is ignored when \
             matching)"
        ))
    } else {
        Some(format!(
            "invalid host {host:?} (expected a DNS name, an IPv4 address or a bracketed IPv6 \
             address)"
        ))
    }
}

/// A route whose every request an earlier route already takes can never be reached.
fn check_reachability(config: &Config, match_ok: &[bool], out: &mut Problems) {
    let describe = |i: usize| match &config.routes[i].name {
        Some(name) => format!("route {name:?} (routes[{i}])"),
        None => format!("routes[{i}]"),
    };
    let subject = |i: usize| match &config.routes[i].name {
        Some(name) => format!("route {name:?}"),
        None => format!("routes[{i}]"),
    };
    for (j, later) in config.routes.iter().enumerate() {
        if !match_ok[j] {
            continue;
        }
        let earlier =
            (0..j).find(|&i| match_ok[i] && config.routes[i].match_.covers(&later.match_));
        let Some(i) = earlier else { continue };
        let message = if config.routes[i].match_.same_as(&later.match_) {
            format!(
                "{} has the same match as {} and can never be reached",
                subject(j),
                describe(i)
            )
        } else {
            format!(
                "{} is shadowed by {}, which matches every request it would, and can never be \
                 reached",
                subject(j),
                describe(i)
            )
        };
        out.push(join_key(&join_index("routes", j), "match"), message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(parse_endpoint("127.0.0.1:9001").is_ok());
        assert!(parse_endpoint("[::1]:9001").is_ok());
        assert!(parse_endpoint("orders.internal:80").is_ok());
        assert_eq!(
            parse_endpoint("127.0.0.1").unwrap_err(),
            "invalid address \"127.0.0.1\" (expected host:port)"
        );
        assert!(parse_endpoint("a:0").unwrap_err().contains("invalid port"));
        assert!(parse_endpoint("a:70000")
            .unwrap_err()
            .contains("invalid port"));
        assert!(parse_endpoint("a b:80")
            .unwrap_err()
            .contains("invalid host"));
        assert!(parse_endpoint("::1:80").unwrap_err().contains("brackets"));
        assert_eq!(
            parse_endpoint("Orders:80").unwrap(),
            parse_endpoint("orders:80").unwrap()
        );
    }

    #[test]
    fn names_and_tokens() {
        assert!(valid_name("a"));
        assert!(valid_name("0-a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("_a"));
        assert!(!valid_name("Breaker"));
        assert!(is_token("GET"));
        assert!(!is_token("G T"));
        assert!(host_problem("api.example.com").is_none());
        assert!(host_problem("[::1]").is_none());
        assert!(host_problem("10.0.0.1").is_none());
        assert!(host_problem("api.example.com:80").unwrap().contains("port"));
        assert!(host_problem("a b").unwrap().contains("invalid host"));
    }
}
