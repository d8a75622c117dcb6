//! The `metrics` capability and the gateway's own metrics, exported in
//! Prometheus text format on the admin listener.

use metrics::Label;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide Prometheus recorder (idempotent) and return a
/// handle that renders the exposition text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| b.set_buckets(&buckets))
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // A second install (e.g. in tests) keeps the first recorder.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Render all metrics in Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// Why a plugin's metric call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricError {
    /// The metric name is not a valid Prometheus name.
    #[error("invalid metric name {0:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidName(String),
    /// Names starting with `ficus_` belong to the host.
    #[error("metric name {0:?} is reserved: names starting with \"ficus_\" belong to the gateway")]
    Reserved(String),
    /// A label name is invalid or reserved.
    #[error(
        "invalid label name {0:?}: expected [a-zA-Z_][a-zA-Z0-9_]* and not \"plugin\" or \"route\""
    )]
    InvalidLabel(String),
    /// Too many labels.
    #[error("too many labels ({0}); at most 8 are allowed")]
    TooManyLabels(usize),
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') => {}
        _ => return false,
    }
    name.len() <= 200 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Validate a plugin metric and build its label set (adding `plugin` and
/// `route`).
pub fn plugin_labels(
    name: &str,
    labels: Vec<(String, String)>,
    plugin: &str,
    route: &str,
) -> Result<Vec<Label>, MetricError> {
    if !valid_name(name, true) {
        return Err(MetricError::InvalidName(name.to_owned()));
    }
    if name.starts_with("ficus_") {
        return Err(MetricError::Reserved(name.to_owned()));
    }
    if labels.len() > 8 {
        return Err(MetricError::TooManyLabels(labels.len()));
    }
    let mut out = Vec::with_capacity(labels.len() + 2);
    out.push(Label::new("plugin", plugin.to_owned()));
    out.push(Label::new("route", route.to_owned()));
    for (k, v) in labels {
        if !valid_name(&k, false) || k == "plugin" || k == "route" || k.starts_with("__") {
            return Err(MetricError::InvalidLabel(k));
        }
        let v: String = crate::capability::log::truncate(&v, 256).to_owned();
        out.push(Label::new(k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(plugin_labels("requests_total", vec![], "p", "r").is_ok());
        assert_eq!(
            plugin_labels("1bad", vec![], "p", "r"),
            Err(MetricError::InvalidName("1bad".into()))
        );
        assert_eq!(
            plugin_labels("ficus_x", vec![], "p", "r"),
            Err(MetricError::Reserved("ficus_x".into()))
        );
        assert_eq!(
            plugin_labels("x", vec![("route".into(), "v".into())], "p", "r"),
            Err(MetricError::InvalidLabel("route".into()))
        );
        let labels = plugin_labels("x", vec![("code".into(), "200".into())], "p", "r").unwrap();
        assert_eq!(labels.len(), 3);
    }
}
