//! The order aggregate: state rebuilt from its events, and the decisions
//! that turn a command into new events or a refusal. Pure logic, no host
//! calls, so it is unit-tested natively.

use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Placed, waiting for payment.
    Placed,
    /// Paid, waiting for shipping.
    Paid,
    /// Shipped (final).
    Shipped,
    /// Cancelled (final).
    Cancelled,
}

/// The aggregate, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    /// `None` until the order is placed.
    pub status: Option<Status>,
    /// Total in cents, from `OrderPlaced`.
    pub total: u64,
}

/// `OrderPlaced` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// Customer id.
    pub customer: String,
    /// Total in cents, > 0.
    pub total: u64,
}

/// `OrderPaid` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    /// Amount in cents; must equal the order's total.
    pub amount: u64,
}

/// `OrderCancelled` data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Why (free text).
    #[serde(default)]
    pub reason: String,
}

/// A command, parsed from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Place a new order.
    Place(Place),
    /// Pay a placed order.
    Pay(Pay),
    /// Ship a paid order.
    Ship,
    /// Cancel an order that has not shipped.
    Cancel(Cancel),
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The command does not fit the order's state (HTTP 409).
    Conflict(String),
    /// The command itself is invalid (HTTP 422).
    Invalid(String),
}

impl Order {
    /// Apply one stored event.
    pub fn apply(&mut self, event_type: &str, data: &[u8]) {
        match event_type {
            "OrderPlaced" => {
                self.status = Some(Status::Placed);
                if let Ok(p) = serde_json::from_slice::<Place>(data) {
                    self.total = p.total;
                }
            }
            "OrderPaid" => self.status = Some(Status::Paid),
            "OrderShipped" => self.status = Some(Status::Shipped),
            "OrderCancelled" => self.status = Some(Status::Cancelled),
            _ => {}
        }
    }

    /// Decide: the event to append (type and JSON data), or a refusal.
    pub fn decide(&self, command: &Command) -> Result<(&'static str, Vec<u8>), Refusal> {
        let conflict = |m: &str| Err(Refusal::Conflict(m.to_owned()));
        match (command, self.status) {
            (Command::Place(p), None) => {
                if p.total == 0 {
                    return Err(Refusal::Invalid("total: must be above 0".into()));
                }
                if p.customer.is_empty() {
                    return Err(Refusal::Invalid("customer: must not be empty".into()));
                }
                Ok(("OrderPlaced", serde_json::to_vec(p).expect("serialisable")))
            }
            (Command::Place(_), Some(_)) => conflict("the order already exists"),
            (_, None) => conflict("no such order"),
            (Command::Pay(p), Some(Status::Placed)) => {
                if p.amount != self.total {
                    return Err(Refusal::Invalid(format!(
                        "amount: {} does not match the order total {}",
                        p.amount, self.total
                    )));
                }
                Ok(("OrderPaid", serde_json::to_vec(p).expect("serialisable")))
            }
            (Command::Pay(_), Some(Status::Paid | Status::Shipped)) => {
                conflict("the order is already paid")
            }
            (Command::Ship, Some(Status::Paid)) => Ok(("OrderShipped", b"{}".to_vec())),
            (Command::Ship, Some(Status::Placed)) => conflict("cannot ship an unpaid order"),
            (Command::Ship, Some(Status::Shipped)) => conflict("the order is already shipped"),
            (Command::Cancel(c), Some(Status::Placed | Status::Paid)) => Ok((
                "OrderCancelled",
                serde_json::to_vec(c).expect("serialisable"),
            )),
            (Command::Cancel(_), Some(Status::Shipped)) => {
                conflict("cannot cancel a shipped order")
            }
            (_, Some(Status::Cancelled)) => conflict("the order is cancelled"),
        }
    }
}

/// Parse `POST /orders/{id}/{action}` with its JSON body.
pub fn parse(path: &str, body: &[u8]) -> Result<(String, Command), Refusal> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [_, id, action] = parts.as_slice() else {
        return Err(Refusal::Invalid(
            "expected POST /orders/{id}/{place|pay|ship|cancel}".into(),
        ));
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Refusal::Invalid(format!(
            "order id {id:?}: 1 to 64 of [A-Za-z0-9_-]"
        )));
    }
    let json = |what: &str| -> Result<serde_json::Value, Refusal> {
        let text = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            body
        };
        serde_json::from_slice(text).map_err(|e| Refusal::Invalid(format!("{what} body: {e}")))
    };
    let command = match *action {
        "place" => Command::Place(
            serde_json::from_value(json("place")?)
                .map_err(|e| Refusal::Invalid(format!("place body: {e}")))?,
        ),
        "pay" => Command::Pay(
            serde_json::from_value(json("pay")?)
                .map_err(|e| Refusal::Invalid(format!("pay body: {e}")))?,
        ),
        "ship" => Command::Ship,
        "cancel" => Command::Cancel(
            serde_json::from_value(json("cancel")?)
                .map_err(|e| Refusal::Invalid(format!("cancel body: {e}")))?,
        ),
        other => {
            return Err(Refusal::Invalid(format!(
                "unknown action {other:?}, expected place, pay, ship or cancel"
            )))
        }
    };
    Ok((format!("order-{id}"), command))
}

/// A stable event id for a command at a stream position: a retried
/// identical command gets the same id (the store then returns the original
/// append instead of storing it twice).
pub fn event_id(stream: &str, version: u64, event_type: &str, data: &[u8]) -> String {
    // FNV-1a, 64 bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream
        .bytes()
        .chain(version.to_le_bytes())
        .chain(event_type.bytes())
        .chain(data.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{stream}:{version}:{h:016x}")
}
