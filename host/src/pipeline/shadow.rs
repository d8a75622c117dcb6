//! Shadow traffic: a copy of a request sent in the background to another
//! upstream, its response compared with the primary one. The client only
//! sees the primary response.

use super::exchange::{RequestState, ResponseState};
use super::response::collect_limited;
use crate::plugin::bindings::ficus::gateway::types::MirrorCompare;
use crate::plugin::bindings::UpstreamTarget;
use crate::upstream::{kind_name, Cluster};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use std::sync::Arc;

/// A mirror requested by a filter.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where to send the copy.
    pub target: UpstreamTarget,
    /// How to compare.
    pub compare: MirrorCompare,
}

/// What the primary side looked like, for the comparison.
pub struct Primary {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, when `compare.body`.
    pub body: Option<Bytes>,
}

impl Primary {
    /// Capture the primary response for a comparison.
    pub fn of(state: &ResponseState) -> Primary {
        Primary {
            status: state.status,
            headers: state.headers.clone(),
            body: state.body.clone(),
        }
    }
}

/// Send the shadow copy and compare, in the background.
pub fn spawn(
    route: Arc<str>,
    cluster: Option<Arc<Cluster>>,
    mirror: Mirror,
    req: &RequestState,
    primary: Primary,
    body_limit: usize,
) {
    let method = req.method.clone();
    let pq = req.path_and_query().to_owned();
    let headers = req.headers.clone();
    let body = req.body.clone();
    let label = mirror.compare.label.clone();
    tokio::spawn(async move {
        let result = match cluster {
            None => Err(format!("unknown cluster {:?}", mirror.target.cluster)),
            Some(cluster) => {
                shadow(&cluster, &mirror, method, &pq, headers, body, body_limit).await
            }
        };
        let outcome = match result {
            Err(e) => {
                tracing::warn!(route = %route, label = %label, "shadow request failed: {e}");
                "error"
            }
            Ok((status, h, b)) => match differences(&mirror.compare, &primary, status, &h, &b) {
                None => "match",
                Some(diff) => {
                    tracing::warn!(
                        route = %route,
                        label = %label,
                        path = %pq,
                        "shadow mismatch: {diff}; primary: {} {}; shadow: {} {}",
                        primary.status.as_u16(),
                        sample(primary.body.as_deref().unwrap_or_default()),
                        status.as_u16(),
                        sample(&b),
                    );
                    "mismatch"
                }
            },
        };
        metrics::counter!("ficus_shadow_total", "route" => route.to_string(), "label" => label, "result" => outcome)
            .increment(1);
    });
}

async fn shadow(
    cluster: &Cluster,
    mirror: &Mirror,
    method: http::Method,
    pq: &str,
    mut headers: HeaderMap,
    body: Bytes,
    body_limit: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let endpoint = cluster
        .pick(mirror.target.endpoint_key.as_deref())
        .ok_or_else(|| "the cluster has no endpoints".to_string())?;
    // Origin form, as for the primary attempt.
    let uri = http::uri::PathAndQuery::try_from(pq)
        .map(http::Uri::from)
        .map_err(|e| e.to_string())?;
    headers.insert("x-ficus-shadow", http::HeaderValue::from_static("1"));
    headers
        .entry(http::header::HOST)
        .or_insert_with(|| endpoint.host.clone());
    let mut out = http::Request::new(Full::new(body));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    let resp = cluster
        .send(endpoint, out, cluster.timeout, None)
        .await
        .map_err(|f| format!("{}: {}", kind_name(f.kind), f.detail))?;
    let (parts, body) = resp.into_parts();
    let body = collect_limited(body, body_limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok((parts.status, parts.headers, body))
}

/// Describe how the shadow differs from the primary, or `None` if it
/// matches under `compare`.
pub fn differences(
    compare: &MirrorCompare,
    primary: &Primary,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    let mut diffs = Vec::new();
    if compare.status && primary.status != status {
        diffs.push(format!(
            "status {} vs {}",
            primary.status.as_u16(),
            status.as_u16()
        ));
    }
    for name in &compare.headers {
        let a = primary.headers.get(name.as_str()).map(|v| v.as_bytes());
        let b = headers.get(name.as_str()).map(|v| v.as_bytes());
        if a != b {
            diffs.push(format!("header {name}"));
        }
    }
    if compare.body {
        let a = primary.body.as_deref().unwrap_or_default();
        if !bodies_equal(a, body, &compare.ignore_fields) {
            diffs.push("body".to_string());
        }
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

fn bodies_equal(a: &[u8], b: &[u8], ignore: &[String]) -> bool {
    match (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) {
        (Ok(mut x), Ok(mut y)) => {
            strip(&mut x, ignore);
            strip(&mut y, ignore);
            x == y
        }
        _ => a == b,
    }
}

fn strip(v: &mut serde_json::Value, ignore: &[String]) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !ignore.iter().any(|i| i == k));
            for child in map.values_mut() {
                strip(child, ignore);
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                strip(child, ignore);
            }
        }
        _ => {}
    }
}

fn sample(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]);
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(body: bool, ignore: &[&str]) -> MirrorCompare {
        MirrorCompare {
            label: "t".into(),
            status: true,
            headers: vec!["content-type".into()],
            body,
            ignore_fields: ignore.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn primary(status: u16, body: &str) -> Primary {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        Primary {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Some(Bytes::from(body.to_owned())),
        }
    }

    #[test]
    fn json_bodies_compare_structurally_without_ignored_fields() {
        let p = primary(
            200,
            r#"{"id":1,"at":"2026-01-01","items":[{"n":1,"ts":5}]}"#,
        );
        let h = p.headers.clone();
        let same = br#"{"items":[{"ts":9,"n":1}],"at":"2027-02-02","id":1}"#;
        assert_eq!(
            differences(&compare(true, &["at", "ts"]), &p, StatusCode::OK, &h, same),
            None
        );
        assert!(differences(&compare(true, &[]), &p, StatusCode::OK, &h, same).is_some());
    }

    #[test]
    fn status_headers_and_bytes_are_compared() {
        let p = primary(200, "plain");
        let h = p.headers.clone();
        assert_eq!(
            differences(
                &compare(true, &[]),
                &p,
                StatusCode::INTERNAL_SERVER_ERROR,
                &h,
                b"plain"
            )
            .as_deref(),
            Some("status 200 vs 500")
        );
        assert_eq!(
            differences(
                &compare(true, &[]),
                &p,
                StatusCode::OK,
                &HeaderMap::new(),
                b"other"
            )
            .as_deref(),
            Some("header content-type, body")
        );
        assert_eq!(
            differences(&compare(false, &[]), &p, StatusCode::OK, &h, b"other"),
            None
        );
    }
}
