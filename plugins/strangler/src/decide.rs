//! The strangler's pure logic: the configuration and its validation, rule
//! matching, the sticky bucket hash, force overrides and the shadow policy.
//!
//! Nothing here calls the host: the request is read through the [`Inputs`]
//! trait and randomness comes in as a closure, so this module compiles and is
//! unit-tested natively. Besides this crate's own `cargo test`, the root
//! workspace's end-to-end test binary includes this file
//! (`tests/e2e/strangler.rs`, `#[path]` module), so `cargo test --workspace`
//! runs these unit tests too, and the end-to-end tests predict the gateway's
//! choices with the same code. Keep it free of `ficus_sdk` and `wasip2`: it
//! may use only `std`, `serde` and `serde_json`.
//!
//! # The sticky split
//!
//! A user key (cookie, header, query parameter or client address) is hashed
//! with the configured salt onto a bucket in `0..10000`:
//! `bucket = fmix64(fnv1a64(salt ‖ 0xff ‖ key)) mod 10000`. A request goes to
//! the new side iff `bucket < round(percent × 100)`. The bucket depends only
//! on the salt and the key, so raising a rule's percentage only ever moves
//! users from legacy to new, never back, and lowering it only moves them
//! back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

/// Number of buckets users are hashed onto: 0.01 % resolution.
pub(crate) const BUCKETS: u32 = 10_000;

/// Defaults, as documented in the plugin's README.
pub(crate) mod defaults {
    /// `legacy`: the legacy side's cluster.
    pub(crate) const LEGACY_CLUSTER: &str = "legacy";
    /// `new`: the new side's cluster.
    pub(crate) const NEW_CLUSTER: &str = "new";
    /// `response_header`.
    pub(crate) const RESPONSE_HEADER: &str = "x-strangler-side";
    /// `override.header`.
    pub(crate) const OVERRIDE_HEADER: &str = "x-strangler";
    /// `sticky.by` without `sticky.set_cookie`.
    pub(crate) const STICKY_BY: &str = "client";
    /// `sticky.set_cookie.path`.
    pub(crate) const COOKIE_PATH: &str = "/";
    /// `sticky.set_cookie.max_age_s`: one year.
    pub(crate) const COOKIE_MAX_AGE_S: u64 = 365 * 24 * 3600;
    /// `sticky.set_cookie.same_site`.
    pub(crate) const COOKIE_SAME_SITE: &str = "Lax";
    /// `shadow.label`.
    pub(crate) const SHADOW_LABEL: &str = "strangler";
    /// `shadow.methods`: only safe methods are copied by default, so that a
    /// write is never performed twice.
    pub(crate) const SHADOW_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
}

/// Browsers cap cookie lifetimes at 400 days.
const MAX_COOKIE_AGE_S: u64 = 400 * 24 * 3600;

/// Headers the gateway manages; plugins cannot set them.
const HOST_MANAGED: [&str; 9] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// ---------------------------------------------------------------------------
// Sides
// ---------------------------------------------------------------------------

/// One side of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Side {
    /// The legacy service.
    Legacy,
    /// The new service.
    New,
}

impl Side {
    /// `legacy` or `new`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }

    /// The side a shadow copy goes to.
    pub(crate) fn other(self) -> Side {
        match self {
            Side::Legacy => Side::New,
            Side::New => Side::Legacy,
        }
    }

    /// Parse a side name (ASCII case-insensitive, surrounding blanks
    /// ignored), as written in a config or sent in an override.
    pub(crate) fn parse(text: &str) -> Option<Side> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("legacy") {
            Some(Side::Legacy)
        } else if text.eq_ignore_ascii_case("new") {
            Some(Side::New)
        } else {
            None
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------

/// 64-bit FNV-1a over the concatenation of `parts`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak low bits.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The user's bucket in `0..BUCKETS`. Stable across versions and platforms:
/// changing it would reshuffle every user, so its output is pinned by tests.
pub(crate) fn bucket(salt: &str, key: &str) -> u32 {
    let h = fmix64(fnv1a64(&[salt.as_bytes(), &[0xff], key.as_bytes()]));
    (h % u64::from(BUCKETS)) as u32
}

/// The bucket threshold of a percentage: users with `bucket < threshold` go
/// to the new side. `percent` must be in `0..=100`.
pub(crate) fn threshold(percent: f64) -> u32 {
    ((percent * 100.0).round() as u32).min(BUCKETS)
}

/// The side for a bucket under a threshold.
pub(crate) fn side_for(bucket: u32, threshold: u32) -> Side {
    if bucket < threshold {
        Side::New
    } else {
        Side::Legacy
    }
}

/// Spreads shadow copies evenly: with a threshold of `t` buckets, exactly
/// `t` of every `BUCKETS` eligible requests are copied (per instance).
#[derive(Debug, Default, Clone)]
pub(crate) struct Sampler {
    acc: u32,
}

impl Sampler {
    /// Whether this request is sampled.
    pub(crate) fn take(&mut self, threshold: u32) -> bool {
        if threshold >= BUCKETS {
            return true;
        }
        self.acc += threshold;
        if self.acc >= BUCKETS {
            self.acc -= BUCKETS;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Request parsing helpers
// ---------------------------------------------------------------------------

/// Split a `path-with-query` into the path and the query (without `?`).
pub(crate) fn split_path_query(pwq: &str) -> (&str, Option<&str>) {
    match pwq.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (pwq, None),
    }
}

/// Segment-aware prefix match, as the gateway's own `path_prefix`: `/api`
/// matches `/api` and `/api/x`, not `/apix`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (prefix.ends_with('/')
                || path.len() == prefix.len()
                || path.as_bytes()[prefix.len()] == b'/'))
}

/// The value of cookie `name` in the `cookie` header values (`a=1; b=2`),
/// first occurrence; surrounding double quotes are removed.
pub(crate) fn cookie_value(headers: &[String], name: &str) -> Option<String> {
    for header in headers {
        for pair in header.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() == name {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.to_string());
            }
        }
    }
    None
}

/// Decode `%XX` escapes and `+` (space) in a query component; invalid
/// escapes are kept as written, invalid UTF-8 is replaced.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `name` (first occurrence, decoded); a
/// parameter without `=` has the empty value.
pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return Some(percent_decode(v));
        }
    }
    None
}

/// The IP of a client address `ip:port` (`[v6]:port` → `v6`).
pub(crate) fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

// ---------------------------------------------------------------------------
// What the decision reads from the request
// ---------------------------------------------------------------------------

/// The parts of a request the decision reads; the plugin implements it over
/// the request handle (each call may cost a host call), tests over a struct.
pub(crate) trait Inputs {
    /// The method, e.g. `GET`.
    fn method(&self) -> &str;
    /// Path and query, e.g. `/orders/7?x=1`.
    fn path_with_query(&self) -> &str;
    /// The first value of a header (name in lower case), as text.
    fn header(&self, name: &str) -> Option<String>;
    /// The value of a cookie.
    fn cookie(&self, name: &str) -> Option<String>;
    /// The client address, `ip:port`.
    fn client_addr(&self) -> String;
}

// ---------------------------------------------------------------------------
// Raw configuration: the JSON the host passes to `configure`.
// ---------------------------------------------------------------------------

/// The per-route config as written. Unknown keys are rejected; numbers are
/// read as floating or signed values so that out-of-range values get a
/// message naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    legacy: Option<String>,
    new: Option<String>,
    rules: Option<Vec<RawRule>>,
    default: Option<String>,
    #[serde(default)]
    sticky: RawSticky,
    #[serde(default, rename = "override")]
    force: RawOverride,
    shadow: Option<RawShadow>,
    response_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    cookies: Option<BTreeMap<String, String>>,
    query: Option<BTreeMap<String, String>>,
    percent: Option<f64>,
    side: Option<String>,
    shadow: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    by: Option<Vec<String>>,
    salt: Option<String>,
    set_cookie: Option<RawSetCookie>,
    anonymous: Option<String>,
    endpoint_affinity: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetCookie {
    name: String,
    path: Option<String>,
    domain: Option<String>,
    max_age_s: Option<i64>,
    http_only: Option<bool>,
    secure: Option<bool>,
    same_site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    enabled: Option<bool>,
    header: Option<String>,
    cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    enabled: Option<bool>,
    label: Option<String>,
    percent: Option<f64>,
    methods: Option<Vec<String>>,
    sides: Option<Vec<String>>,
    status: Option<bool>,
    headers: Option<Vec<String>>,
    body: Option<bool>,
    ignore_fields: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------

/// What a match condition wants of a header, cookie or query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// Present, with any value (written `"*"`).
    Present,
    /// Exactly this value.
    Exact(String),
}

impl Want {
    fn of(value: &str) -> Want {
        if value == "*" {
            Want::Present
        } else {
            Want::Exact(value.to_string())
        }
    }

    fn accepts(&self, have: Option<&str>) -> bool {
        match (self, have) {
            (_, None) => false,
            (Want::Present, Some(_)) => true,
            (Want::Exact(want), Some(have)) => want == have,
        }
    }
}

/// The path condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This segment-aware prefix.
    Prefix(String),
}

/// One routing rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Its name (metrics label `rule`); `rules[i]` when not given.
    pub(crate) name: String,
    pub(crate) path: PathMatch,
    /// Upper-case methods; empty: any.
    pub(crate) methods: Vec<String>,
    /// Lower-case header names.
    pub(crate) headers: Vec<(String, Want)>,
    pub(crate) cookies: Vec<(String, Want)>,
    pub(crate) query: Vec<(String, Want)>,
    /// The share of users sent to the new side, 0..=100.
    pub(crate) percent: f64,
    /// `threshold(percent)`.
    pub(crate) threshold: u32,
    /// Overrides `shadow.enabled` for this rule.
    pub(crate) shadow: Option<bool>,
}

impl Rule {
    /// Whether the request satisfies every condition of the rule.
    pub(crate) fn matches(&self, input: &dyn Inputs, path: &str, query: Option<&str>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
        };
        path_ok
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == input.method()))
            && self
                .headers
                .iter()
                .all(|(name, want)| want.accepts(input.header(name).as_deref()))
            && self
                .cookies
                .iter()
                .all(|(name, want)| want.accepts(input.cookie(name).as_deref()))
            && self
                .query
                .iter()
                .all(|(name, want)| want.accepts(query_value(query, name).as_deref()))
    }
}

/// Where a user key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `cookie:NAME`.
    Cookie(String),
    /// `header:NAME` (name in lower case).
    Header(String),
    /// `query:NAME`.
    Query(String),
    /// `client`: the client's IP address.
    Client,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cookie(n) => write!(f, "cookie:{n}"),
            Source::Header(n) => write!(f, "header:{n}"),
            Source::Query(n) => write!(f, "query:{n}"),
            Source::Client => f.write_str("client"),
        }
    }
}

/// What happens to a request without a user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anonymous {
    /// It goes to the legacy side (unless the percentage is 100).
    Legacy,
    /// It goes to the new side (unless the percentage is 0).
    New,
    /// It is split at random by the percentage, request by request.
    Split,
}

/// The cookie minted for users without a key.
#[derive(Debug, Clone)]
pub(crate) struct SetCookie {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) max_age_s: u64,
    pub(crate) http_only: bool,
    pub(crate) secure: bool,
    /// `Strict`, `Lax` or `None`.
    pub(crate) same_site: String,
}

impl SetCookie {
    /// The `set-cookie` header value for a minted id.
    pub(crate) fn header_value(&self, id: &str) -> String {
        let mut v = format!(
            "{}={id}; Path={}; Max-Age={}",
            self.name, self.path, self.max_age_s
        );
        if let Some(domain) = &self.domain {
            v.push_str("; Domain=");
            v.push_str(domain);
        }
        if self.http_only {
            v.push_str("; HttpOnly");
        }
        if self.secure {
            v.push_str("; Secure");
        }
        v.push_str("; SameSite=");
        v.push_str(&self.same_site);
        v
    }
}

/// Sticky assignment.
#[derive(Debug, Clone)]
pub(crate) struct Sticky {
    /// Sources tried in order; the first present one is the user key.
    pub(crate) by: Vec<Source>,
    pub(crate) salt: String,
    pub(crate) set_cookie: Option<SetCookie>,
    pub(crate) anonymous: Anonymous,
    /// Also pin the endpoint within the side's cluster by the user key.
    pub(crate) endpoint_affinity: bool,
}

/// Force overrides for testers.
#[derive(Debug, Clone)]
pub(crate) struct Force {
    /// Lower-case header name.
    pub(crate) header: Option<String>,
    pub(crate) cookie: Option<String>,
}

/// Shadow traffic.
#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    pub(crate) enabled: bool,
    pub(crate) label: String,
    /// `threshold(shadow.percent)`: the sampled share of eligible requests.
    pub(crate) threshold: u32,
    /// Upper-case methods that are copied.
    pub(crate) methods: Vec<String>,
    /// Primary sides whose requests are copied (to the other side).
    pub(crate) sides: Vec<Side>,
    pub(crate) status: bool,
    /// Lower-case header names compared.
    pub(crate) headers: Vec<String>,
    pub(crate) body: bool,
    pub(crate) ignore_fields: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Cluster of the legacy side.
    pub(crate) legacy: String,
    /// Cluster of the new side.
    pub(crate) new: String,
    pub(crate) rules: Vec<Rule>,
    /// Side of requests no rule matches.
    pub(crate) default: Side,
    pub(crate) sticky: Sticky,
    pub(crate) force: Force,
    pub(crate) shadow: Shadow,
    /// Lower-case response header naming the side; `None`: not set.
    pub(crate) response_header: Option<String>,
}

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether `value` is a valid header value (no control characters).
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether `value` may be a cookie attribute value or a query name (no
/// separators, blanks or control characters).
fn is_cookie_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b > 0x20 && b != 0x7f && !matches!(b, b';' | b',' | b'"' | b'\\'))
}

fn err(key: &str, message: impl fmt::Display) -> String {
    format!("config.{key}: {message}")
}

fn header_name(key: &str, name: &str) -> Result<String, String> {
    if !is_token(name) {
        return Err(err(key, format!("{name:?} is not a valid header name")));
    }
    Ok(name.to_ascii_lowercase())
}

fn settable_header(key: &str, name: &str) -> Result<String, String> {
    let name = header_name(key, name)?;
    if HOST_MANAGED.contains(&name.as_str()) {
        return Err(err(key, format!("{name:?} is managed by the gateway")));
    }
    Ok(name)
}

fn cookie_name(key: &str, name: &str) -> Result<String, String> {
    if !is_token(name) {
        return Err(err(key, format!("{name:?} is not a valid cookie name")));
    }
    Ok(name.to_string())
}

fn methods(key: &str, list: Vec<String>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        if !is_token(&m) {
            return Err(err(
                &format!("{key}[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        }
        out.push(m.to_ascii_uppercase());
    }
    Ok(out)
}

fn side(key: &str, text: &str) -> Result<Side, String> {
    Side::parse(text).ok_or_else(|| {
        err(
            key,
            format!("unknown side {text:?}: expected \"legacy\" or \"new\""),
        )
    })
}

fn percent(key: &str, value: f64) -> Result<f64, String> {
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(err(
            key,
            format!("{value} is out of range: a percentage is 0..=100"),
        ));
    }
    Ok(value)
}

fn cluster(key: &str, value: Option<String>, default: &str) -> Result<String, String> {
    let value = value.unwrap_or_else(|| default.to_string());
    if value.trim().is_empty() {
        return Err(err(key, "the cluster name must not be empty"));
    }
    Ok(value)
}

fn conditions(
    key: &str,
    map: Option<BTreeMap<String, String>>,
    check_name: impl Fn(&str, &str) -> Result<String, String>,
) -> Result<Vec<(String, Want)>, String> {
    let mut out = Vec::new();
    for (name, value) in map.unwrap_or_default() {
        let path = format!("{key}.{name}");
        let name = check_name(&path, &name)?;
        if !is_header_value(&value) {
            return Err(err(&path, format!("{value:?} contains control characters")));
        }
        out.push((name, Want::of(&value)));
    }
    Ok(out)
}

impl Config {
    /// Validate a raw config. Every error names the offending key.
    pub(crate) fn from_raw(raw: RawConfig) -> Result<Config, String> {
        let legacy = cluster("legacy", raw.legacy, defaults::LEGACY_CLUSTER)?;
        let new = cluster("new", raw.new, defaults::NEW_CLUSTER)?;
        if legacy == new {
            return Err(err(
                "new",
                format!("the new side's cluster must differ from the legacy side's ({legacy:?})"),
            ));
        }
        let default = match raw.default {
            Some(text) => side("default", &text)?,
            None => Side::Legacy,
        };

        let raw_rules = raw
            .rules
            .ok_or_else(|| err("rules", "missing: at least one rule is required"))?;
        if raw_rules.is_empty() {
            return Err(err("rules", "empty: at least one rule is required"));
        }
        let mut rules = Vec::with_capacity(raw_rules.len());
        let mut names = BTreeSet::new();
        for (i, r) in raw_rules.into_iter().enumerate() {
            let key = format!("rules[{i}]");
            rules.push(rule(&key, r)?);
            let name = &rules[i].name;
            if !names.insert(name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("duplicate rule name {name:?}"),
                ));
            }
        }

        let sticky = sticky(raw.sticky)?;

        let force = if raw.force.enabled == Some(false) {
            Force {
                header: None,
                cookie: None,
            }
        } else {
            Force {
                header: Some(header_name(
                    "override.header",
                    raw.force
                        .header
                        .as_deref()
                        .unwrap_or(defaults::OVERRIDE_HEADER),
                )?),
                cookie: match raw.force.cookie {
                    Some(c) => Some(cookie_name("override.cookie", &c)?),
                    None => None,
                },
            }
        };

        let shadow = shadow(raw.shadow)?;

        let response_header = match raw.response_header.as_deref() {
            Some("") => None,
            Some(name) => Some(settable_header("response_header", name)?),
            None => Some(defaults::RESPONSE_HEADER.to_string()),
        };

        Ok(Config {
            legacy,
            new,
            rules,
            default,
            sticky,
            force,
            shadow,
            response_header,
        })
    }

    /// The cluster of a side.
    pub(crate) fn cluster(&self, side: Side) -> &str {
        match side {
            Side::Legacy => &self.legacy,
            Side::New => &self.new,
        }
    }

    /// The `rule` metrics label of a decision.
    pub(crate) fn rule_name(&self, decision: &Decision) -> &str {
        match decision.rule {
            Some(i) => &self.rules[i].name,
            None => "default",
        }
    }

    /// Decide where a request goes. `rng` supplies randomness for minted
    /// cookie ids and the `split` policy of anonymous requests.
    pub(crate) fn decide(&self, input: &dyn Inputs, rng: &mut dyn FnMut() -> u64) -> Decision {
        let (path, query) = split_path_query(input.path_with_query());
        let rule = self
            .rules
            .iter()
            .position(|r| r.matches(input, path, query));
        let mut decision = Decision {
            side: self.default,
            rule,
            forced: false,
            key: None,
            bucket: None,
            minted: None,
        };
        if let Some(side) = self.forced(input) {
            decision.side = side;
            decision.forced = true;
            return decision;
        }
        let Some(i) = rule else {
            return decision;
        };
        let threshold = self.rules[i].threshold;
        if threshold == 0 {
            decision.side = Side::Legacy;
            return decision;
        }
        if threshold >= BUCKETS {
            decision.side = Side::New;
            return decision;
        }
        match self.user_key(input, query, rng) {
            Some((key, minted)) => {
                let b = bucket(&self.sticky.salt, &key);
                decision.side = side_for(b, threshold);
                decision.bucket = Some(b);
                decision.key = Some(key);
                decision.minted = minted;
            }
            None => {
                decision.side = match self.sticky.anonymous {
                    Anonymous::Legacy => Side::Legacy,
                    Anonymous::New => Side::New,
                    Anonymous::Split => side_for((rng() % u64::from(BUCKETS)) as u32, threshold),
                };
            }
        }
        decision
    }

    /// The side a force override asks for, if any (header first, then
    /// cookie; unknown values are ignored).
    pub(crate) fn forced(&self, input: &dyn Inputs) -> Option<Side> {
        if let Some(name) = &self.force.header {
            if let Some(side) = input.header(name).as_deref().and_then(Side::parse) {
                return Some(side);
            }
        }
        if let Some(name) = &self.force.cookie {
            if let Some(side) = input.cookie(name).as_deref().and_then(Side::parse) {
                return Some(side);
            }
        }
        None
    }

    /// The user key and, when it was minted for the `set_cookie` cookie, the
    /// value to send back in `set-cookie`.
    pub(crate) fn user_key(
        &self,
        input: &dyn Inputs,
        query: Option<&str>,
        rng: &mut dyn FnMut() -> u64,
    ) -> Option<(String, Option<String>)> {
        for source in &self.sticky.by {
            let found = match source {
                Source::Cookie(name) => {
                    let value = input.cookie(name).filter(|v| !v.is_empty());
                    if value.is_none()
                        && self
                            .sticky
                            .set_cookie
                            .as_ref()
                            .is_some_and(|c| &c.name == name)
                    {
                        let id = mint(rng);
                        return Some((id.clone(), Some(id)));
                    }
                    value
                }
                Source::Header(name) => input
                    .header(name)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty()),
                Source::Query(name) => query_value(query, name).filter(|v| !v.is_empty()),
                Source::Client => {
                    let addr = input.client_addr();
                    let ip = client_ip(&addr);
                    (!ip.is_empty()).then(|| ip.to_string())
                }
            };
            if let Some(key) = found {
                return Some((key, None));
            }
        }
        None
    }

    /// Whether a request decided as `decision` should be copied to the
    /// other side (before sampling by `shadow.percent`).
    pub(crate) fn wants_shadow(&self, decision: &Decision, method: &str) -> bool {
        let enabled = decision
            .rule
            .and_then(|i| self.rules[i].shadow)
            .unwrap_or(self.shadow.enabled);
        enabled
            && self.shadow.sides.contains(&decision.side)
            && self.shadow.methods.iter().any(|m| m == method)
    }
}

/// A fresh cookie id: 128 random bits as 32 hex digits.
fn mint(rng: &mut dyn FnMut() -> u64) -> String {
    format!("{:016x}{:016x}", rng(), rng())
}

fn rule(key: &str, r: RawRule) -> Result<Rule, String> {
    let name = match r.name {
        Some(n) if n.trim().is_empty() => {
            return Err(err(&format!("{key}.name"), "must not be empty"));
        }
        Some(n) => n,
        None => key.to_string(),
    };
    let path = match (r.path, r.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(err(
                &format!("{key}.path_prefix"),
                "set `path` or `path_prefix`, not both",
            ));
        }
        (Some(p), None) => {
            if !p.starts_with('/') {
                return Err(err(
                    &format!("{key}.path"),
                    format!("{p:?} must start with `/`"),
                ));
            }
            PathMatch::Exact(p)
        }
        (None, Some(p)) => {
            if !p.starts_with('/') {
                return Err(err(
                    &format!("{key}.path_prefix"),
                    format!("{p:?} must start with `/`"),
                ));
            }
            PathMatch::Prefix(p)
        }
        (None, None) => PathMatch::Any,
    };
    let methods = methods(&format!("{key}.methods"), r.methods.unwrap_or_default())?;
    let headers = conditions(&format!("{key}.headers"), r.headers, header_name)?;
    let cookies = conditions(&format!("{key}.cookies"), r.cookies, cookie_name)?;
    let query = conditions(&format!("{key}.query"), r.query, |k, n| {
        if n.is_empty() {
            Err(err(k, "empty query parameter name"))
        } else {
            Ok(n.to_string())
        }
    })?;
    let pct = match (r.percent, r.side) {
        (Some(_), Some(_)) => {
            return Err(err(
                &format!("{key}.side"),
                "set `percent` or `side`, not both",
            ));
        }
        (Some(p), None) => percent(&format!("{key}.percent"), p)?,
        (None, Some(s)) => match side(&format!("{key}.side"), &s)? {
            Side::Legacy => 0.0,
            Side::New => 100.0,
        },
        (None, None) => {
            return Err(err(
                key,
                "set `percent` (0..=100, the share of users sent to the new side) or `side`",
            ));
        }
    };
    Ok(Rule {
        name,
        path,
        methods,
        headers,
        cookies,
        query,
        percent: pct,
        threshold: threshold(pct),
        shadow: r.shadow,
    })
}

fn source(key: &str, text: &str) -> Result<Source, String> {
    let bad = || {
        err(
            key,
            format!(
                "unknown key source {text:?}: expected \"cookie:NAME\", \"header:NAME\", \
                 \"query:NAME\" or \"client\""
            ),
        )
    };
    if text == "client" {
        return Ok(Source::Client);
    }
    let (kind, name) = text.split_once(':').ok_or_else(bad)?;
    match kind {
        "cookie" => Ok(Source::Cookie(cookie_name(key, name)?)),
        "header" => Ok(Source::Header(header_name(key, name)?)),
        "query" if !name.is_empty() => Ok(Source::Query(name.to_string())),
        "query" => Err(err(key, "empty query parameter name")),
        _ => Err(bad()),
    }
}

fn sticky(raw: RawSticky) -> Result<Sticky, String> {
    let set_cookie = match raw.set_cookie {
        None => None,
        Some(c) => {
            let name = cookie_name("sticky.set_cookie.name", &c.name)?;
            let path = c.path.unwrap_or_else(|| defaults::COOKIE_PATH.to_string());
            if !path.starts_with('/') || !is_cookie_safe(&path) {
                return Err(err(
                    "sticky.set_cookie.path",
                    format!("{path:?} must start with `/` and contain no `;`, `,` or blanks"),
                ));
            }
            if let Some(domain) = &c.domain {
                if !is_cookie_safe(domain) {
                    return Err(err(
                        "sticky.set_cookie.domain",
                        format!("{domain:?} is not a valid cookie domain"),
                    ));
                }
            }
            let max_age_s = match c.max_age_s {
                None => defaults::COOKIE_MAX_AGE_S,
                Some(s) if (1..=MAX_COOKIE_AGE_S as i64).contains(&s) => s as u64,
                Some(s) => {
                    return Err(err(
                        "sticky.set_cookie.max_age_s",
                        format!("{s} is out of range 1..={MAX_COOKIE_AGE_S} (400 days)"),
                    ));
                }
            };
            let same_site = c
                .same_site
                .unwrap_or_else(|| defaults::COOKIE_SAME_SITE.to_string());
            let same_site = match same_site.to_ascii_lowercase().as_str() {
                "strict" => "Strict",
                "lax" => "Lax",
                "none" => "None",
                _ => {
                    return Err(err(
                        "sticky.set_cookie.same_site",
                        format!("{same_site:?}: expected \"Strict\", \"Lax\" or \"None\""),
                    ));
                }
            }
            .to_string();
            let secure = c.secure.unwrap_or(false);
            if same_site == "None" && !secure {
                return Err(err(
                    "sticky.set_cookie.same_site",
                    "\"None\" requires `secure = true` (browsers drop it otherwise)",
                ));
            }
            Some(SetCookie {
                name,
                path,
                domain: c.domain,
                max_age_s,
                http_only: c.http_only.unwrap_or(true),
                secure,
                same_site,
            })
        }
    };
    let by = match raw.by {
        Some(list) => {
            if list.is_empty() {
                return Err(err("sticky.by", "at least one key source is required"));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                out.push(source(&format!("sticky.by[{i}]"), text)?);
            }
            out
        }
        None => match &set_cookie {
            Some(c) => vec![Source::Cookie(c.name.clone())],
            None => vec![source("sticky.by", defaults::STICKY_BY)?],
        },
    };
    if let Some(c) = &set_cookie {
        if !by.contains(&Source::Cookie(c.name.clone())) {
            return Err(err(
                "sticky.set_cookie.name",
                format!(
                    "the cookie {:?} is not a key source: add \"cookie:{}\" to `sticky.by`",
                    c.name, c.name
                ),
            ));
        }
    }
    let anonymous = match raw.anonymous.as_deref() {
        None | Some("legacy") => Anonymous::Legacy,
        Some("new") => Anonymous::New,
        Some("split") => Anonymous::Split,
        Some(other) => {
            return Err(err(
                "sticky.anonymous",
                format!("{other:?}: expected \"legacy\", \"new\" or \"split\""),
            ));
        }
    };
    Ok(Sticky {
        by,
        salt: raw.salt.unwrap_or_default(),
        set_cookie,
        anonymous,
        endpoint_affinity: raw.endpoint_affinity.unwrap_or(false),
    })
}

fn shadow(raw: Option<RawShadow>) -> Result<Shadow, String> {
    let present = raw.is_some();
    let raw = raw.unwrap_or_default();
    let label = raw
        .label
        .unwrap_or_else(|| defaults::SHADOW_LABEL.to_string());
    if label.trim().is_empty() {
        return Err(err("shadow.label", "must not be empty"));
    }
    let pct = percent("shadow.percent", raw.percent.unwrap_or(100.0))?;
    let methods = methods(
        "shadow.methods",
        raw.methods.unwrap_or_else(|| {
            defaults::SHADOW_METHODS
                .iter()
                .map(|m| m.to_string())
                .collect()
        }),
    )?;
    let sides = match raw.sides {
        None => vec![Side::Legacy, Side::New],
        Some(list) => {
            if list.is_empty() {
                return Err(err("shadow.sides", "at least one side is required"));
            }
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                out.push(side(&format!("shadow.sides[{i}]"), s)?);
            }
            out
        }
    };
    let mut headers = Vec::new();
    for (i, h) in raw.headers.unwrap_or_default().iter().enumerate() {
        headers.push(header_name(&format!("shadow.headers[{i}]"), h)?);
    }
    let ignore_fields = raw.ignore_fields.unwrap_or_default();
    if let Some(i) = ignore_fields.iter().position(|f| f.is_empty()) {
        return Err(err(
            &format!("shadow.ignore_fields[{i}]"),
            "must not be empty",
        ));
    }
    Ok(Shadow {
        enabled: raw.enabled.unwrap_or(present),
        label,
        threshold: threshold(pct),
        methods,
        sides,
        status: raw.status.unwrap_or(true),
        headers,
        body: raw.body.unwrap_or(true),
        ignore_fields,
    })
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

/// Where one request goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The primary side.
    pub(crate) side: Side,
    /// Index of the rule that matched; `None`: the `default` side.
    pub(crate) rule: Option<usize>,
    /// Chosen by a force override.
    pub(crate) forced: bool,
    /// The user key, when a split needed one and found (or minted) it.
    pub(crate) key: Option<String>,
    /// The user's bucket, with the key.
    pub(crate) bucket: Option<u32>,
    /// A cookie id minted for this request, to send in `set-cookie`.
    pub(crate) minted: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for the tests.
    #[derive(Default)]
    struct Fake {
        method: String,
        pwq: String,
        headers: Vec<(String, String)>,
        client: String,
    }

    impl Fake {
        fn get(pwq: &str) -> Fake {
            Fake {
                method: "GET".into(),
                pwq: pwq.into(),
                headers: Vec::new(),
                client: "10.1.2.3:5555".into(),
            }
        }
        fn method(mut self, m: &str) -> Fake {
            self.method = m.into();
            self
        }
        fn header(mut self, n: &str, v: &str) -> Fake {
            self.headers.push((n.into(), v.into()));
            self
        }
        fn client(mut self, c: &str) -> Fake {
            self.client = c.into();
            self
        }
    }

    impl Inputs for Fake {
        fn method(&self) -> &str {
            &self.method
        }
        fn path_with_query(&self) -> &str {
            &self.pwq
        }
        fn header(&self, name: &str) -> Option<String> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
        fn cookie(&self, name: &str) -> Option<String> {
            let all: Vec<String> = self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v.clone())
                .collect();
            cookie_value(&all, name)
        }
        fn client_addr(&self) -> String {
            self.client.clone()
        }
    }

    fn parse(json: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Config::from_raw(raw)
    }

    fn cfg(json: &str) -> Config {
        parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn no_rng() -> impl FnMut() -> u64 {
        || panic!("no randomness expected")
    }

    fn counter_rng() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            fmix64(n)
        }
    }

    fn split_cfg(pct: f64) -> Config {
        cfg(&format!(
            r#"{{"rules":[{{"percent":{pct}}}],"sticky":{{"by":["header:x-user"]}}}}"#
        ))
    }

    fn side_of(c: &Config, user: &str) -> Side {
        c.decide(&Fake::get("/").header("x-user", user), &mut no_rng())
            .side
    }

    #[test]
    fn bucket_is_pinned() {
        // Changing the hash would reshuffle every user of every migration.
        let got: Vec<u32> = ["", "alice", "bob", "user-1", "10.0.0.1"]
            .iter()
            .map(|k| bucket("", k))
            .collect();
        assert_eq!(got, PINNED, "the bucket hash changed");
        assert_ne!(bucket("salt-a", "alice"), bucket("salt-b", "alice"));
        assert_eq!(bucket("s", "alice"), bucket("s", "alice"));
        assert!((0..5000).all(|i| bucket("x", &format!("u{i}")) < BUCKETS));
    }

    const PINNED: [u32; 5] = [2295, 2984, 8974, 1151, 1493];

    #[test]
    fn thresholds_have_a_hundredth_of_a_percent_resolution() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.01), 1);
        assert_eq!(threshold(10.0), 1000);
        assert_eq!(threshold(12.345), 1235);
        assert_eq!(threshold(100.0), BUCKETS);
        assert_eq!(side_for(999, 1000), Side::New);
        assert_eq!(side_for(1000, 1000), Side::Legacy);
    }

    #[test]
    fn raising_the_percentage_from_10_to_50_moves_no_user_back_to_legacy() {
        let (at10, at50) = (split_cfg(10.0), split_cfg(50.0));
        let users = 100_000;
        let (mut new10, mut new50, mut moved, mut back) = (0, 0, 0, 0);
        for i in 0..users {
            let user = format!("user-{i}");
            let (a, b) = (side_of(&at10, &user), side_of(&at50, &user));
            new10 += usize::from(a == Side::New);
            new50 += usize::from(b == Side::New);
            moved += usize::from(a == Side::Legacy && b == Side::New);
            back += usize::from(a == Side::New && b == Side::Legacy);
        }
        println!(
            "ramp 10% -> 50% over {users} users: new {:.2}% -> {:.2}%, {moved} moved legacy->new, \
             {back} moved new->legacy",
            100.0 * new10 as f64 / users as f64,
            100.0 * new50 as f64 / users as f64,
        );
        assert_eq!(back, 0, "a ramp-up must never move a user back to legacy");
        assert_eq!(new50, new10 + moved);
        assert!(moved > users / 3, "about 40% of the users move: {moved}");
    }

    #[test]
    fn every_ramp_step_is_monotonic() {
        let steps = [0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 99.99, 100.0];
        let configs: Vec<Config> = steps.iter().map(|&p| split_cfg(p)).collect();
        for i in 0..5_000 {
            let user = format!("u{i}@example.com");
            let sides: Vec<Side> = configs.iter().map(|c| side_of(c, &user)).collect();
            // Once new, always new at every higher percentage.
            if let Some(first) = sides.iter().position(|s| *s == Side::New) {
                assert!(
                    sides[first..].iter().all(|s| *s == Side::New),
                    "{user}: {sides:?}"
                );
            }
            assert_eq!(sides[0], Side::Legacy);
            assert_eq!(sides[steps.len() - 1], Side::New);
        }
    }

    #[test]
    fn split_is_close_to_the_configured_percentage() {
        let users = 100_000;
        for pct in [1.0, 10.0, 25.0, 50.0, 90.0] {
            let c = split_cfg(pct);
            let new = (0..users)
                .filter(|i| side_of(&c, &format!("customer-{i}")) == Side::New)
                .count();
            let share = 100.0 * new as f64 / users as f64;
            println!("configured {pct:>5.1}% new: measured {share:.2}% over {users} users");
            assert!(
                (share - pct).abs() < 0.6,
                "configured {pct}%, measured {share:.2}%"
            );
        }
        // Client addresses (the default key) split as well.
        let c = cfg(r#"{"rules":[{"percent":30}]}"#);
        let new = (0..20_000)
            .filter(|i| {
                let addr = format!("10.{}.{}.{}:443", i / 65536, (i / 256) % 256, i % 256);
                c.decide(&Fake::get("/").client(&addr), &mut no_rng()).side == Side::New
            })
            .count();
        let share = 100.0 * new as f64 / 20_000.0;
        println!(
            "configured  30.0% new by client address: measured {share:.2}% over 20000 addresses"
        );
        assert!((share - 30.0).abs() < 1.5, "{share}");
    }

    #[test]
    fn the_same_user_always_gets_the_same_side() {
        let c = split_cfg(50.0);
        for i in 0..200 {
            let user = format!("sticky-{i}");
            let first = side_of(&c, &user);
            for _ in 0..5 {
                assert_eq!(side_of(&c, &user), first);
            }
        }
        // Only the user key matters, not the path or method.
        let d1 = c.decide(&Fake::get("/a").header("x-user", "u"), &mut no_rng());
        let d2 = c.decide(
            &Fake::get("/b?x=1").method("POST").header("x-user", "u"),
            &mut no_rng(),
        );
        assert_eq!(d1.bucket, d2.bucket);
        assert_eq!(d1.side, d2.side);
        assert_eq!(d1.key.as_deref(), Some("u"));
    }

    #[test]
    fn rules_match_by_path_method_header_cookie_and_query_in_order() {
        let c = cfg(r#"{
            "rules": [
                {"name": "exact", "path": "/exact", "side": "new"},
                {"name": "orders-write", "path_prefix": "/orders", "methods": ["post", "PUT"], "side": "new"},
                {"name": "beta", "headers": {"X-Beta": "1"}, "side": "new"},
                {"name": "any-tenant", "headers": {"x-tenant": "*"}, "percent": 100},
                {"name": "cookie", "cookies": {"beta": "yes"}, "side": "new"},
                {"name": "query", "query": {"v": "2 x"}, "side": "new"},
                {"name": "catalog", "path_prefix": "/catalog/", "percent": 100},
                {"name": "rest", "percent": 0}
            ]}"#);
        let name = |f: Fake| {
            let d = c.decide(&f, &mut no_rng());
            (c.rule_name(&d).to_string(), d.side)
        };
        let n = |s: &str, side| (s.to_string(), side);
        assert_eq!(name(Fake::get("/exact")), n("exact", Side::New));
        assert_eq!(name(Fake::get("/exact/x")), n("rest", Side::Legacy));
        assert_eq!(name(Fake::get("/orders/7")), n("rest", Side::Legacy));
        assert_eq!(
            name(Fake::get("/orders/7").method("POST")),
            n("orders-write", Side::New)
        );
        assert_eq!(
            name(Fake::get("/orders").method("PUT")),
            n("orders-write", Side::New)
        );
        assert_eq!(
            name(Fake::get("/ordersx").method("POST")),
            n("rest", Side::Legacy)
        );
        assert_eq!(
            name(Fake::get("/x").header("x-beta", "1")),
            n("beta", Side::New)
        );
        assert_eq!(
            name(Fake::get("/x").header("x-beta", "0")),
            n("rest", Side::Legacy)
        );
        assert_eq!(
            name(Fake::get("/x").header("x-tenant", "")),
            n("any-tenant", Side::New)
        );
        assert_eq!(
            name(Fake::get("/x").header("cookie", "a=1; beta=yes")),
            n("cookie", Side::New)
        );
        assert_eq!(
            name(Fake::get("/x").header("cookie", "beta=no")),
            n("rest", Side::Legacy)
        );
        assert_eq!(name(Fake::get("/x?a=&v=2+x")), n("query", Side::New));
        assert_eq!(name(Fake::get("/x?v=2%20x")), n("query", Side::New));
        assert_eq!(name(Fake::get("/x?v=2")), n("rest", Side::Legacy));
        assert_eq!(name(Fake::get("/catalog/1")), n("catalog", Side::New));
        assert_eq!(name(Fake::get("/catalog")), n("rest", Side::Legacy));
        // No rule matches: the default side.
        let c = cfg(r#"{"rules":[{"path_prefix":"/a","side":"legacy"}],"default":"new"}"#);
        let d = c.decide(&Fake::get("/b"), &mut no_rng());
        assert_eq!(
            (d.side, d.rule, c.rule_name(&d)),
            (Side::New, None, "default")
        );
    }

    #[test]
    fn overrides_pin_a_side() {
        let c = cfg(r#"{"rules":[{"percent":0}],"override":{"cookie":"strangler"}}"#);
        let d = c.decide(&Fake::get("/").header("x-strangler", "new"), &mut no_rng());
        assert_eq!((d.side, d.forced, d.rule), (Side::New, true, Some(0)));
        let d = c.decide(
            &Fake::get("/").header("cookie", "strangler=NEW"),
            &mut no_rng(),
        );
        assert_eq!((d.side, d.forced), (Side::New, true));
        let d = c.decide(
            &Fake::get("/").header("x-strangler", "bogus"),
            &mut no_rng(),
        );
        assert_eq!((d.side, d.forced), (Side::Legacy, false));
        // The header wins over the cookie.
        let d = c.decide(
            &Fake::get("/")
                .header("x-strangler", " legacy ")
                .header("cookie", "strangler=new"),
            &mut no_rng(),
        );
        assert_eq!((d.side, d.forced), (Side::Legacy, true));
        let c = cfg(r#"{"rules":[{"percent":100}],"override":{"header":"X-Pin"}}"#);
        let d = c.decide(&Fake::get("/").header("x-pin", "legacy"), &mut no_rng());
        assert_eq!(d.side, Side::Legacy);
        let d = c.decide(
            &Fake::get("/").header("x-strangler", "legacy"),
            &mut no_rng(),
        );
        assert_eq!(d.side, Side::New, "only the configured header counts");
        let c = cfg(r#"{"rules":[{"percent":100}],"override":{"enabled":false}}"#);
        let d = c.decide(
            &Fake::get("/").header("x-strangler", "legacy"),
            &mut no_rng(),
        );
        assert_eq!((d.side, d.forced), (Side::New, false));
    }

    #[test]
    fn key_sources_are_tried_in_order() {
        let c = cfg(
            r#"{"rules":[{"percent":50}],"sticky":{"by":["header:x-user","cookie:uid","query:u","client"],"salt":"s"}}"#,
        );
        let key = |f: Fake| c.decide(&f, &mut no_rng()).key;
        assert_eq!(
            key(Fake::get("/?u=q")
                .header("x-user", "h")
                .header("cookie", "uid=c")),
            Some("h".into())
        );
        assert_eq!(
            key(Fake::get("/?u=q").header("cookie", "uid=c")),
            Some("c".into())
        );
        assert_eq!(key(Fake::get("/?u=q")), Some("q".into()));
        assert_eq!(key(Fake::get("/").client("[::1]:80")), Some("::1".into()));
        assert_eq!(
            key(Fake::get("/").client("1.2.3.4:80")),
            Some("1.2.3.4".into())
        );
        // Empty values are skipped.
        assert_eq!(
            key(Fake::get("/?u=").header("x-user", " ")),
            Some("10.1.2.3".into())
        );
        // The bucket uses the salt.
        let d = c.decide(&Fake::get("/").header("x-user", "h"), &mut no_rng());
        assert_eq!(d.bucket, Some(bucket("s", "h")));
        assert_eq!(d.side, side_for(bucket("s", "h"), 5000));
    }

    #[test]
    fn anonymous_requests_follow_the_policy() {
        let base = r#"{"rules":[{"percent":50}],"sticky":{"by":["header:x-user"],"anonymous":"#;
        let c = cfg(&format!("{base}\"new\"}}}}"));
        let d = c.decide(&Fake::get("/"), &mut no_rng());
        assert_eq!((d.side, d.key), (Side::New, None));
        let c = cfg(&format!("{base}\"legacy\"}}}}"));
        assert_eq!(c.decide(&Fake::get("/"), &mut no_rng()).side, Side::Legacy);
        let c = cfg(&format!("{base}\"split\"}}}}"));
        let mut rng = counter_rng();
        let new = (0..10_000)
            .filter(|_| c.decide(&Fake::get("/"), &mut rng).side == Side::New)
            .count();
        assert!((4_500..5_500).contains(&new), "{new}");
        // Percentages 0 and 100 need no key at all.
        let c = cfg(r#"{"rules":[{"percent":100}],"sticky":{"by":["header:x-user"]}}"#);
        assert_eq!(c.decide(&Fake::get("/"), &mut no_rng()).side, Side::New);
    }

    #[test]
    fn a_cookie_is_minted_for_users_without_one() {
        let c = cfg(
            r#"{"rules":[{"percent":50}],"sticky":{"set_cookie":{"name":"sid","max_age_s":60}}}"#,
        );
        assert_eq!(c.sticky.by, vec![Source::Cookie("sid".into())]);
        let mut rng = counter_rng();
        let d = c.decide(&Fake::get("/"), &mut rng);
        let id = d.minted.clone().expect("a minted id");
        assert_eq!(id.len(), 32);
        assert_eq!(d.key.as_deref(), Some(id.as_str()));
        assert_eq!(d.bucket, Some(bucket("", &id)));
        // The next request carries the cookie: same key, same side, nothing minted.
        let again = c.decide(
            &Fake::get("/").header("cookie", &format!("sid={id}")),
            &mut no_rng(),
        );
        assert_eq!((again.side, again.minted), (d.side, None));
        assert_eq!(
            c.sticky.set_cookie.as_ref().map(|s| s.header_value("abc")),
            Some("sid=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax".into())
        );
        // A header before the cookie is used first; the cookie is minted only
        // when the search reaches it.
        let c = cfg(
            r#"{"rules":[{"percent":50}],"sticky":{"by":["header:x-user","cookie:sid","client"],"set_cookie":{"name":"sid","secure":true,"same_site":"none","domain":"example.com","http_only":false}}}"#,
        );
        let d = c.decide(&Fake::get("/").header("x-user", "u"), &mut no_rng());
        assert_eq!((d.key.as_deref(), d.minted), (Some("u"), None));
        let d = c.decide(&Fake::get("/"), &mut counter_rng());
        assert!(d.minted.is_some());
        assert_eq!(
            c.sticky.set_cookie.as_ref().map(|s| s.header_value("i")),
            Some(
                "sid=i; Path=/; Max-Age=31536000; Domain=example.com; Secure; SameSite=None".into()
            )
        );
    }

    #[test]
    fn shadow_policy() {
        let c = cfg(r#"{"rules":[
                {"path_prefix":"/on","percent":0},
                {"path_prefix":"/off","percent":0,"shadow":false},
                {"percent":100}
            ],
            "shadow":{"sides":["legacy"],"headers":["Content-Type"],"ignore_fields":["date"]}}"#);
        assert!(c.shadow.enabled);
        assert_eq!(c.shadow.headers, ["content-type"]);
        let wants = |pwq: &str, method: &str| {
            let d = c.decide(&Fake::get(pwq).method(method), &mut no_rng());
            c.wants_shadow(&d, method)
        };
        assert!(wants("/on", "GET"));
        assert!(wants("/on", "HEAD"));
        assert!(!wants("/on", "POST"), "writes are not copied by default");
        assert!(!wants("/off", "GET"), "the rule turns it off");
        assert!(
            !wants("/other", "GET"),
            "new is not a shadowed primary side"
        );
        // Without a shadow table, only rules that ask for it are copied.
        let c = cfg(r#"{"rules":[{"path_prefix":"/on","percent":0,"shadow":true},{"percent":0}]}"#);
        assert!(!c.shadow.enabled);
        let d = c.decide(&Fake::get("/on"), &mut no_rng());
        assert!(c.wants_shadow(&d, "GET"));
        let d = c.decide(&Fake::get("/x"), &mut no_rng());
        assert!(!c.wants_shadow(&d, "GET"));
    }

    #[test]
    fn the_sampler_copies_the_configured_share() {
        for (pct, expect) in [(0.0, 0), (25.0, 250), (33.33, 333), (100.0, 1000)] {
            let mut s = Sampler::default();
            let n = (0..1000).filter(|_| s.take(threshold(pct))).count();
            assert_eq!(n, expect, "{pct}%");
        }
    }

    #[test]
    fn defaults() {
        let c = cfg(r#"{"rules":[{"percent":5}]}"#);
        assert_eq!((c.legacy.as_str(), c.new.as_str()), ("legacy", "new"));
        assert_eq!(c.cluster(Side::New), "new");
        assert_eq!(c.default, Side::Legacy);
        assert_eq!(c.rules[0].name, "rules[0]");
        assert_eq!(c.sticky.by, vec![Source::Client]);
        assert_eq!(c.sticky.anonymous, Anonymous::Legacy);
        assert_eq!(c.force.header.as_deref(), Some("x-strangler"));
        assert_eq!(c.force.cookie, None);
        assert!(!c.shadow.enabled);
        assert_eq!(c.shadow.methods, ["GET", "HEAD", "OPTIONS"]);
        assert_eq!(c.shadow.sides, [Side::Legacy, Side::New]);
        assert!(c.shadow.status && c.shadow.body);
        assert_eq!(c.response_header.as_deref(), Some("x-strangler-side"));
        let c = cfg(
            r#"{"legacy":"monolith","new":"orders-v2","rules":[{"side":"NEW"}],"response_header":""}"#,
        );
        assert_eq!(c.cluster(Side::Legacy), "monolith");
        assert_eq!(c.cluster(Side::New), "orders-v2");
        assert_eq!(c.rules[0].threshold, BUCKETS);
        assert_eq!(c.response_header, None);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (r#"{}"#, "config.rules: missing"),
            (r#"{"rules":[]}"#, "config.rules: empty"),
            (
                r#"{"rules":[{"percent":150}]}"#,
                "config.rules[0].percent: 150 is out of range",
            ),
            (
                r#"{"rules":[{"percent":5},{"percent":-1}]}"#,
                "config.rules[1].percent: -1 is out of range",
            ),
            (
                r#"{"rules":[{"side":"neww"}]}"#,
                "config.rules[0].side: unknown side \"neww\"",
            ),
            (
                r#"{"rules":[{"percent":1,"side":"new"}]}"#,
                "config.rules[0].side: set `percent` or `side`",
            ),
            (
                r#"{"rules":[{"path_prefix":"/a"}]}"#,
                "config.rules[0]: set `percent`",
            ),
            (
                r#"{"rules":[{"percent":1}],"default":"old"}"#,
                "config.default: unknown side \"old\"",
            ),
            (
                r#"{"legacy":"x","new":"x","rules":[{"percent":1}]}"#,
                "config.new: the new side's cluster must differ",
            ),
            (
                r#"{"new":" ","rules":[{"percent":1}]}"#,
                "config.new: the cluster name must not be empty",
            ),
            (
                r#"{"rules":[{"name":"a","percent":1},{"name":"a","percent":2}]}"#,
                "config.rules[1].name: duplicate rule name \"a\"",
            ),
            (
                r#"{"rules":[{"path_prefix":"a","percent":1}]}"#,
                "config.rules[0].path_prefix: \"a\" must start with `/`",
            ),
            (
                r#"{"rules":[{"path":"/a","path_prefix":"/a","percent":1}]}"#,
                "config.rules[0].path_prefix: set `path` or `path_prefix`",
            ),
            (
                r#"{"rules":[{"methods":["GET","BAD METHOD"],"percent":1}]}"#,
                "config.rules[0].methods[1]:",
            ),
            (
                r#"{"rules":[{"headers":{"bad name":"1"},"percent":1}]}"#,
                "config.rules[0].headers.bad name:",
            ),
            (
                r#"{"rules":[{"cookies":{"a;b":"1"},"percent":1}]}"#,
                "config.rules[0].cookies.a;b:",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"by":["ip"]}}"#,
                "config.sticky.by[0]: unknown key source \"ip\"",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"by":[]}}"#,
                "config.sticky.by: at least one",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"by":["header:"]}}"#,
                "config.sticky.by[0]:",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"anonymous":"random"}}"#,
                "config.sticky.anonymous:",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"by":["client"],"set_cookie":{"name":"sid"}}}"#,
                "config.sticky.set_cookie.name: the cookie \"sid\" is not a key source",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"set_cookie":{"name":"sid","same_site":"None"}}}"#,
                "config.sticky.set_cookie.same_site: \"None\" requires",
            ),
            (
                r#"{"rules":[{"percent":1}],"sticky":{"set_cookie":{"name":"sid","max_age_s":0}}}"#,
                "config.sticky.set_cookie.max_age_s: 0 is out of range",
            ),
            (
                r#"{"rules":[{"percent":1}],"override":{"header":"x y"}}"#,
                "config.override.header:",
            ),
            (
                r#"{"rules":[{"percent":1}],"shadow":{"percent":101}}"#,
                "config.shadow.percent: 101 is out of range",
            ),
            (
                r#"{"rules":[{"percent":1}],"shadow":{"sides":["old"]}}"#,
                "config.shadow.sides[0]: unknown side \"old\"",
            ),
            (
                r#"{"rules":[{"percent":1}],"shadow":{"headers":["ok","no good"]}}"#,
                "config.shadow.headers[1]:",
            ),
            (
                r#"{"rules":[{"percent":1}],"shadow":{"label":""}}"#,
                "config.shadow.label:",
            ),
            (
                r#"{"rules":[{"percent":1}],"response_header":"content-length"}"#,
                "config.response_header: \"content-length\" is managed",
            ),
        ];
        for (json, want) in cases {
            let got = parse(json)
                .err()
                .unwrap_or_else(|| panic!("{json} was accepted"));
            assert!(
                got.starts_with(want),
                "{json}\n  got:  {got}\n  want: {want}…"
            );
        }
        // Unknown keys are refused by the deserializer (the plugin's SDK adds the key path).
        assert!(parse(r#"{"rules":[{"percent":1,"weight":3}]}"#)
            .unwrap_err()
            .contains("unknown field `weight`"));
    }

    #[test]
    fn request_helpers() {
        assert_eq!(split_path_query("/a?b=1"), ("/a", Some("b=1")));
        assert!(prefix_matches("/", "/x"));
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/b"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(prefix_matches("/a/", "/a/b"));
        let cookies = vec!["a=1; b=\"two\"".to_string(), "c=3".to_string()];
        assert_eq!(cookie_value(&cookies, "b").as_deref(), Some("two"));
        assert_eq!(cookie_value(&cookies, "c").as_deref(), Some("3"));
        assert_eq!(cookie_value(&cookies, "d"), None);
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(query_value(Some("a&b=2&a=3"), "a").as_deref(), Some(""));
        assert_eq!(query_value(Some("x%5B%5D=1"), "x[]").as_deref(), Some("1"));
        assert_eq!(query_value(None, "a"), None);
        assert_eq!(client_ip("1.2.3.4:5"), "1.2.3.4");
        assert_eq!(client_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
        assert_eq!(client_ip("host"), "host");
        assert_eq!(Side::parse(" New "), Some(Side::New));
        assert_eq!(Side::New.other(), Side::Legacy);
    }
}
