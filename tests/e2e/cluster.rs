//! A cluster of gateways on NATS JetStream (`[backend] kind = "nats"`): three `ficus` nodes,
//! each with its own data directory (as on three machines), on a 3-node NATS cluster with
//! streams replicated 3 times.
//!
//! * `/admin/backend` reports the connection, the server's version and cluster, and each
//!   stream's leader and replicas;
//! * concurrent appends with the same expected version through all three gateways have
//!   exactly one winner, over many trials (the count is printed);
//! * killing the NATS node that leads the event stream loses no acknowledged event, and the
//!   gateways serve appends again after the failover gap (printed).
//!
//! The leader-election and fencing cluster tests are in `leader.rs`, the shared event store
//! of two gateways in `cqrs.rs`.

use crate::nats_server::NatsServer;
use crate::support::{Cfg, Gateway, TempDir};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Three gateways serving `POST /append/{stream}` (the `event-writer` fixture) on `servers`.
fn gateways(servers: &[String], data: &TempDir) -> Vec<Gateway> {
    let writer = Path::new(ficus::WASM_DIR).join("event-writer.wasm");
    (0..3)
        .map(|i| {
            let dir = data.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("node data dir");
            Gateway::start(
                &Cfg::new()
                    .plugin_source(
                        "writer",
                        &writer.to_string_lossy(),
                        "grants = [\"events\"]\ntimeout_ms = 15000",
                    )
                    .toml(&format!(
                        "[backend]\ndata_dir = {:?}\nkind = \"nats\"\nservers = {servers:?}\n\
                         replicas = 3\n\n[leader]\nnode_id = \"n{i}\"\n\n[[routes]]\n\
                         name = \"append\"\nmatch = {{ path_prefix = \"/append/\" }}\n\
                         handler = \"writer\"\n",
                        dir.to_string_lossy()
                    )),
            )
        })
        .collect()
}

/// `POST /append/{stream}?{query}` on `gw`: status and JSON answer (status 0: no answer).
async fn append(gw: &Gateway, stream: &str, query: &str, body: &str) -> (u16, Value) {
    let req = gw
        .request("POST", &format!("/append/{stream}?{query}"))
        .body(body.to_owned())
        .timeout(Duration::from_secs(20));
    match req.try_send().await {
        Ok(r) => {
            let json = r.json();
            (r.status, json)
        }
        Err(_) => (0, Value::Null),
    }
}

/// `(version, position)` of every stored event of `stream`, in order.
async fn stored(gw: &Gateway, stream: &str) -> Vec<(u64, u64)> {
    let v = gw
        .admin_get(&format!("/admin/streams/{stream}"))
        .send()
        .await
        .json();
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().expect("version"),
                e["position"].as_u64().expect("position"),
            )
        })
        .collect()
}

/// The `/admin/backend` report's entry of stream `name`.
fn stream_of<'a>(backend: &'a Value, name: &str) -> &'a Value {
    backend["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stream {name} in {backend}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_a_nats_cluster_one_winner_per_version_and_a_node_kill() {
    let mut nats = NatsServer::cluster(3);
    let servers: Vec<String> = nats.iter().map(|s| s.url.clone()).collect();
    let data = TempDir::new("cluster");
    let gws: &'static [Gateway] = Box::leak(gateways(&servers, &data).into_boxed_slice());

    // Exactly one winner per expected version, through three gateways at once.
    const TRIALS: u64 = 40;
    let mut winners = 0;
    for v in 0..TRIALS {
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                tokio::spawn(async move {
                    append(
                        &gws[i],
                        "race",
                        &format!("expected={v}&id=n{i}-v{v}"),
                        &format!("{{\"node\":{i}}}"),
                    )
                    .await
                })
            })
            .collect();
        let mut won = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (status, body) = t.await.expect("task");
            match status {
                200 => {
                    assert_eq!(body["version"].as_u64(), Some(v + 1), "{body}");
                    won.push(i);
                }
                409 => assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("wrong expected version")),
                    "{body}"
                ),
                other => panic!("trial {v}, n{i}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(won.len(), 1, "trial {v}: winners {won:?}");
        winners += 1;
    }
    let race = stored(&gws[2], "race").await;
    assert_eq!(race.len() as u64, TRIALS, "one event per trial");
    println!(
        "3 gateways, R3 NATS cluster: {winners} of {TRIALS} trials had exactly one winner \
         (3 concurrent appends each)"
    );

    // /admin/backend: connected, version, cluster, the event stream's leader and replicas.
    let backend = gws[0].admin_get("/admin/backend").send().await.json();
    assert_eq!(backend["kind"], "nats", "{backend}");
    assert_eq!(backend["connection"], "connected", "{backend}");
    assert_eq!(backend["replicas"], 3, "{backend}");
    assert_eq!(
        backend["server"]["cluster"].as_str(),
        Some(nats[0].cluster_name.as_str()),
        "{backend}"
    );
    assert_eq!(backend["server"]["replicas_safe"], true, "{backend}");
    assert!(
        backend["server"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.")),
        "{backend}"
    );
    let events = stream_of(&backend, "FICUS_EVENTS");
    assert_eq!(events["replicas"], 3, "{events}");
    assert_eq!(
        events["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2),
        "the leader and two followers: {events}"
    );
    assert_eq!(stream_of(&backend, "KV_FICUS_LEADER")["replicas"], 3);
    let leader = events["cluster"]["leader"]
        .as_str()
        .expect("a stream leader")
        .to_owned();

    // Kill the NATS node leading the event stream while two gateways append; each writer goes
    // on until 20 of its appends succeeded after the kill (at most 60 s).
    let kill_time: &'static std::sync::OnceLock<Instant> = Box::leak(Box::default());
    let writers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move {
                let mut acked: Vec<(Instant, u64, u64)> = Vec::new();
                let mut failed = 0u32;
                let started = Instant::now();
                let mut n = 0u64;
                let done = |acked: &[(Instant, u64, u64)]| {
                    kill_time
                        .get()
                        .is_some_and(|k| acked.iter().filter(|(t, _, _)| t > k).count() >= 20)
                };
                while !done(&acked) && started.elapsed() < Duration::from_secs(60) {
                    n += 1;
                    let (status, body) =
                        append(&gws[i], "durable", &format!("id=w{i}-{n}"), "{}").await;
                    if status == 200 {
                        acked.push((
                            Instant::now(),
                            body["version"].as_u64().expect("version"),
                            body["position"].as_u64().expect("position"),
                        ));
                    } else {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (acked, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let index: usize = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("n<k>")
        - 1;
    let killed = Instant::now();
    nats[index].kill();
    kill_time.set(killed).expect("set once");
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.expect("writer");
        acked.extend(a);
        failed += f;
    }
    let before = acked.iter().filter(|(t, _, _)| *t < killed).count();
    let first_after = acked
        .iter()
        .filter(|(t, _, _)| *t > killed)
        .map(|(t, _, _)| *t)
        .min()
        .expect("appends succeed again after the stream leader's node was killed");
    let after = acked.len() - before;
    // The failover gap: the longest time without a successful append, around the kill.
    let mut times: Vec<Instant> = acked.iter().map(|(t, _, _)| *t).collect();
    times.sort();
    let gap = times
        .windows(2)
        .filter(|w| w[1] > killed)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    // Every acknowledged append is stored as acknowledged, once; the stream has no gaps.
    let all = stored(&gws[2], "durable").await;
    for (i, (version, _)) in all.iter().enumerate() {
        assert_eq!(*version, i as u64 + 1, "no gaps");
    }
    for (_, version, position) in &acked {
        assert_eq!(
            all.get(*version as usize - 1),
            Some(&(*version, *position)),
            "acknowledged v{version}@{position} is stored as acknowledged"
        );
    }
    println!(
        "NATS node {leader} (event stream leader) killed: {before} appends acknowledged before, \
         {after} after (first {} ms after the kill); longest time without a successful append \
         {} ms; {failed} failed; {} stored, every acknowledged one present",
        first_after.duration_since(killed).as_millis(),
        gap.as_millis(),
        all.len()
    );
    let backend = gws[2].admin_get("/admin/backend").send().await.json();
    let events = stream_of(&backend, "FICUS_EVENTS");
    assert_ne!(events["cluster"]["leader"], leader.as_str(), "{events}");
    for gw in gws {
        gw.terminate();
    }
    drop(nats);
}
