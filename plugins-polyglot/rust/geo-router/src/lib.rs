//! `geo-router`: picks the upstream cluster from a request header (e.g. the
//! country a CDN or load balancer put in `x-country`).
//!
//! The Rust twin of `plugins-polyglot/js/geo-router`: same config, same
//! behaviour, so the end-to-end tests run one set of assertions on both.
//!
//! ```toml
//! [plugins.geo-router]
//! source = "build/geo-router.wasm"
//!
//! # in a route's pipeline:
//! { plugin = "geo-router", config = { header = "x-country", routes = { de = "eu", fr = "eu", us = "us" } } }
//! ```
//!
//! * when the header's value (compared case-insensitively) is a key of
//!   `routes`, the request goes to that cluster (`route(...)`) and the
//!   response gets `x-routed-to: <cluster>`;
//! * otherwise the request goes to the route's own upstream, untouched.

use std::collections::BTreeMap;

use ficus_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    routes: BTreeMap<String, String>,
}

fn default_header() -> String {
    "x-country".to_string()
}

struct GeoRouter {
    header: String,
    /// Lower-cased header value -> cluster.
    routes: BTreeMap<String, String>,
}

impl Filter for GeoRouter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = ficus_sdk::config(config)?;
        if !ficus_sdk::is_valid_header_name(&config.header) {
            return Err(format!(
                "config.header: {:?} is not a valid header name",
                config.header
            ));
        }
        if config.routes.is_empty() {
            return Err("config.routes: at least one route is required".to_string());
        }
        let mut routes = BTreeMap::new();
        for (value, cluster) in config.routes {
            if cluster.is_empty() {
                return Err(format!("config.routes.{value}: the cluster name is empty"));
            }
            routes.insert(value.to_ascii_lowercase(), cluster);
        }
        Ok(GeoRouter {
            header: config.header,
            routes,
        })
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let Some(value) = req.header_str(&self.header) else {
            return RequestAction::Continue;
        };
        match self.routes.get(&value.trim().to_ascii_lowercase()) {
            Some(cluster) => {
                req.set_context("routed-to", cluster);
                RequestAction::Route(UpstreamTarget::new(cluster.as_str()))
            }
            None => RequestAction::Continue,
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        _attempt: &AttemptInfo,
    ) -> ResponseAction {
        if let Some(cluster) = req.context("routed-to") {
            let _ = resp.set_header_str("x-routed-to", &cluster);
        }
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(GeoRouter);
