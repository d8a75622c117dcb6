//! The documents of the `orders` read model and how an event changes them.
//! Pure logic with no host calls, so the end-to-end suite runs its tests
//! natively (tests/e2e/cqrs.rs includes this file).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Placed, not paid.
    Placed,
    /// Paid, not shipped.
    Paid,
    /// Shipped.
    Shipped,
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// As written in keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }
}

/// `order/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDoc {
    /// The order id.
    pub id: String,
    /// Customer id.
    pub customer: String,
    /// Total in cents.
    pub total: u64,
    /// Status.
    pub status: Status,
    /// The stream version this document reflects.
    pub version: u64,
    /// When the last event was stored (ms since the Unix epoch).
    pub updated_ms: u64,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

/// `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events applied.
    pub events: u64,
    /// Events skipped (unusable).
    pub skipped: u64,
    /// Position of the last event seen.
    pub last_position: u64,
    /// Orders per status.
    pub by_status: BTreeMap<Status, u64>,
}

impl Stats {
    /// Add `delta` to the count of `status`.
    pub fn count(&mut self, status: Status, delta: i64) {
        let n = self.by_status.entry(status).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.by_status.remove(&status);
        }
    }
}

/// The new document, and the status it left.
#[derive(Debug)]
pub struct Applied {
    /// The order after the event.
    pub doc: OrderDoc,
    /// Its status before, if it existed.
    pub old_status: Option<Status>,
}

/// What [`apply`] needs of a stored event.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Its type.
    pub event_type: &'a str,
    /// Its version in the order's stream.
    pub version: u64,
    /// When it was stored.
    pub recorded_ms: u64,
    /// Its data (JSON).
    pub data: &'a [u8],
}

#[derive(Deserialize)]
struct Placed {
    customer: String,
    total: u64,
}

#[derive(Deserialize)]
struct Cancelled {
    #[serde(default)]
    reason: String,
}

/// Apply `event` to the order `id` as it is (`current`).
pub fn apply(id: &str, current: Option<&OrderDoc>, event: Event<'_>) -> Result<Applied, String> {
    if let Some(doc) = current {
        if event.version <= doc.version {
            return Err(format!(
                "version {} of order {id} is already applied (the document is at {})",
                event.version, doc.version
            ));
        }
    }
    let next = |status: Status| -> Result<OrderDoc, String> {
        let doc =
            current.ok_or_else(|| format!("{} for an order never placed", event.event_type))?;
        Ok(OrderDoc {
            status,
            version: event.version,
            updated_ms: event.recorded_ms,
            ..doc.clone()
        })
    };
    let doc = match event.event_type {
        "OrderPlaced" => {
            if current.is_some() {
                return Err("OrderPlaced for an order that exists".into());
            }
            let p: Placed =
                serde_json::from_slice(event.data).map_err(|e| format!("OrderPlaced data: {e}"))?;
            OrderDoc {
                id: id.to_owned(),
                customer: p.customer,
                total: p.total,
                status: Status::Placed,
                version: event.version,
                updated_ms: event.recorded_ms,
                cancel_reason: None,
            }
        }
        "OrderPaid" => next(Status::Paid)?,
        "OrderShipped" => next(Status::Shipped)?,
        "OrderCancelled" => {
            let c: Cancelled = serde_json::from_slice(event.data)
                .map_err(|e| format!("OrderCancelled data: {e}"))?;
            OrderDoc {
                cancel_reason: Some(c.reason),
                ..next(Status::Cancelled)?
            }
        }
        other => return Err(format!("unknown event type {other:?}")),
    };
    Ok(Applied {
        doc,
        old_status: current.map(|d| d.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(version: u64, event_type: &'a str, data: &'a str) -> Event<'a> {
        Event {
            event_type,
            version,
            recorded_ms: 1000 + version,
            data: data.as_bytes(),
        }
    }

    #[test]
    fn an_order_goes_from_placed_to_shipped() {
        let placed = apply(
            "7",
            None,
            event(1, "OrderPlaced", r#"{"customer":"c1","total":42}"#),
        )
        .unwrap();
        assert_eq!(placed.doc.status, Status::Placed);
        assert_eq!(placed.old_status, None);
        let paid = apply(
            "7",
            Some(&placed.doc),
            event(2, "OrderPaid", r#"{"amount":42}"#),
        )
        .unwrap();
        assert_eq!(
            (paid.doc.status, paid.old_status),
            (Status::Paid, Some(Status::Placed))
        );
        let shipped = apply("7", Some(&paid.doc), event(3, "OrderShipped", "{}")).unwrap();
        assert_eq!(shipped.doc.status, Status::Shipped);
        assert_eq!(
            (
                shipped.doc.customer.as_str(),
                shipped.doc.total,
                shipped.doc.version
            ),
            ("c1", 42, 3)
        );
    }

    #[test]
    fn unusable_events_are_refused_with_the_reason() {
        let placed = apply(
            "7",
            None,
            event(1, "OrderPlaced", r#"{"customer":"c1","total":42}"#),
        )
        .unwrap()
        .doc;
        for (current, e, why) in [
            (
                None,
                event(1, "OrderPlaced", "not json"),
                "OrderPlaced data",
            ),
            (None, event(1, "OrderPaid", "{}"), "never placed"),
            (
                Some(&placed),
                event(1, "OrderPaid", "{}"),
                "already applied",
            ),
            (
                Some(&placed),
                event(2, "OrderExploded", "{}"),
                "unknown event type",
            ),
        ] {
            let err = apply("7", current, e).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn stats_count_orders_per_status() {
        let mut s = Stats::default();
        s.count(Status::Placed, 1);
        s.count(Status::Placed, 1);
        s.count(Status::Placed, -1);
        s.count(Status::Paid, 1);
        s.count(Status::Shipped, -1);
        assert_eq!(s.by_status.get(&Status::Placed), Some(&1));
        assert_eq!(s.by_status.get(&Status::Paid), Some(&1));
        assert_eq!(s.by_status.get(&Status::Shipped), None);
    }
}
