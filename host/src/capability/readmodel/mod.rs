//! The `read-model` capability: documents by key, written by projections and
//! read by query handlers (and by the projections themselves).
//!
//! Each model belongs to one `[[projections]]` entry (same name) and lives in
//! *generations*: queries read the active generation; a rebuild writes a new
//! one from event position 1 while the active one keeps answering, then
//! switches atomically when the new one has caught up, and drops the old
//! one. Every batch of a projection's writes is committed in one transaction
//! together with the projection's checkpoint (the global position of the last
//! event applied), so a crash never applies an event twice or skips one.

pub mod embedded;
pub mod nats;

/// Longest document key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest document, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most documents one scan returns.
pub const MAX_SCAN: usize = 1000;

/// A document and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Its key.
    pub key: String,
    /// Its bytes.
    pub value: Vec<u8>,
}

/// One write of a batch: `Some` inserts or replaces, `None` deletes.
pub type Write = (String, Option<Vec<u8>>);

/// Where a model's generations stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Generations {
    /// The generation queries read (1 for a model never rebuilt).
    pub active: u64,
    /// The active generation's checkpoint: the global position of the last
    /// event applied (0: none).
    pub checkpoint: u64,
    /// A generation being rebuilt, and its checkpoint.
    pub building: Option<(u64, u64)>,
}

/// A failed read-model operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReadModelError {
    /// Unknown model, malformed key, oversized document.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A write to a generation that is no longer written (a rebuild replaced
    /// it), or a checkpoint that does not move forward.
    #[error("stale write: {0}")]
    Stale(String),
    /// The backend cannot serve the request right now.
    #[error("read model store unavailable: {0}")]
    Unavailable(String),
}

/// Check a document key: 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<(), ReadModelError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ReadModelError::Invalid(format!(
            "a document key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ReadModelError::Invalid(format!(
            "document key {key:?} contains control characters"
        )));
    }
    Ok(())
}

/// Check a document's size.
pub fn check_value(key: &str, value: &[u8]) -> Result<(), ReadModelError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ReadModelError::Invalid(format!(
            "document {key:?} is {} bytes, at most {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A read-model backend.
#[async_trait::async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// The document `key` of generation `generation` of `model`.
    async fn get(
        &self,
        model: &str,
        generation: u64,
        key: &str,
    ) -> Result<Option<Vec<u8>>, ReadModelError>;

    /// Up to `max` documents of generation `generation` of `model` whose
    /// keys start with `prefix`, in key order, after `start_after`.
    async fn scan(
        &self,
        model: &str,
        generation: u64,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Document>, ReadModelError>;

    /// Where `model`'s generations stand.
    async fn generations(&self, model: &str) -> Result<Generations, ReadModelError>;

    /// Apply `writes` to generation `generation` of `model` and set its
    /// checkpoint to `checkpoint`, in one durable transaction. Fails with
    /// [`ReadModelError::Stale`] if the generation is neither active nor
    /// being built, or if `checkpoint` is not past the stored one.
    async fn commit(
        &self,
        model: &str,
        generation: u64,
        writes: Vec<Write>,
        checkpoint: u64,
    ) -> Result<(), ReadModelError>;

    /// Start a new generation of `model` (empty, checkpoint 0), dropping an
    /// unfinished one; returns its number.
    async fn begin_rebuild(&self, model: &str) -> Result<u64, ReadModelError>;

    /// Make the generation being built the active one and drop the old one,
    /// atomically.
    async fn activate(&self, model: &str, generation: u64) -> Result<(), ReadModelError>;

    /// Prepare this process to write `model` (it has just become the
    /// model's writer, e.g. the leader of its projection): wait until
    /// [`ReadModels::generations`] reflects every operation any process
    /// stored so far, and take the model's latest operation as the point
    /// this writer's next write must follow (a shared backend refuses it
    /// with [`ReadModelError::Stale`] if another process wrote in between).
    /// The embedded store has nothing to do.
    async fn sync(&self, model: &str) -> Result<(), ReadModelError> {
        let _ = model;
        Ok(())
    }
}

/// The read models of this process: the backend and the names of the
/// models (one per `[[projections]]` entry).
pub struct ReadModelService {
    /// The backend.
    pub store: std::sync::Arc<dyn ReadModels>,
    /// Known model names.
    pub models: std::collections::BTreeSet<String>,
}

impl ReadModelService {
    /// Check that `model` is a known model.
    pub fn check_model(&self, model: &str) -> Result<(), ReadModelError> {
        if self.models.contains(model) {
            Ok(())
        } else {
            let known: Vec<&str> = self.models.iter().map(String::as_str).collect();
            Err(ReadModelError::Invalid(format!(
                "unknown read model {model:?} (known: {})",
                if known.is_empty() {
                    "none: no [[projections]] are configured".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
    }

    /// The active generation's document `key` of `model`.
    pub async fn get(&self, model: &str, key: &str) -> Result<Option<Vec<u8>>, ReadModelError> {
        self.check_model(model)?;
        check_key(key)?;
        let g = self.store.generations(model).await?;
        self.store.get(model, g.active, key).await
    }

    /// Up to `max` documents of the active generation of `model`.
    pub async fn scan(
        &self,
        model: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Document>, ReadModelError> {
        self.check_model(model)?;
        let g = self.store.generations(model).await?;
        self.store
            .scan(model, g.active, prefix, start_after, max.min(MAX_SCAN))
            .await
    }
}

#[cfg(test)]
mod tests;
