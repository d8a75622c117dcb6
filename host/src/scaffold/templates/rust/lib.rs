//! `{{name}}`: a Ficus gateway filter.
//!
//! Every hook is written out with the default behaviour (continue); change
//! the ones you need and delete the rest (the `Filter` trait has the same
//! defaults). See the ficus-sdk documentation (`cargo doc --open -p ficus-sdk`)
//! and the Rust guide (sdk/guides/rust.md in the Ficus repository).

use ficus_sdk::prelude::*;
use serde::Deserialize;

/// The per-route `config` table of this plugin in the gateway config, e.g.
/// `pipeline = [{ plugin = "{{name}}", config = { ... } }]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Plugin {
    #[allow(dead_code)]
    config: Config,
}

impl Filter for Plugin {
    /// Called once per instance, before any request. `Err` rejects the
    /// config: `ficus check` and the gateway report it with the route.
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = ficus_sdk::config(config)?;
        Ok(Plugin { config })
    }

    /// Which hooks the gateway calls (skipping a hook saves a call).
    fn hooks(&self) -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    /// Every request, before the upstream: continue, respond or route.
    fn on_request(&mut self, _req: &Request) -> RequestAction {
        RequestAction::Continue
    }

    /// Every response, on its way back: continue, replace or retry.
    fn on_response(
        &mut self,
        _req: &Request,
        _resp: &Response,
        _attempt: &AttemptInfo,
    ) -> ResponseAction {
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(Plugin);
