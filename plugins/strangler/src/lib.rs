//! `strangler`: incremental (strangler-fig) migration from a legacy service to
//! a new one, as a Ficus filter.
//!
//! Per request, in `on-request`:
//!
//! 1. the first rule whose conditions (path or path prefix, methods, headers,
//!    cookies, query parameters) all hold is the request's rule; none: the
//!    `default` side;
//! 2. a force override (`override.header`, default `x-strangler: new|legacy`,
//!    or `override.cookie`) pins the side;
//! 3. otherwise the rule's `percent` decides: the user key (the first of
//!    `sticky.by` present: cookie, header, query parameter or client address;
//!    or a freshly minted `sticky.set_cookie` id) is hashed onto a bucket in
//!    `0..10000`, and the request goes to the new side iff
//!    `bucket < percent × 100`, so that raising the percentage only moves
//!    users from legacy to new;
//! 4. the request is routed to the side's cluster (`route(upstream-target)`),
//!    and, when shadowing applies, `mirror`ed to the other side's cluster:
//!    the host compares the two responses in the background and counts
//!    `ficus_shadow_total{route,label,result}`.
//!
//! In `on-response` it sets the side header (`x-strangler-side`), the minted
//! cookie, and the per-side metrics (`strangler_errors_total`,
//! `strangler_latency_seconds`).
//!
//! The component imports only `ficus:gateway/metrics` (besides the always
//! linked `types`), so its plugin table needs `grants = ["metrics"]`. Minted
//! cookie ids come from `wasi:random`, which every plugin has.
//!
//! The full reference is in the plugin's `README.md`; the pure logic lives in
//! [`decide`] (no host imports; unit-tested natively and from the root
//! workspace's e2e test binary).

mod decide;

use std::cell::OnceCell;

use decide::{Config, Decision, Inputs, RawConfig, Sampler, Side};
use ficus_sdk::metrics;
use ficus_sdk::prelude::*;
use ficus_sdk::wit::ficus::gateway::types::MirrorCompare;

/// Request-context keys (per request and filter position).
const CTX_SIDE: &str = "side";
const CTX_MINTED: &str = "minted";

struct Strangler {
    config: Config,
    sampler: Sampler,
    /// Whether this instance published the `strangler_new_percent` gauges.
    published: bool,
}

/// The request as the decision reads it: method and path are read once,
/// headers and cookies on demand (one host call each).
struct HostInputs<'a> {
    req: &'a Request,
    method: String,
    path_with_query: String,
    cookies: OnceCell<Vec<String>>,
}

impl<'a> HostInputs<'a> {
    fn new(req: &'a Request) -> Self {
        HostInputs {
            req,
            method: req.method(),
            path_with_query: req.path_with_query(),
            cookies: OnceCell::new(),
        }
    }
}

impl Inputs for HostInputs<'_> {
    fn method(&self) -> &str {
        &self.method
    }

    fn path_with_query(&self) -> &str {
        &self.path_with_query
    }

    fn header(&self, name: &str) -> Option<String> {
        self.req.header_str(name)
    }

    fn cookie(&self, name: &str) -> Option<String> {
        let all = self
            .cookies
            .get_or_init(|| self.req.header_all_str("cookie"));
        decide::cookie_value(all, name)
    }

    fn client_addr(&self) -> String {
        self.req.client_addr()
    }
}

fn random_u64() -> u64 {
    wasip2::random::random::get_random_u64()
}

impl Strangler {
    /// Publish each rule's percentage once per instance (a reload configures
    /// new instances, which publish the new values).
    fn publish(&mut self) {
        if self.published {
            return;
        }
        self.published = true;
        for rule in &self.config.rules {
            let _ = metrics::gauge_set(
                "strangler_new_percent",
                rule.percent,
                &[("rule", &rule.name)],
            );
        }
    }

    fn target(&self, side: Side, decision: &Decision) -> UpstreamTarget {
        let target = UpstreamTarget::new(self.config.cluster(side));
        match (&decision.key, self.config.sticky.endpoint_affinity) {
            (Some(key), true) => target.endpoint_key(key.as_str()),
            _ => target,
        }
    }

    fn shadow(&mut self, req: &Request, decision: &Decision, method: &str) {
        if !self.config.wants_shadow(decision, method)
            || !self.sampler.take(self.config.shadow.threshold)
        {
            return;
        }
        let s = &self.config.shadow;
        let compare = MirrorCompare {
            label: s.label.clone(),
            status: s.status,
            headers: s.headers.clone(),
            body: s.body,
            ignore_fields: s.ignore_fields.clone(),
        };
        let other = decision.side.other();
        let outcome = match req.mirror(&self.target(other, decision), &compare) {
            Ok(()) => "sent",
            Err(_) => "refused",
        };
        let _ = metrics::counter_add(
            "strangler_shadow_requests_total",
            1,
            &[("side", other.as_str()), ("outcome", outcome)],
        );
    }
}

impl Filter for Strangler {
    fn configure(config: &str) -> Result<Self, String> {
        let raw: RawConfig = ficus_sdk::config(config)?;
        Ok(Strangler {
            config: Config::from_raw(raw)?,
            sampler: Sampler::default(),
            published: false,
        })
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        self.publish();
        let inputs = HostInputs::new(req);
        let decision = self.config.decide(&inputs, &mut random_u64);
        let side = decision.side;
        let forced = if decision.forced { "true" } else { "false" };
        let _ = metrics::counter_add(
            "strangler_requests_total",
            1,
            &[
                ("side", side.as_str()),
                ("rule", self.config.rule_name(&decision)),
                ("forced", forced),
            ],
        );
        req.set_context(CTX_SIDE, side.as_str());
        if let Some(id) = &decision.minted {
            req.set_context(CTX_MINTED, id);
        }
        self.shadow(req, &decision, &inputs.method);
        RequestAction::Route(self.target(side, &decision))
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        attempt: &AttemptInfo,
    ) -> ResponseAction {
        let Some(side) = req.context(CTX_SIDE).as_deref().and_then(Side::parse) else {
            return ResponseAction::Continue;
        };
        if let Some(name) = &self.config.response_header {
            let _ = resp.set_header_str(name, side.as_str());
        }
        if let (Some(id), Some(cookie)) = (req.context(CTX_MINTED), &self.config.sticky.set_cookie)
        {
            let _ = resp.append_header_str("set-cookie", &cookie.header_value(&id));
        }
        if attempt.local {
            // Produced by a plugin, not by the side's service.
            return ResponseAction::Continue;
        }
        let kind = match attempt.error {
            Some(error) => Some(error.as_str()),
            None if resp.status() >= 500 => Some("5xx"),
            None => None,
        };
        if let Some(kind) = kind {
            let _ = metrics::counter_add(
                "strangler_errors_total",
                1,
                &[("side", side.as_str()), ("kind", kind)],
            );
        }
        let _ = metrics::histogram_observe(
            "strangler_latency_seconds",
            attempt.latency_us as f64 / 1_000_000.0,
            &[("side", side.as_str())],
        );
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(Strangler);
