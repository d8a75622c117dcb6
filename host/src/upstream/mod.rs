//! Upstream clusters: named sets of endpoints behind a pooled keep-alive
//! hyper client, with round-robin (default) or random balancing, connect
//! and per-attempt timeouts, and failures classified for filters and for
//! the 502/503/504 the client sees.

use crate::conn_timer::ConnTimer;
use crate::plugin::bindings::UpstreamError;
use bytes::Bytes;
use client::{ClientError, EndpointClient};
use http_body_util::Full;
use hyper::body::Incoming;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod client;

/// How endpoints are chosen when no endpoint key is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each endpoint in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

/// One endpoint of a cluster, with its own connection pool
/// ([`EndpointClient`]).
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub addr: Arc<str>,
    /// The same, as the `Host` to send when the client's request named none.
    pub host: http::HeaderValue,
    client: EndpointClient,
}

/// Why an attempt failed, with detail for the log (not for the client).
#[derive(Debug)]
pub struct Failure {
    /// The kind, as filters see it.
    pub kind: UpstreamError,
    /// Human-readable detail for logs.
    pub detail: String,
}

/// What a cluster was built from (to reuse it, with its connection pool,
/// across reloads when unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// Balancing policy.
    pub balance: Balance,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// A named upstream cluster.
pub struct Cluster {
    /// What it was built from.
    pub spec: ClusterSpec,
    /// Cluster name.
    pub name: Arc<str>,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    balance: Balance,
    /// Default per-attempt timeout (until the response head).
    pub timeout: Duration,
    /// `ficus_upstream_attempts_total{outcome="response"}`, registered once
    /// (the request path only increments it).
    pub responses: metrics::Counter,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Cluster {
    /// Build a cluster. `endpoints` are `host:port` strings.
    pub fn new(
        name: &str,
        endpoints: &[String],
        balance: Balance,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let authority = http::uri::Authority::try_from(e.as_str())
                    .map_err(|err| format!("invalid endpoint {e:?}: {err}"))?;
                let host = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|err| format!("invalid endpoint {e:?}: {err}"))?;
                let addr: Arc<str> = Arc::from(e.as_str());
                let client = EndpointClient::new(addr.clone(), connect_timeout);
                Ok(Endpoint { addr, host, client })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Cluster {
            spec: ClusterSpec {
                endpoints: endpoints.iter().map(|e| e.addr.to_string()).collect(),
                balance,
                connect_timeout,
                timeout,
            },
            name: name.into(),
            endpoints,
            next: AtomicUsize::new(0),
            balance,
            timeout,
            responses: metrics::counter!(
                "ficus_upstream_attempts_total",
                "cluster" => name.to_owned(),
                "outcome" => "response"
            ),
        })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Choose an endpoint: the one whose address equals `key`, else the key
    /// hashed onto the list, else by the balancing policy.
    pub fn pick(&self, key: Option<&str>) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if let Some(key) = key {
            if let Some(e) = self.endpoints.iter().find(|e| &*e.addr == key) {
                return Some(e);
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            return self.endpoints.get((h.finish() % n as u64) as usize);
        }
        let i = match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Random => fastrand::usize(..n),
        };
        self.endpoints.get(i)
    }

    /// Send one attempt to `endpoint` (one of this cluster's; the URI in
    /// origin form and `Host` set), waiting at most `timeout` for the response head:
    /// on the client connection's timer when the caller runs on that
    /// connection's task (see [`ConnTimer`]), else on a tokio sleep.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        timer: Option<&ConnTimer>,
    ) -> Result<http::Response<Incoming>, Failure> {
        let response = endpoint.client.send(req);
        let result = match timer {
            Some(timer) => timer.timeout(timeout, response).await,
            None => tokio::time::timeout(timeout, response).await.ok(),
        };
        match result {
            None => Err(Failure {
                kind: UpstreamError::Timeout,
                detail: format!("no response head within {} ms", timeout.as_millis()),
            }),
            Some(Ok(resp)) => Ok(resp),
            Some(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Classify a client error.
fn classify(e: &ClientError) -> Failure {
    let kind = if e.is_connect_timeout() {
        UpstreamError::ConnectTimeout
    } else if e.is_connect() {
        UpstreamError::ConnectFailed
    } else if e.is_protocol() {
        UpstreamError::Protocol
    } else {
        UpstreamError::Reset
    };
    Failure {
        kind,
        detail: error_chain(e),
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    source_chain(e)
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The HTTP status the client sees for an upstream failure.
pub fn status_for(kind: UpstreamError) -> http::StatusCode {
    match kind {
        UpstreamError::ConnectTimeout | UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        UpstreamError::NoEndpoint => http::StatusCode::SERVICE_UNAVAILABLE,
        UpstreamError::ConnectFailed | UpstreamError::Reset | UpstreamError::Protocol => {
            http::StatusCode::BAD_GATEWAY
        }
    }
}

/// A short machine-readable name for a failure kind.
pub fn kind_name(kind: UpstreamError) -> &'static str {
    match kind {
        UpstreamError::ConnectFailed => "connect-failed",
        UpstreamError::ConnectTimeout => "connect-timeout",
        UpstreamError::Timeout => "timeout",
        UpstreamError::Reset => "reset",
        UpstreamError::Protocol => "protocol",
        UpstreamError::NoEndpoint => "no-endpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(eps: &[&str]) -> Cluster {
        let eps: Vec<String> = eps.iter().map(|s| s.to_string()).collect();
        Cluster::new(
            "c",
            &eps,
            Balance::RoundRobin,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn round_robin_cycles() {
        let c = cluster(&["127.0.0.1:1", "127.0.0.1:2"]);
        let picks: Vec<_> = (0..4)
            .map(|_| c.pick(None).unwrap().addr.to_string())
            .collect();
        assert_eq!(
            picks,
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
    }

    #[test]
    fn endpoint_key_is_exact_or_stable_hash() {
        let c = cluster(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(&*c.pick(Some("127.0.0.1:3")).unwrap().addr, "127.0.0.1:3");
        let a = c.pick(Some("user-42")).unwrap().addr.clone();
        for _ in 0..10 {
            assert_eq!(c.pick(Some("user-42")).unwrap().addr, a);
        }
    }

    #[test]
    fn bad_endpoint_is_rejected() {
        let eps = vec!["not a host".to_string()];
        assert!(Cluster::new(
            "c",
            &eps,
            Balance::Random,
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
        .is_err());
    }
}
