//! `headers`: set, add and remove request and response headers.
//!
//! Config (every key optional; unknown keys are rejected):
//!
//! ```toml
//! config = { request  = { set = { "x-env" = "prod" }, add = { "via" = "ficus" }, remove = ["x-debug"] },
//!            response = { set = { "cache-control" = "no-store" }, remove = ["server"] } }
//! ```
//!
//! Each direction applies, in this order: `remove` (every value of each
//! named header), `set` (replace all values with one), `add` (append a value,
//! keeping existing ones). Names and values are checked when the config is
//! loaded, and so are headers the host manages (hop-by-hop headers and
//! `content-length`). Only the directions with edits are hooked.

use std::collections::BTreeMap;

use ficus_sdk::prelude::*;
use serde::Deserialize;

/// Edits for one direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

/// Headers the host manages; editing them would fail on every request.
const HOST_MANAGED: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn check_name(at: &str, name: &str) -> Result<(), String> {
    if !ficus_sdk::is_valid_header_name(name) {
        return Err(format!("config.{at}: {name:?} is not a valid header name"));
    }
    if HOST_MANAGED
        .iter()
        .any(|managed| managed.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "config.{at}: header {name:?} is managed by the gateway and cannot be edited"
        ));
    }
    Ok(())
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn validate(&self, direction: &str) -> Result<(), String> {
        for (op, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                let at = format!("{direction}.{op}.{name}");
                check_name(&at, name)?;
                if !ficus_sdk::is_valid_header_value(value.as_bytes()) {
                    return Err(format!(
                        "config.{at}: {value:?} is not a valid header value"
                    ));
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            check_name(&format!("{direction}.remove[{i}]"), name)?;
        }
        Ok(())
    }
}

/// Apply one direction's edits through a handle's header methods.
macro_rules! apply {
    ($edits:expr, $handle:expr) => {{
        let edits = $edits;
        let handle = $handle;
        // Names and values were validated at configure time, so the host can
        // only refuse an edit in ways the config check already rules out.
        for name in &edits.remove {
            handle.remove_header(name);
        }
        for (name, value) in &edits.set {
            let _ = handle.set_header_str(name, value);
        }
        for (name, value) in &edits.add {
            let _ = handle.append_header_str(name, value);
        }
    }};
}

struct Headers {
    config: Config,
}

impl Filter for Headers {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = ficus_sdk::config(config)?;
        config.request.validate("request")?;
        config.response.validate("response")?;
        Ok(Headers { config })
    }

    fn hooks(&self) -> HookSet {
        let mut hooks = HookSet::empty();
        if !self.config.request.is_empty() {
            hooks |= HookSet::ON_REQUEST;
        }
        if !self.config.response.is_empty() {
            hooks |= HookSet::ON_RESPONSE;
        }
        hooks
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        apply!(&self.config.request, req);
        RequestAction::Continue
    }

    fn on_response(
        &mut self,
        _req: &Request,
        resp: &Response,
        _attempt: &AttemptInfo,
    ) -> ResponseAction {
        apply!(&self.config.response, resp);
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(Headers);
