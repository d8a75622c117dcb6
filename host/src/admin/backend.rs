//! `GET /admin/backend`: which backend the stateful capabilities run on,
//! and for NATS the connection state, the server's version and cluster, and
//! the JetStream streams Ficus uses with their leader and replicas.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// What `/admin/backend` reports on.
pub enum BackendInfo {
    /// `[backend] kind = "embedded"`: files in one data directory.
    Embedded {
        /// `backend.data_dir`, resolved.
        data_dir: PathBuf,
    },
    /// `[backend] kind = "nats"`.
    Nats {
        /// A connection of its own (named `ficus-admin`), so the report
        /// shows what a new request to the cluster would meet.
        client: async_nats::Client,
        /// `backend.servers`.
        servers: Vec<String>,
        /// `backend.replicas`.
        replicas: u8,
        /// The JetStream streams this node uses (a key-value bucket `B` is
        /// the stream `KV_B`).
        streams: Vec<String>,
    },
}

impl BackendInfo {
    /// Connect the admin's own client for `[backend] kind = "nats"`.
    pub async fn connect_nats(
        servers: Vec<String>,
        credentials: Option<PathBuf>,
        replicas: u8,
        streams: Vec<String>,
    ) -> anyhow::Result<BackendInfo> {
        let client = crate::capability::nats::connect(
            "ficus-admin",
            &servers,
            credentials.as_deref(),
            crate::capability::nats::Initial::InBackground,
        )
        .await
        .map_err(|e| anyhow::anyhow!("admin: {e}"))?;
        Ok(BackendInfo::Nats {
            client,
            servers,
            replicas,
            streams,
        })
    }

    /// The report: a JSON object.
    pub async fn report(&self) -> Value {
        match self {
            BackendInfo::Embedded { data_dir } => json!({
                "kind": "embedded",
                "data_dir": data_dir.display().to_string(),
                "files": ["events.redb", "readmodels.redb", "pubsub.redb", "leader/"],
            }),
            BackendInfo::Nats {
                client,
                servers,
                replicas,
                streams,
            } => {
                let info = client.server_info();
                let connected = !info.server_id.is_empty();
                let js = async_nats::jetstream::new(client.clone());
                let mut reports = Vec::new();
                for name in streams {
                    reports.push(stream_report(&js, name).await);
                }
                json!({
                    "kind": "nats",
                    "servers": servers,
                    "replicas": replicas,
                    "connection": client.connection_state().to_string(),
                    "server": if connected {
                        json!({
                            "id": info.server_id,
                            "name": info.server_name,
                            "version": info.version,
                            "address": format!("{}:{}", info.host, info.port),
                            "cluster": info.cluster,
                            "jetstream": info.jetstream,
                            "max_payload": info.max_payload,
                            "connect_urls": info.connect_urls,
                            "replicas_safe": crate::capability::events::nats::safe_with_replicas(&info.version),
                        })
                    } else {
                        Value::Null
                    },
                    "streams": reports,
                })
            }
        }
    }
}

async fn stream_report(js: &async_nats::jetstream::Context, name: &str) -> Value {
    let lookup = tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
        stream.info().await.cloned().map_err(|e| e.to_string())
    })
    .await;
    let info = match lookup {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return json!({ "name": name, "error": e }),
        Err(_) => return json!({ "name": name, "error": "no answer within 2 s" }),
    };
    let cluster = info.cluster.as_ref().map(|c| {
        json!({
            "name": c.name,
            "leader": c.leader,
            "replicas": c.replicas.iter().map(|p| json!({
                "name": p.name,
                "current": p.current,
                "offline": p.offline,
                "active_ms": p.active.as_millis() as u64,
                "lag": p.lag,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "name": name,
        "subjects": info.config.subjects,
        "replicas": info.config.num_replicas,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "first_sequence": info.state.first_sequence,
        "last_sequence": info.state.last_sequence,
        "consumers": info.state.consumer_count,
        "cluster": cluster,
    })
}
