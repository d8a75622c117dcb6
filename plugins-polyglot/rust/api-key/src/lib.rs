//! `api-key`: header-based API-key authentication with a per-key request
//! counter in the gateway's shared state.
//!
//! The Rust twin of `plugins-polyglot/python/api-key`: same config, same
//! behaviour, so the end-to-end tests run one set of assertions on both.
//!
//! ```toml
//! [plugins.api-key]
//! source = "build/api-key.wasm"
//! grants = ["state"]
//!
//! # in a route's pipeline:
//! { plugin = "api-key", config = { keys = ["k1", "k2"], header = "x-api-key" } }
//! ```
//!
//! * a request whose `header` (default `x-api-key`) holds one of `keys` goes on,
//!   without the header (the upstream never sees the key); the response gets
//!   `x-api-key-requests: N`, the number of requests made with that key so far
//!   (a `state` counter shared by every instance);
//! * any other request is answered `401` with `www-authenticate: ApiKey`.

use ficus_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

struct ApiKey {
    config: Config,
}

impl Filter for ApiKey {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = ficus_sdk::config(config)?;
        if !ficus_sdk::is_valid_header_name(&config.header) {
            return Err(format!(
                "config.header: {:?} is not a valid header name",
                config.header
            ));
        }
        if config.keys.is_empty() {
            return Err("config.keys: at least one key is required".to_string());
        }
        Ok(ApiKey { config })
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        match req.header_str(&self.config.header) {
            Some(key) if self.config.keys.contains(&key) => {
                req.remove_header(&self.config.header);
                if let Ok(n) = ficus_sdk::state::increment(&format!("requests:{key}"), 1, None) {
                    req.set_context("requests", &n.to_string());
                }
                RequestAction::Continue
            }
            _ => RequestAction::Respond(
                ResponseSpec::new(401)
                    .header("content-type", "text/plain")
                    .header("www-authenticate", "ApiKey")
                    .body("missing or unknown API key\n"),
            ),
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        _attempt: &AttemptInfo,
    ) -> ResponseAction {
        if let Some(n) = req.context("requests") {
            let _ = resp.set_header_str("x-api-key-requests", &n);
        }
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(ApiKey);
