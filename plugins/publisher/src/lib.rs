//! Example filter: publishes a message for every request on its route, e.g.
//! "order placed" for `POST /orders`, then lets the request continue (or
//! answers it directly).
//!
//! Config:
//!
//! * `subject` (required): where to publish, e.g. `"orders.placed"`;
//! * `subject_header`: a request header whose value, when present, replaces
//!   `subject` (e.g. to let a test choose);
//! * `payload_header`: a request header whose value is the payload; by
//!   default the payload is the request's path and query;
//! * `respond`: answer with this status and `published` instead of
//!   continuing to the upstream.
//!
//! Headers of the message: `method` and `path` of the request. A failed
//! publish answers 503 (`unavailable`), 400 (`invalid`) or 413
//! (`too-large`) with the reason, and the upstream is not called: a request
//! whose event could not be recorded does not go through.
//!
//! Grants: `pubsub`.

use ficus_sdk::prelude::*;
use ficus_sdk::pubsub::{self, PubSubError};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    subject: String,
    #[serde(default)]
    subject_header: Option<String>,
    #[serde(default)]
    payload_header: Option<String>,
    #[serde(default)]
    respond: Option<u16>,
}

struct Publisher {
    config: Config,
}

impl Filter for Publisher {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = ficus_sdk::config(config)?;
        if config.subject.is_empty() {
            return Err("`subject`: must not be empty".into());
        }
        if let Some(status) = config.respond {
            if !(200..=599).contains(&status) {
                return Err(format!(
                    "`respond`: {status} is not an HTTP status (200..=599)"
                ));
            }
        }
        Ok(Publisher { config })
    }

    fn hooks(&self) -> HookSet {
        HookSet::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let subject = self
            .config
            .subject_header
            .as_deref()
            .and_then(|h| req.header_str(h))
            .unwrap_or_else(|| self.config.subject.clone());
        let path = req.path_with_query();
        let payload = self
            .config
            .payload_header
            .as_deref()
            .and_then(|h| req.header_str(h))
            .unwrap_or_else(|| path.clone());
        let method = req.method();
        let result = pubsub::publish(
            &subject,
            payload.as_bytes(),
            &[("method", method.as_str()), ("path", path.as_str())],
        );
        let (status, body) = match result {
            Ok(()) => match self.config.respond {
                Some(status) => (status, "published\n".to_string()),
                None => return RequestAction::Continue,
            },
            Err(PubSubError::Unavailable(why)) => (503, format!("cannot publish: {why}\n")),
            Err(PubSubError::Invalid(why)) => (400, format!("cannot publish: {why}\n")),
            Err(PubSubError::TooLarge) => (413, "cannot publish: message too large\n".to_string()),
        };
        RequestAction::Respond(
            ResponseSpec::new(status)
                .header("content-type", "text/plain")
                .body(body),
        )
    }
}

ficus_sdk::export_filter!(Publisher);
