//! The `shard-router` plugin (`plugins/shard-router`): keys from headers, cookies, path
//! segments, query parameters and the client address; Maglev, weighted rendezvous and range
//! placement; default shard or 400 for requests without a key; the `x-shard` response header;
//! unhealthy shards from the config (changed by reload), from state (the control endpoint)
//! and from connection failures (ejection); bounded load; placement stable across restarts
//! and shard reordering; bad configs rejected by `ficus check` with the key named.
//!
//! The plugin's pure placement code (`placement.rs`, `keys.rs`) is compiled here natively, so
//! its unit tests (`shard::placement::tests`, `shard::keys::tests`) and the statistical tests
//! below ([`stats`]) run in `cargo test --workspace`; the end-to-end tests also check that
//! the Wasm build places keys exactly as the native build does.

#[allow(dead_code)]
#[path = "../../plugins/shard-router/src/placement.rs"]
mod placement;

#[allow(dead_code)]
#[path = "../../plugins/shard-router/src/keys.rs"]
mod keys;

use crate::support::{dead_endpoint, Cfg, Gateway, Shared, Upstream};
use placement::{key_hash, Hashing, Maglev, Rendezvous};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Source of the plugin, built by `host/build.rs`.
fn plugin_path() -> String {
    let path = Path::new(ficus::WASM_DIR).join("shard-router.wasm");
    assert!(
        path.is_file(),
        "{} is missing (host/build.rs builds plugins/ into {})",
        path.display(),
        ficus::WASM_DIR
    );
    path.to_string_lossy().into_owned()
}

/// The plugin imports `ficus:gateway/state`. A generous call deadline: a gateway under a
/// loaded test machine builds a 65537-entry table per instance in `configure`.
const GRANTS: &str = "grants = [\"state\"]\ntimeout_ms = 2000";

/// The control endpoint's token on `/ops`.
const TOKEN: &str = "operator-secret";

/// Shards `s1..s4` on clusters `c1..c4` (one upstream each, named like the shard).
const FOUR: &str = r#"[{ id = "s1", cluster = "c1" }, { id = "s2", cluster = "c2" }, { id = "s3", cluster = "c3" }, { id = "s4", cluster = "c4" }]"#;

const IDS: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn routes() -> String {
    format!(
        r#"
[[routes]]
name = "hdr"
match = {{ path_prefix = "/hdr" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}, {{ cookie = "uid" }}], shards = {FOUR} }} }}]

[[routes]]
name = "sick"
match = {{ path_prefix = "/sick" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}], shards = {FOUR}, unhealthy = ["s1"] }} }}]

[[routes]]
name = "rdv"
match = {{ path_prefix = "/rdv" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ placement = "rendezvous", key = [{{ query = "user" }}, {{ path_segment = 1 }}], shards = {FOUR}, default_shard = "s2", upstream_header = "x-shard-id" }} }}]

[[routes]]
name = "range"
match = {{ path_prefix = "/range" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ placement = "range", key = [{{ header = "x-user" }}], shards = {FOUR}, ranges = [{{ from = "m", to = "t", shard = "s2" }}, {{ from = "a", to = "m", shard = "s1" }}, {{ from = "t", shard = "s3" }}], missing_status = 422, missing_body = "no shard for this key", shard_header = "x-range-shard" }} }}]

[[routes]]
name = "ep"
match = {{ path_prefix = "/ep" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}], shards = [{{ id = "ep-a", cluster = "pair", endpoint = "{{EP_A}}" }}, {{ id = "ep-b", cluster = "pair", endpoint = "{{EP_B}}" }}] }} }}]

[[routes]]
name = "sticky"
match = {{ path_prefix = "/sticky" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}], shards = [{{ id = "pair", cluster = "pair" }}], endpoint_by_key = true }} }}]

[[routes]]
name = "ip"
match = {{ path_prefix = "/ip" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}, {{ client_ip = true }}], shards = {FOUR} }} }}]

[[routes]]
name = "ops"
match = {{ path_prefix = "/ops" }}
upstream = "c1"
pipeline = [{{ plugin = "shard-ops", config = {{ placement = "rendezvous", key = [{{ header = "x-user" }}], shards = {FOUR}, health_from_state = true, control = {{ path_prefix = "/ops/_shards", token = "{TOKEN}" }} }} }}]

[[routes]]
name = "eject"
match = {{ path_prefix = "/eject" }}
upstream = "c1"
pipeline = [{{ plugin = "shard-eject", config = {{ key = [{{ header = "x-user" }}], shards = [{{ id = "dead", cluster = "dead" }}, {{ id = "e2", cluster = "c2" }}, {{ id = "e3", cluster = "c3" }}], health_from_state = true, eject_ms = 60000 }} }}]

[[routes]]
name = "hot"
match = {{ path_prefix = "/hot" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ key = [{{ header = "x-user" }}], shards = {FOUR}, bounded_load = {{ factor = 1.25, measure = "requests", window_ms = 600000 }} }} }}]

[[routes]]
name = "busy"
match = {{ path_prefix = "/busy" }}
upstream = "c1"
pipeline = [{{ plugin = "shard", config = {{ placement = "rendezvous", key = [{{ header = "x-user" }}], shards = {FOUR}, bounded_load = {{ factor = 1.25, measure = "in_flight", window_ms = 600000 }} }} }}]
"#
    )
}

struct Env {
    gw: Gateway,
    /// `s1..s4`, upstreams named like their shard (kept running).
    _ups: Vec<Upstream>,
}

fn four_upstreams() -> Vec<Upstream> {
    IDS.iter().map(|id| Upstream::start(id)).collect()
}

/// `[plugins.NAME]` for the plugin plus clusters `c1..c4` over `ups`.
fn base(ups: &[Upstream]) -> Cfg {
    let mut cfg = Cfg::new().plugin_source("shard", &plugin_path(), GRANTS);
    for (i, up) in ups.iter().enumerate() {
        cfg = cfg.upstream(&format!("c{}", i + 1), &[up.endpoint()], "");
    }
    cfg
}

static ENV: Shared<Env> = Shared::new(|| {
    let ups = four_upstreams();
    let routes = routes()
        .replace("{EP_A}", &ups[0].endpoint())
        .replace("{EP_B}", &ups[1].endpoint());
    let cfg = base(&ups)
        .plugin_source("shard-ops", &plugin_path(), GRANTS)
        .plugin_source("shard-eject", &plugin_path(), GRANTS)
        .upstream("pair", &[ups[0].endpoint(), ups[1].endpoint()], "")
        .upstream("dead", &[dead_endpoint()], "")
        .toml(&routes);
    Env {
        gw: Gateway::start(&cfg),
        _ups: ups,
    }
});

/// The native placement of the plugin's default config over `s1..s4`.
fn native_maglev() -> Hashing {
    let shards: Vec<(&str, u32)> = IDS.iter().map(|id| (*id, 1)).collect();
    Hashing::Maglev(Maglev::new(&shards, placement::DEFAULT_TABLE_SIZE).expect("a table"))
}

fn native_rendezvous() -> Hashing {
    let shards: Vec<(&str, u32)> = IDS.iter().map(|id| (*id, 1)).collect();
    Hashing::Rendezvous(Rendezvous::new(&shards).expect("shards"))
}

fn native(hashing: &Hashing, key: &str) -> &'static str {
    IDS[hashing.lookup(key_hash(key.as_bytes()))]
}

/// GET `path` with `x-user: key`; returns (status, x-shard, x-upstream).
async fn by_header(gw: &Gateway, path: &str, key: &str) -> (u16, Option<String>, Option<String>) {
    let resp = gw.get(path).header("x-user", key).send().await;
    (
        resp.status,
        resp.header("x-shard"),
        resp.header("x-upstream"),
    )
}

/// The shard of `key` on `path`, asserting a 200 from the upstream named like the shard.
async fn shard_of(gw: &Gateway, path: &str, key: &str) -> String {
    let (status, shard, upstream) = by_header(gw, path, key).await;
    assert_eq!(status, 200, "GET {path} with x-user {key}");
    let shard = shard.unwrap_or_else(|| panic!("no x-shard on GET {path} ({key})"));
    assert_eq!(
        upstream.as_deref(),
        Some(shard.as_str()),
        "x-shard must name the upstream that answered ({path}, {key})"
    );
    shard
}

fn user_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[tokio::test]
async fn header_keys_are_placed_as_the_native_maglev_says_and_stay_put() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let maglev = native_maglev();
    let mut seen = BTreeMap::new();
    for key in user_keys(40) {
        let shard = shard_of(gw, "/hdr/x", &key).await;
        assert_eq!(shard, native(&maglev, &key), "key {key}");
        *seen.entry(shard.clone()).or_insert(0) += 1;
        // The same key again: the same shard.
        assert_eq!(shard_of(gw, "/hdr/y", &key).await, shard, "key {key}");
    }
    assert_eq!(
        seen.len(),
        4,
        "40 keys over 4 shards use all of them: {seen:?}"
    );
}

#[tokio::test]
async fn cookie_is_the_fallback_key_and_missing_keys_get_400() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for key in ["alice", "bob", "carol", "dave"] {
        let by_cookie = gw
            .get("/hdr")
            .header("cookie", &format!("theme=dark; uid={key}"))
            .send()
            .await;
        assert_eq!(by_cookie.status, 200, "{by_cookie:?}");
        assert_eq!(
            by_cookie.header("x-shard").as_deref(),
            Some(native(&native_maglev(), key)),
            "cookie uid={key}"
        );
        // The header comes first in the fallback order.
        let both = gw
            .get("/hdr")
            .header("x-user", "zoe")
            .header("cookie", &format!("uid={key}"))
            .send()
            .await;
        assert_eq!(
            both.header("x-shard").as_deref(),
            Some(native(&native_maglev(), "zoe"))
        );
    }
    let missing = gw
        .get("/hdr")
        .header("cookie", "theme=dark")
        .header("x-user", "   ")
        .send()
        .await;
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(missing.text(), "missing shard key\n");
    assert_eq!(missing.header("x-upstream"), None, "{missing:?}");
}

#[tokio::test]
async fn rendezvous_with_query_and_path_keys_and_a_default_shard() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let rendezvous = native_rendezvous();
    for id in 0..12 {
        let key = format!("{id}");
        let want = native(&rendezvous, &key);
        let by_path = gw.get(&format!("/rdv/{key}/orders")).send().await;
        assert_eq!(by_path.status, 200, "{by_path:?}");
        assert_eq!(by_path.header("x-shard").as_deref(), Some(want));
        assert_eq!(by_path.echo().upstream, want);
        // `upstream_header`: the upstream is told its shard.
        assert_eq!(by_path.echo().header("x-shard-id"), Some(want));
        // The query parameter comes first.
        let by_query = gw.get(&format!("/rdv/other?user={key}")).send().await;
        assert_eq!(by_query.header("x-shard").as_deref(), Some(want));
    }
    // No key at all: the default shard.
    for path in ["/rdv", "/rdv?user=", "/rdv/"] {
        let resp = gw.get(path).send().await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.header("x-shard").as_deref(), Some("s2"), "{path}");
        assert_eq!(resp.echo().upstream, "s2");
    }
}

#[tokio::test]
async fn client_address_key() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let want = native(&native_maglev(), "127.0.0.1");
    for _ in 0..3 {
        let resp = gw.get("/ip").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-shard").as_deref(), Some(want));
    }
}

#[tokio::test]
async fn unhealthy_shards_are_skipped_and_only_their_keys_move() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let maglev = native_maglev();
    let mut moved = 0;
    for key in user_keys(40) {
        let healthy_route = shard_of(gw, "/hdr", &key).await;
        let sick_route = shard_of(gw, "/sick", &key).await;
        assert_ne!(sick_route, "s1", "s1 is unhealthy ({key})");
        if healthy_route == "s1" {
            moved += 1;
            // The next shard of the key's Maglev preference walk.
            let next = maglev
                .choose(key_hash(key.as_bytes()), |s| s != 0)
                .expect("healthy shards");
            assert_eq!(sick_route, IDS[next], "key {key}");
        } else {
            assert_eq!(
                sick_route, healthy_route,
                "key {key} of a healthy shard moved"
            );
        }
    }
    assert!(moved > 0, "some of 40 keys belong to s1");
}

#[tokio::test]
async fn range_sharding_by_key_order() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for (key, want) in [
        ("a", "s1"),
        ("alice", "s1"),
        ("lz", "s1"),
        ("m", "s2"),
        ("mallory", "s2"),
        ("sybil", "s2"),
        ("t", "s3"),
        ("trent", "s3"),
        ("zz", "s3"),
    ] {
        let resp = gw.get("/range").header("x-user", key).send().await;
        assert_eq!(resp.status, 200, "{key}: {resp:?}");
        assert_eq!(resp.header("x-range-shard").as_deref(), Some(want), "{key}");
        assert_eq!(
            resp.header("x-shard"),
            None,
            "the header name is configurable"
        );
        assert_eq!(resp.echo().upstream, want, "{key}");
    }
    // Outside every range (uppercase sorts before `a`), or no key: the configured answer.
    for req in [gw.get("/range").header("x-user", "Zed"), gw.get("/range")] {
        let resp = req.send().await;
        assert_eq!(resp.status, 422, "{resp:?}");
        assert_eq!(resp.text(), "no shard for this key");
    }
}

#[tokio::test]
async fn shards_can_be_endpoints_of_one_cluster() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let mut seen = BTreeMap::new();
    for key in user_keys(16) {
        let resp = gw.get("/ep").header("x-user", &key).send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let shard = resp.header("x-shard").expect("x-shard");
        let upstream = resp.echo().upstream;
        let want = if shard == "ep-a" { "s1" } else { "s2" };
        assert_eq!(
            upstream, want,
            "shard {shard} is the endpoint of upstream {want}"
        );
        seen.insert(shard, upstream);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // `endpoint_by_key`: a shard of several endpoints, the key pins one of them.
    let mut upstreams = BTreeMap::new();
    for key in user_keys(16) {
        let first = gw.get("/sticky").header("x-user", &key).send().await;
        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(first.header("x-shard").as_deref(), Some("pair"));
        for _ in 0..2 {
            let again = gw.get("/sticky").header("x-user", &key).send().await;
            assert_eq!(again.echo().upstream, first.echo().upstream, "key {key}");
        }
        upstreams.insert(first.echo().upstream, key);
    }
    assert_eq!(
        upstreams.len(),
        2,
        "16 keys use both endpoints: {upstreams:?}"
    );
}

#[tokio::test]
async fn operators_mark_shards_unhealthy_through_the_control_endpoint() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let auth = format!("Bearer {TOKEN}");
    let rendezvous = native_rendezvous();

    let denied = gw.get("/ops/_shards/shards").send().await;
    assert_eq!(denied.status, 401, "{denied:?}");
    let denied = gw
        .get("/ops/_shards/shards")
        .header("authorization", "Bearer wrong-token")
        .send()
        .await;
    assert_eq!(denied.status, 401, "{denied:?}");

    let key = "operator-key";
    let owner = native(&rendezvous, key);
    assert_eq!(shard_of(gw, "/ops/data", key).await, owner);
    let lookup = gw
        .get(&format!("/ops/_shards/lookup?key={key}"))
        .header("authorization", &auth)
        .send()
        .await;
    assert_eq!(lookup.status, 200, "{lookup:?}");
    let json = lookup.json();
    assert_eq!(json["shard"], owner, "{json}");
    assert_eq!(json["via"], "hash", "{json}");
    let ranking: Vec<String> = json["hash_preference"]
        .as_array()
        .expect("hash_preference")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    let native_ranking: Vec<&str> = native_rendezvous()
        .preference(key_hash(key.as_bytes()))
        .into_iter()
        .map(|s| IDS[s])
        .collect();
    assert_eq!(ranking, native_ranking);

    let marked = gw
        .request("PUT", &format!("/ops/_shards/unhealthy/{owner}"))
        .header("authorization", &auth)
        .send()
        .await;
    assert_eq!(marked.status, 204, "{marked:?}");
    // The next rank takes over; other keys do not move.
    assert_eq!(shard_of(gw, "/ops/data", key).await, native_ranking[1]);
    for other in user_keys(12) {
        let shard = shard_of(gw, "/ops/data", &other).await;
        let want = native(&rendezvous, &other);
        if want == owner {
            assert_ne!(shard, owner);
        } else {
            assert_eq!(shard, want, "{other}");
        }
    }
    let status = gw
        .get("/ops/_shards")
        .header("authorization", &auth)
        .send()
        .await
        .json();
    assert_eq!(status["placement"], "rendezvous", "{status}");
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4, "{status}");
    for shard in shards {
        let down = shard["id"] == owner;
        assert_eq!(shard["unhealthy_state"], down, "{status}");
        assert_eq!(shard["healthy"], !down, "{status}");
        assert_eq!(shard["hash_share"], 0.25, "{status}");
    }

    let cleared = gw
        .request("DELETE", &format!("/ops/_shards/unhealthy/{owner}"))
        .header("authorization", &auth)
        .send()
        .await;
    assert_eq!(cleared.status, 204, "{cleared:?}");
    assert_eq!(shard_of(gw, "/ops/data", key).await, owner);

    let unknown = gw
        .request("PUT", "/ops/_shards/unhealthy/nope")
        .header("authorization", &auth)
        .send()
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
}

#[tokio::test]
async fn a_shard_that_refuses_connections_is_ejected() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let ids = ["dead", "e2", "e3"];
    let shards: Vec<(&str, u32)> = ids.iter().map(|id| (*id, 1)).collect();
    let maglev = Maglev::new(&shards, placement::DEFAULT_TABLE_SIZE).expect("a table");
    let key = (0..)
        .map(|i| format!("eject-{i}"))
        .find(|k| maglev.lookup(key_hash(k.as_bytes())) == 0)
        .expect("some key belongs to the dead shard");
    let next = ids[Hashing::Maglev(maglev.clone())
        .choose(key_hash(key.as_bytes()), |s| s != 0)
        .expect("healthy shards")];

    let (status, shard, _) = by_header(gw, "/eject", &key).await;
    assert_eq!(status, 502, "nothing listens on the dead shard");
    assert_eq!(
        shard.as_deref(),
        Some("dead"),
        "x-shard is set on gateway errors too"
    );
    // Ejected for 60 s: the key's next shard serves it.
    let (status, shard, upstream) = by_header(gw, "/eject", &key).await;
    assert_eq!(status, 200);
    assert_eq!(shard.as_deref(), Some(next));
    assert_eq!(
        upstream.as_deref(),
        Some(if next == "e2" { "s2" } else { "s3" })
    );
}

#[tokio::test]
async fn bounded_load_spreads_a_hot_key() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let key = "hot-key";
    let owner = native(&native_maglev(), key);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let shard = shard_of(gw, "/hot", key).await;
        if i == 0 {
            assert_eq!(shard, owner, "an idle owner takes its key");
        }
        *counts.entry(shard).or_default() += 1;
    }
    // Nobody above ceil(1.25 × 40 / 4) = 13, so all four shards share the key.
    println!("[shard e2e] hot key over 40 requests (bounded load 1.25): {counts:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n <= 13), "{counts:?}");
    assert!(counts[owner] >= 10, "the owner keeps its share: {counts:?}");
}

#[tokio::test]
async fn in_flight_bound_spreads_concurrent_requests_and_releases_them() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let key = "busy-key";
    let owner = native(&native_rendezvous(), key);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            gw.get("/busy")
                .header("x-user", key)
                .header("x-delay-ms", "1500")
                .timeout(Duration::from_secs(30))
                .send()
        })
        .collect();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for resp in futures_join(requests).await {
        assert_eq!(resp.status, 200, "{resp:?}");
        *counts
            .entry(resp.header("x-shard").expect("x-shard"))
            .or_default() += 1;
    }
    println!(
        "[shard e2e] 8 concurrent slow requests, one key owned by {owner} (in-flight bound \
         1.25): {counts:?}"
    );
    assert!(
        counts.len() >= 2,
        "concurrent requests were spread: {counts:?}"
    );
    // Every request finished: the owner is idle again and takes the key back.
    // (Other tests on this gateway share the shards' load counters, so allow
    // their requests and the counters' windows to drain first.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        last = shard_of(gw, "/busy", key).await;
        if last == owner {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, owner, "the idle owner takes its key back");
}

/// A gateway config over `ups` with one route `/k`: rendezvous placement over `s1..s4` with an
/// in-flight bound (window 10 min), `plugin_extra` added to `[plugins.shard]`.
fn in_flight_config(ups: &[Upstream], plugin_extra: &str) -> Cfg {
    let mut cfg =
        Cfg::new().plugin_source("shard", &plugin_path(), &format!("{GRANTS}{plugin_extra}"));
    for (i, up) in ups.iter().enumerate() {
        cfg = cfg.upstream(&format!("c{}", i + 1), &[up.endpoint()], "");
    }
    cfg.toml(&format!(
        "[[routes]]\nname = \"k\"\nmatch = {{ path_prefix = \"/k\" }}\nupstream = \"c1\"\n\
         pipeline = [{{ plugin = \"shard\", config = {{ placement = \"rendezvous\", key = \
         [{{ header = \"x-user\" }}], shards = {FOUR}, bounded_load = {{ factor = 1.25, \
         measure = \"in_flight\", window_ms = 600000 }} }} }}]\n"
    ))
}

/// A client that hangs up while its request waits for the upstream does not keep the shard's
/// in-flight slot for the window: the host still runs on-response (on a 499 that nobody
/// receives) as soon as it sees the client go.
#[tokio::test]
async fn a_client_that_hangs_up_releases_its_in_flight_slot() {
    use tokio::io::AsyncWriteExt;
    let ups = four_upstreams();
    let gw = Gateway::start(&in_flight_config(&ups, ""));
    let _watch = gw.watch();
    let key = "busy-key";
    let owner = native(&native_rendezvous(), key);
    assert_eq!(
        shard_of(&gw, "/k", key).await,
        owner,
        "an idle owner takes its key"
    );
    // Longer than both waits below and than the upstream timeout (15 s): only the hang-up can
    // end this request in time.
    let mut client = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    let slow = format!(
        "GET /k HTTP/1.1\r\nhost: gw\r\nx-user: {key}\r\nx-delay-ms: 60000\r\nx-test-id: hang-up\r\n\r\n"
    );
    client
        .write_all(slow.as_bytes())
        .await
        .expect("send the slow request");
    // Wait until it reaches an upstream before probing: a probe sent while the slow request's
    // on-request has not run yet would hold the owner's only slot and send it elsewhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reached = loop {
        if let Some(up) = ups.iter().find(|u| u.count("hang-up") > 0) {
            break up.name().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never reached an upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reached, owner, "the idle owner takes the slow request");
    // While it is in flight, the owner is full (load 1 of capacity 1): the key goes elsewhere.
    assert_ne!(
        shard_of(&gw, "/k", key).await,
        owner,
        "the slow request holds the owner's slot"
    );
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shard_of(&gw, "/k", key).await != owner {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot of the client that hung up is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression: a request's `on-response` may run on another warm instance than its
/// `on-request` (the pool hands out whichever instance is idle, and creates one when none is),
/// so the in-flight slot must be released from what the request carries, not from what the
/// instance remembers. With `pool_size = 1` every burst of concurrent responses needs
/// instances created after the requests were counted; a slot released into the wrong counter
/// kept the owner "busy" for the whole window.
#[tokio::test]
async fn in_flight_slots_are_released_whichever_instance_runs_on_response() {
    let ups = four_upstreams();
    let gw = Gateway::start(&in_flight_config(&ups, "\npool_size = 1"));
    let _watch = gw.watch();
    let key = "busy-key";
    let owner = native(&native_rendezvous(), key);
    assert_eq!(
        shard_of(&gw, "/k", key).await,
        owner,
        "an idle owner takes its key"
    );
    for round in 0..8 {
        let requests: Vec<_> = (0..48)
            .map(|_| {
                gw.get("/k")
                    .header("x-user", key)
                    .header("x-delay-ms", "300")
                    .timeout(Duration::from_secs(30))
                    .send()
            })
            .collect();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for resp in futures_join(requests).await {
            assert_eq!(resp.status, 200, "{resp:?}");
            *counts
                .entry(resp.header("x-shard").expect("x-shard"))
                .or_default() += 1;
        }
        assert!(counts.len() >= 2, "round {round}: not spread: {counts:?}");
        // Every response has been received, so every slot was released before it was sent
        // (on-response runs first): the owner is idle and takes its key at once.
        assert_eq!(
            shard_of(&gw, "/k", key).await,
            owner,
            "round {round}: the idle owner takes its key back (burst spread as {counts:?})"
        );
    }
}

/// Run futures concurrently on the test's runtime.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("a request task"));
    }
    out
}

/// A gateway of its own over `ups`, with one route `/k` using `shards` (TOML array text).
fn own_config(ups: &[Upstream], shards: &str, extra: &str) -> Cfg {
    base(ups).toml(&format!(
        "[[routes]]\nname = \"k\"\nmatch = {{ path_prefix = \"/k\" }}\nupstream = \"c1\"\n\
         pipeline = [{{ plugin = \"shard\", config = {{ key = [{{ header = \"x-user\" }}], \
         shards = {shards}{extra} }} }}]\n"
    ))
}

async fn placements(gw: &Gateway, keys: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        out.push(shard_of(gw, "/k", key).await);
    }
    out
}

#[tokio::test]
async fn placement_survives_a_restart_with_the_shards_reordered() {
    let ups = four_upstreams();
    let keys = user_keys(30);
    let before = {
        let gw = Gateway::start(&own_config(&ups, FOUR, ""));
        placements(&gw, &keys).await
    };
    let reordered = r#"[{ id = "s3", cluster = "c3" }, { id = "s1", cluster = "c1" }, { id = "s4", cluster = "c4" }, { id = "s2", cluster = "c2" }]"#;
    let gw = Gateway::start(&own_config(&ups, reordered, ""));
    let after = placements(&gw, &keys).await;
    assert_eq!(before, after, "a restart with reordered shards moved keys");
}

#[tokio::test]
async fn the_unhealthy_list_changes_by_reload() {
    let ups = four_upstreams();
    let keys = user_keys(30);
    let gw = Gateway::start(&own_config(&ups, FOUR, ""));
    let before = placements(&gw, &keys).await;

    let reload = |cfg: Cfg| {
        let gw = &gw;
        async move {
            // Atomically (the file watcher may read it too).
            let file = gw.config_file();
            let tmp = file.with_extension("tmp-write");
            std::fs::write(&tmp, cfg.render()).expect("write the config");
            std::fs::rename(&tmp, &file).expect("replace the config");
            let resp = gw.admin_request("POST", "/admin/reload").send().await;
            assert_eq!(resp.status, 200, "reload: {}", resp.text());
        }
    };
    reload(own_config(&ups, FOUR, ", unhealthy = [\"s2\"]")).await;
    let during = placements(&gw, &keys).await;
    let maglev = native_maglev();
    for ((key, b), d) in keys.iter().zip(&before).zip(&during) {
        if b == "s2" {
            let next = maglev
                .choose(key_hash(key.as_bytes()), |s| s != 1)
                .expect("healthy shards");
            assert_eq!(d, IDS[next], "key {key}");
        } else {
            assert_eq!(d, b, "key {key} of a healthy shard moved");
        }
    }
    assert!(
        before.iter().any(|s| s == "s2"),
        "some of 30 keys belong to s2"
    );

    reload(own_config(&ups, FOUR, "")).await;
    assert_eq!(placements(&gw, &keys).await, before);
}

#[test]
fn bad_configs_are_rejected_with_the_key_named() {
    let cases: [(&str, &str); 13] = [
        (
            "shards = []",
            "config.shards: at least one shard is required",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }, { id = "a", cluster = "c2" }]"#,
            "config.shards[1].id: duplicate shard id \"a\" (also shards[0].id)",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1", weight = 0 }, { id = "b", cluster = "c2", weight = 0 }]"#,
            "config.shards: the weights sum to zero",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], table_size = 65536"#,
            "config.table_size: 65536 is not prime",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], table_size = 1000003"#,
            "config.table_size: 1000003 is larger than the maximum 262147",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], placement = "rendezvous", table_size = 65537"#,
            "config.table_size: only applies to placement = \"maglev\"",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], default_shard = "b""#,
            "config.default_shard: unknown shard id \"b\"",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], unhealthy = ["a", "z"]"#,
            "config.unhealthy[1]: unknown shard id \"z\"",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], ranges = [{ from = "a", shard = "q" }]"#,
            "config.ranges[0].shard: unknown shard id \"q\"",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], ranges = [{ from = "a", to = "m", shard = "a" }, { from = "k", shard = "a" }]"#,
            "config.ranges[1]: overlaps ranges[0]",
        ),
        (
            r#"shards = [{ id = "a b", cluster = "c1" }]"#,
            "config.shards[0].id: shard id \"a b\" may only contain",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], bounded_load = { factor = 0.5 }"#,
            "config.bounded_load.factor: 0.5 is not in 1.0..=100.0",
        ),
        (
            r#"shards = [{ id = "a", cluster = "c1" }], eject_ms = 1000"#,
            "config.eject_ms: ejected shards are recorded in state",
        ),
    ];
    let mut cfg = Cfg::new()
        .plugin_source("shard", &plugin_path(), GRANTS)
        .upstream("c1", &["127.0.0.1:9".to_owned()], "");
    for (i, (config, _)) in cases.iter().enumerate() {
        cfg = cfg.toml(&format!(
            "[[routes]]\nname = \"bad{i}\"\nmatch = {{ path_prefix = \"/bad{i}\" }}\n\
             upstream = \"c1\"\npipeline = [{{ plugin = \"shard\", config = {{ key = \
             [{{ header = \"x-user\" }}], {config} }} }}]\n"
        ));
    }
    let checked = cfg.check();
    assert_eq!(checked.code, Some(2), "{checked}");
    for (i, (_, message)) in cases.iter().enumerate() {
        let route = format!("routes[{i}].pipeline[0].config: plugin \"shard\" in route \"bad{i}\"");
        assert!(
            checked
                .stderr
                .lines()
                .any(|l| l.contains(&route) && l.contains(message)),
            "expected an error for route bad{i} containing {message:?}\n{checked}"
        );
    }
}

/// Statistical tests of the placement algorithms, on deterministic keys (a splitmix64
/// sequence). Each prints its measured figures (`cargo test -p ficus --test e2e shard --
/// --nocapture`).
mod stats {
    use super::placement::{self, capacity, key_hash, Hashing, Maglev, Rendezvous};
    use std::time::Instant;

    /// splitmix64: a tiny deterministic generator, so every run sees the same keys.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            placement::mix64(self.0)
        }
    }

    const KEYS: usize = 100_000;

    /// Hashes of `n` random keys such as `user-3f2a…`.
    fn key_hashes(n: usize, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix64(seed);
        (0..n)
            .map(|_| key_hash(format!("user-{:016x}", rng.next()).as_bytes()))
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shard-{i:02}")).collect()
    }

    fn equal(ids: &[String]) -> Vec<(&str, u32)> {
        ids.iter().map(|id| (id.as_str(), 1)).collect()
    }

    fn both(shards: &[(&str, u32)]) -> [(&'static str, Hashing); 2] {
        [
            (
                "maglev",
                Hashing::Maglev(
                    Maglev::new(shards, placement::DEFAULT_TABLE_SIZE).expect("a valid table"),
                ),
            ),
            (
                "rendezvous",
                Hashing::Rendezvous(Rendezvous::new(shards).expect("valid shards")),
            ),
        ]
    }

    fn loads(hashing: &Hashing, keys: &[u64], shards: usize) -> Vec<usize> {
        let mut loads = vec![0; shards];
        for &k in keys {
            loads[hashing.lookup(k)] += 1;
        }
        loads
    }

    fn max_over_mean(loads: &[usize]) -> f64 {
        let max = loads.iter().copied().max().unwrap_or(0) as f64;
        let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
        max / mean
    }

    #[test]
    fn ten_shards_share_keys_evenly() {
        let ids = ids(10);
        let keys = key_hashes(KEYS, 1);
        for (name, hashing) in both(&equal(&ids)) {
            let loads = loads(&hashing, &keys, 10);
            let ratio = max_over_mean(&loads);
            println!(
                "[shard stats] {name}: 10 shards, {KEYS} keys: loads {loads:?}, max/mean {ratio:.4}"
            );
            if let Hashing::Maglev(m) = &hashing {
                let entries = m.entries(10);
                println!(
                    "[shard stats] maglev: table entries per shard {}..={} of {}",
                    entries.iter().min().unwrap_or(&0),
                    entries.iter().max().unwrap_or(&0),
                    m.table_size()
                );
            }
            assert!(ratio <= 1.05, "{name}: max/mean {ratio:.4} > 1.05");
        }
    }

    #[test]
    fn an_eleventh_shard_moves_about_one_eleventh_of_the_keys() {
        let (ten, eleven) = (ids(10), ids(11));
        let keys = key_hashes(KEYS, 2);
        let ideal = 1.0 / 11.0;
        for ((name, before), (_, after)) in
            both(&equal(&ten)).into_iter().zip(both(&equal(&eleven)))
        {
            let (mut moved, mut to_new) = (0usize, 0usize);
            for &k in &keys {
                let (a, b) = (before.lookup(k), after.lookup(k));
                if a != b {
                    moved += 1;
                    if b == 10 {
                        to_new += 1;
                    }
                }
            }
            let fraction = moved as f64 / KEYS as f64;
            println!(
                "[shard stats] {name}: adding an 11th shard moved {:.3}% of keys (ideal {:.3}%, \
                 ratio {:.3}); {:.2}% of the moved keys went to the new shard",
                100.0 * fraction,
                100.0 * ideal,
                fraction / ideal,
                100.0 * to_new as f64 / moved.max(1) as f64
            );
            assert!(
                fraction <= 1.2 * ideal,
                "{name}: moved {fraction:.4} > 1.2 × {ideal:.4}"
            );
            if name == "rendezvous" {
                assert_eq!(to_new, moved, "rendezvous moves keys only to the new shard");
            }
        }
    }

    #[test]
    fn removing_a_shard_moves_only_its_keys() {
        let ten = ids(10);
        let keys = key_hashes(KEYS, 3);
        let removed = 3;
        let nine: Vec<(&str, u32)> = equal(&ten)
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, s)| s)
            .collect();
        // Index among the nine -> index among the ten.
        let back = |i: usize| if i >= removed { i + 1 } else { i };
        for ((name, before), (_, after)) in both(&equal(&ten)).into_iter().zip(both(&nine)) {
            let (mut owned, mut moved, mut others_moved) = (0usize, 0usize, 0usize);
            for &k in &keys {
                let (a, b) = (before.lookup(k), back(after.lookup(k)));
                if a == removed {
                    owned += 1;
                }
                if a != b {
                    moved += 1;
                    if a != removed {
                        others_moved += 1;
                    }
                }
            }
            println!(
                "[shard stats] {name}: removing 1 of 10 shards (rebuilt) moved {:.3}% of keys; \
                 the removed shard owned {:.3}%; keys of other shards moved: {:.3}%",
                100.0 * moved as f64 / KEYS as f64,
                100.0 * owned as f64 / KEYS as f64,
                100.0 * others_moved as f64 / KEYS as f64
            );
            if name == "rendezvous" {
                assert_eq!(
                    others_moved, 0,
                    "rendezvous moves only the removed shard's keys"
                );
            } else {
                assert!(
                    moved as f64 <= 1.2 * KEYS as f64 / 10.0,
                    "maglev moved {moved}"
                );
            }
        }
    }

    #[test]
    fn skipping_an_unhealthy_shard_moves_only_its_keys_and_spreads_them() {
        let ten = ids(10);
        let keys = key_hashes(KEYS, 4);
        let down = 6;
        for (name, hashing) in both(&equal(&ten)) {
            let mut rehomed = [0usize; 10];
            for &k in &keys {
                let owner = hashing.lookup(k);
                let chosen = hashing
                    .choose(k, |s| s != down)
                    .expect("healthy shards remain");
                if owner == down {
                    rehomed[chosen] += 1;
                } else {
                    assert_eq!(chosen, owner, "{name}: a key of a healthy shard moved");
                }
            }
            assert_eq!(rehomed[down], 0);
            let spread: Vec<usize> = rehomed
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != down)
                .map(|(_, &n)| n)
                .collect();
            let ratio = max_over_mean(&spread);
            println!(
                "[shard stats] {name}: shard {down} unhealthy (table not rebuilt): its {} keys \
                 went to the other 9 as {spread:?} (max/mean {ratio:.3}); no other key moved",
                rehomed.iter().sum::<usize>()
            );
            assert!(
                ratio <= 1.5,
                "{name}: the unhealthy shard's keys are not spread"
            );
        }
    }

    #[test]
    fn weights_are_respected() {
        const TOLERANCE: f64 = 0.05;
        let ids = ids(4);
        let weights = [1u32, 2, 3, 4];
        let shards: Vec<(&str, u32)> = ids.iter().map(String::as_str).zip(weights).collect();
        let keys = key_hashes(KEYS, 5);
        for (name, hashing) in both(&shards) {
            let loads = loads(&hashing, &keys, 4);
            let mut line = format!("[shard stats] {name}: weights {weights:?}:");
            for (i, &load) in loads.iter().enumerate() {
                let expected = f64::from(weights[i]) / 10.0;
                let measured = load as f64 / KEYS as f64;
                let error = measured / expected - 1.0;
                line += &format!(
                    " {:.2}% (want {:.0}%, {:+.2}%)",
                    100.0 * measured,
                    100.0 * expected,
                    100.0 * error
                );
                assert!(
                    error.abs() <= TOLERANCE,
                    "{name}: shard {i} of weight {} got {measured:.4}, want {expected:.4} \
                     within ±{TOLERANCE} relative",
                    weights[i]
                );
            }
            println!("{line}; tolerance ±{:.0}% relative", 100.0 * TOLERANCE);
        }
    }

    #[test]
    fn bounded_load_caps_a_hot_key() {
        const REQUESTS: usize = 20_000;
        const FACTOR: f64 = 1.25;
        let ids = ids(10);
        let pool = key_hashes(10_000, 6);
        let mut rng = SplitMix64(7);
        // 30% of the requests carry one hot key.
        let requests: Vec<u64> = (0..REQUESTS)
            .map(|_| {
                let r = rng.next();
                if r % 10 < 3 {
                    pool[0]
                } else {
                    pool[(r >> 8) as usize % pool.len()]
                }
            })
            .collect();
        for (name, hashing) in both(&equal(&ids)) {
            let unbounded = loads(&hashing, &requests, 10);
            let mut load = [0u64; 10];
            let (mut total, mut at_owner) = (0u64, 0usize);
            for &k in &requests {
                let s = hashing
                    .choose(k, |s| load[s] < capacity(total, FACTOR, 1, 10))
                    .expect("some shard has room");
                if s == hashing.lookup(k) {
                    at_owner += 1;
                }
                load[s] += 1;
                total += 1;
            }
            let bounded: Vec<usize> = load.iter().map(|&l| l as usize).collect();
            let ratio = max_over_mean(&bounded);
            println!(
                "[shard stats] {name}: hot key (30% of {REQUESTS} requests): unbounded max/mean \
                 {:.3}, bounded (factor {FACTOR}) max/mean {ratio:.3}; {:.1}% served by the \
                 key's owner",
                max_over_mean(&unbounded),
                100.0 * at_owner as f64 / REQUESTS as f64
            );
            assert!(
                ratio <= FACTOR + 10.0 / REQUESTS as f64,
                "{name}: {bounded:?}"
            );
        }
    }

    /// Figures only (this build's opt-level: the e2e binary compiles this code unoptimised).
    #[test]
    fn table_build_and_lookup_cost() {
        for n in [10, 100] {
            let ids = ids(n);
            let started = Instant::now();
            let m = Maglev::new(&equal(&ids), placement::DEFAULT_TABLE_SIZE).expect("a table");
            let built = started.elapsed();
            let keys = key_hashes(10_000, 8);
            let mut sink = 0usize;
            let started = Instant::now();
            for &k in &keys {
                sink = sink.wrapping_add(m.lookup(k));
            }
            let maglev = started.elapsed() / keys.len() as u32;
            let r = Rendezvous::new(&equal(&ids)).expect("shards");
            let started = Instant::now();
            for &k in &keys {
                sink = sink.wrapping_add(r.lookup(k));
            }
            let rendezvous = started.elapsed() / keys.len() as u32;
            let started = Instant::now();
            for i in 0..keys.len() {
                sink = sink.wrapping_add(key_hash(format!("user-{i:016x}").as_bytes()) as usize);
            }
            let hash = started.elapsed() / keys.len() as u32;
            println!(
                "[shard stats] {n} shards: Maglev table ({} entries) built in {built:?}; per key: \
                 key hash {hash:?}, Maglev lookup {maglev:?}, rendezvous lookup {rendezvous:?} \
                 (unoptimised debug build; sink {})",
                m.table_size(),
                sink % 2
            );
        }
    }
}
