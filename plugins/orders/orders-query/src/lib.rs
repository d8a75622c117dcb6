//! `orders-query`: the query side of the CQRS demo, a `wasi:http` handler
//! route that only reads the `orders` read model (grant `"read-model"`; no
//! `events`), so reads scale apart from writes.
//!
//! * `GET /orders/{id}`: the order (`404` if the projection has not seen it);
//! * `GET /orders?status=paid&limit=50&after=ID`: the orders in a status, a
//!   page at a time (`next` is the `after` of the next page);
//! * `GET /orders/stats`: events applied, orders per status.
//!
//! The model is eventually consistent: a command's answer carries the
//! event's global `position`; the model has caught up with it when
//! `stats.last_position` is at least that.

#[allow(dead_code)]
#[path = "../../../common/http.rs"]
mod http;

use ficus_sdk::read_model;
use http::respond;
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

const MODEL: &str = "orders";
const STATUSES: [&str; 4] = ["placed", "paid", "shipped", "cancelled"];

struct Query;

fn error(status: u16, message: impl Into<String>) -> (u16, serde_json::Value) {
    (status, serde_json::json!({ "error": message.into() }))
}

fn store_error(e: read_model::Error) -> (u16, serde_json::Value) {
    match e {
        read_model::Error::Invalid(m) => error(400, m),
        read_model::Error::Unavailable(m) => error(503, format!("read model unavailable: {m}")),
    }
}

fn json_doc(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn list(query: &str) -> (u16, serde_json::Value) {
    let Some(status) = param(query, "status") else {
        return error(
            400,
            "expected GET /orders?status={placed|paid|shipped|cancelled}",
        );
    };
    if !STATUSES.contains(&status) {
        return error(
            400,
            format!(
                "unknown status {status:?}, expected one of {}",
                STATUSES.join(", ")
            ),
        );
    }
    let limit = match param(query, "limit").map(str::parse::<u32>) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return error(400, "limit: expected a number from 1 to 1000"),
    };
    let prefix = format!("by-status/{status}/");
    let after = match param(query, "after") {
        Some(id) if valid_id(id) => Some(format!("{prefix}{id}")),
        Some(id) => return error(400, format!("after: invalid order id {id:?}")),
        None => None,
    };
    let page = match read_model::scan(MODEL, &prefix, after.as_deref(), limit) {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let mut orders = Vec::new();
    for entry in &page {
        let id = &entry.key[prefix.len()..];
        match read_model::get(MODEL, &format!("order/{id}")) {
            Ok(Some(doc)) => orders.push(json_doc(&doc)),
            Ok(None) => {}
            Err(e) => return store_error(e),
        }
    }
    let next = (page.len() as u32 == limit)
        .then(|| page.last().map(|d| d.key[prefix.len()..].to_owned()))
        .flatten();
    (
        200,
        serde_json::json!({ "status": status, "orders": orders, "next": next }),
    )
}

fn answer(path_and_query: &str) -> (u16, serde_json::Value) {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["orders"] => list(query),
        ["orders", "stats"] => match read_model::get(MODEL, "stats") {
            Ok(Some(doc)) => (200, json_doc(&doc)),
            Ok(None) => (
                200,
                serde_json::json!({ "events": 0, "skipped": 0, "last_position": 0, "by_status": {} }),
            ),
            Err(e) => store_error(e),
        },
        ["orders", id] if valid_id(id) => match read_model::get(MODEL, &format!("order/{id}")) {
            Ok(Some(doc)) => (200, json_doc(&doc)),
            Ok(None) => error(
                404,
                format!("no order {id:?} (yet: the read model is eventually consistent)"),
            ),
            Err(e) => store_error(e),
        },
        ["orders", id] => error(
            400,
            format!("invalid order id {id:?}: 1 to 64 of [A-Za-z0-9_-]"),
        ),
        _ => error(
            404,
            "expected GET /orders/{id}, /orders?status=…, or /orders/stats",
        ),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Query {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            let (s, b) = error(
                405,
                "queries are GET; commands are POST /orders/{id}/{action}",
            );
            return respond(out, s, &b);
        }
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (status, body) = answer(&path);
        respond(out, status, &body);
    }
}

wasip2::http::proxy::export!(Query);
