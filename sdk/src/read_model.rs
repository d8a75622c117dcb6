//! Read models (`ficus:gateway/read-model`): documents by key, built by
//! projections ([`crate::projection`]) and read by query handlers (a
//! `wasi:http` handler route granted `"read-model"`) and by the projections
//! themselves.
//!
//! ```ignore
//! use ficus_sdk::read_model;
//!
//! // One document of the model written by the `orders` projection.
//! let order = read_model::get("orders", "order/7")?;
//! // A page of documents whose keys start with `by-status/paid/`.
//! let page = read_model::scan("orders", "by-status/paid/", None, 100)?;
//! ```
//!
//! Keys are 1 to 512 bytes of UTF-8 without control characters; a document
//! is at most 1 MiB. Reading a model no `[[projections]]` entry writes fails
//! with [`Error::Invalid`] naming the known ones.

pub use crate::events::wit::ficus::gateway::read_model::{get, scan, Document, Error};

/// JSON helpers over [`get`] for serde types.
pub fn get_json<T: serde::de::DeserializeOwned>(
    model: &str,
    key: &str,
) -> Result<Option<T>, Error> {
    match get(model, key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("document {key:?} of {model:?}: {e}"))),
    }
}
