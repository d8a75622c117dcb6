//! `orders-command`: the command side of the CQRS demo, a `wasi:http`
//! handler route that imports the event store (grant `"events"`).
//!
//! `POST /orders/{id}/place` `{"customer": "c1", "total": 4200}`,
//! `POST /orders/{id}/pay` `{"amount": 4200}`, `POST /orders/{id}/ship`,
//! `POST /orders/{id}/cancel` `{"reason": "…"}`.
//!
//! Each command loads the order by reading stream `order-{id}`, decides
//! (see `domain.rs`: cannot pay twice, pay the wrong amount, ship unpaid,
//! cancel shipped …) and appends one event with the version it read as the
//! expected version. Answers: 200 `{"stream","version","position","event"}`;
//! 409 `{"error"}` when the command does not fit the order's state; 422 for
//! an invalid command; 503 when the store is unavailable. A concurrent
//! writer (wrong expected version) makes it reload and decide again, up to
//! 3 times, then 409 `concurrent modification`.

mod domain;
#[path = "../../../common/http.rs"]
mod http;

use domain::{event_id, parse, Order, Refusal};
use ficus_sdk::events::{self, Direction, Error, EventData, ExpectedVersion};
use http::{read_body, respond};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

/// Reloads after a concurrency conflict before giving up with 409.
const ATTEMPTS: u32 = 3;

struct Orders;

fn error(status: u16, message: impl Into<String>) -> (u16, serde_json::Value) {
    (status, serde_json::json!({ "error": message.into() }))
}

fn store_error(e: &Error) -> (u16, serde_json::Value) {
    match e {
        Error::WrongExpectedVersion(actual) => error(
            409,
            format!("concurrent modification (the order is now at version {actual})"),
        ),
        Error::StreamDeleted => error(409, "the order was deleted"),
        Error::TooLarge(m) | Error::Invalid(m) => error(422, m.clone()),
        Error::Unavailable(m) => error(503, format!("event store unavailable: {m}")),
    }
}

/// Load, decide, append; reload and decide again on a concurrency conflict.
fn execute(path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (stream, command) = match parse(path, body) {
        Ok(c) => c,
        Err(Refusal::Invalid(m)) | Err(Refusal::Conflict(m)) => return error(422, m),
    };
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let history = match events::read_stream(&stream, 1, 1000, Direction::Forward) {
            Ok(h) => h,
            Err(e) => return store_error(&e),
        };
        let mut order = Order::default();
        for e in &history {
            order.apply(&e.event_type, &e.data);
        }
        let version = history.last().map_or(0, |e| e.version);
        let (event_type, data) = match order.decide(&command) {
            Ok(d) => d,
            Err(Refusal::Conflict(m)) => return error(409, m),
            Err(Refusal::Invalid(m)) => return error(422, m),
        };
        let event = EventData {
            id: event_id(&stream, version, event_type, &data),
            event_type: event_type.to_owned(),
            data,
            metadata: Vec::new(),
        };
        match events::append(&stream, ExpectedVersion::Exact(version), &[event]) {
            Ok(a) => {
                return (
                    200,
                    serde_json::json!({
                        "stream": stream,
                        "version": a.version,
                        "position": a.position,
                        "event": event_type,
                    }),
                )
            }
            Err(e @ Error::WrongExpectedVersion(_)) => last = Some(e),
            Err(e) => return store_error(&e),
        }
    }
    store_error(&last.expect("at least one attempt"))
}

impl wasip2::exports::http::incoming_handler::Guest for Orders {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            let (s, b) = error(405, "commands are POST /orders/{id}/{action}");
            return respond(out, s, &b);
        }
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let body = match read_body(&request) {
            Ok(b) => b,
            Err(m) => {
                let (s, b) = error(400, m);
                return respond(out, s, &b);
            }
        };
        let (status, body) = execute(&path, &body);
        respond(out, status, &body);
    }
}

wasip2::http::proxy::export!(Orders);
