//! `orders-projection`: the projection of the CQRS demo. It folds the
//! events of the `order-{id}` streams into the `orders` read model:
//!
//! * `order/{id}`: the order as JSON (`id`, `customer`, `total`, `status`,
//!   `version`, `updated_ms`, and `cancel_reason` once cancelled);
//! * `by-status/{status}/{id}`: an index entry per order, moved on every
//!   status change, so the query handler can list the orders in a status;
//! * `stats`: how many events were applied and skipped, the last position,
//!   and the number of orders per status. Applying an event twice would
//!   show here (`events` would exceed the number of events in the store).
//!
//! An event it cannot use (unknown type, malformed data, a stream that is
//! not `order-…`) is skipped, logged and counted in `stats.skipped`: a
//! projection that stopped at it would stop the read model for every order.

mod model;

use ficus_sdk::projection::{self, Projection, RecordedEvent};
use ficus_sdk::read_model;
use model::{Applied, OrderDoc, Stats};

/// The model name: the `[[projections]]` entry must be named `orders`.
const MODEL: &str = "orders";

struct Orders;

fn store_err(e: read_model::Error) -> String {
    match e {
        read_model::Error::Invalid(m) => format!("read model: {m}"),
        read_model::Error::Unavailable(m) => format!("read model unavailable: {m}"),
    }
}

impl Projection for Orders {
    fn configure(config: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        match value.as_object() {
            Some(o) if o.is_empty() => Ok(Orders),
            _ => Err(format!("config: expected an empty table, got {value}")),
        }
    }

    fn on_event(&mut self, event: &RecordedEvent) -> Result<(), String> {
        let mut stats: Stats = read_model::get_json(MODEL, "stats")
            .map_err(store_err)?
            .unwrap_or_default();
        let id = event.stream_id.strip_prefix("order-").unwrap_or_default();
        let key = format!("order/{id}");
        let current: Option<OrderDoc> = if id.is_empty() {
            None
        } else {
            read_model::get_json(MODEL, &key).map_err(store_err)?
        };
        let outcome = if id.is_empty() {
            Err(format!(
                "stream {:?} is not an order stream",
                event.stream_id
            ))
        } else {
            model::apply(
                id,
                current.as_ref(),
                model::Event {
                    event_type: &event.event_type,
                    version: event.version,
                    recorded_ms: event.recorded_ms,
                    data: &event.data,
                },
            )
        };
        stats.last_position = event.position;
        match outcome {
            Ok(Applied { doc, old_status }) => {
                if let Some(old) = old_status {
                    projection::delete(&format!("by-status/{}/{id}", old.as_str()))
                        .map_err(store_err)?;
                    stats.count(old, -1);
                }
                projection::put(
                    &format!("by-status/{}/{id}", doc.status.as_str()),
                    format!("{{\"id\":{}}}", serde_json::Value::from(id)).as_bytes(),
                )
                .map_err(store_err)?;
                stats.count(doc.status, 1);
                stats.events += 1;
                projection::put_json(&key, &doc).map_err(store_err)?;
            }
            Err(why) => {
                stats.skipped += 1;
                ficus_sdk::log::warn(format!(
                    "skipping event {} ({} at position {}): {why}",
                    event.id, event.event_type, event.position
                ));
            }
        }
        projection::put_json("stats", &stats).map_err(store_err)
    }
}

ficus_sdk::export_projection!(Orders);
