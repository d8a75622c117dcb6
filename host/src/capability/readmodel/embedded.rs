//! The embedded read-model store, on redb (`<data_dir>/readmodels.redb`).
//!
//! Tables: `docs` ((model, generation, key) → bytes), `generations` (model →
//! (active, building; 0 for none)) and `checkpoints` ((model, generation) →
//! global position). A commit writes a batch's documents and the
//! checkpoint in one write transaction (fsynced when it returns).

use super::{
    check_key, check_value, Document, Generations, ReadModelError, ReadModels, Write, MAX_SCAN,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

type DocKey<'a> = (&'a str, u64, &'a str);
const DOCS: TableDefinition<'_, DocKey<'_>, &[u8]> = TableDefinition::new("docs");
const GENERATIONS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("generations");
const CHECKPOINTS: TableDefinition<'_, (&str, u64), u64> = TableDefinition::new("checkpoints");

/// The embedded read-model store.
pub struct EmbeddedReadModels {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Unavailable(e.to_string())
}

impl EmbeddedReadModels {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, crate::storage::StorageError> {
        let db = crate::storage::open(path)?;
        let init = || -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(DOCS)?;
            tx.open_table(GENERATIONS)?;
            tx.open_table(CHECKPOINTS)?;
            tx.commit()?;
            Ok(())
        };
        init().map_err(|e| crate::storage::StorageError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(EmbeddedReadModels { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ReadModelError> + Send + 'static,
    ) -> Result<T, ReadModelError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

fn generations_in(
    gens: &impl ReadableTable<&'static str, (u64, u64)>,
    checkpoints: &impl ReadableTable<(&'static str, u64), u64>,
    model: &str,
) -> Result<Generations, ReadModelError> {
    let (active, building) = gens
        .get(model)
        .map_err(unavailable)?
        .map_or((1, 0), |g| g.value());
    let checkpoint = |g: u64| -> Result<u64, ReadModelError> {
        Ok(checkpoints
            .get((model, g))
            .map_err(unavailable)?
            .map_or(0, |c| c.value()))
    };
    Ok(Generations {
        active,
        checkpoint: checkpoint(active)?,
        building: if building == 0 {
            None
        } else {
            Some((building, checkpoint(building)?))
        },
    })
}

fn drop_generation(
    docs: &mut redb::Table<'_, DocKey<'static>, &'static [u8]>,
    checkpoints: &mut redb::Table<'_, (&'static str, u64), u64>,
    model: &str,
    generation: u64,
) -> Result<(), ReadModelError> {
    docs.retain_in(
        (model, generation, "")..(model, generation + 1, ""),
        |_, _| false,
    )
    .map_err(unavailable)?;
    checkpoints
        .remove((model, generation))
        .map_err(unavailable)?;
    Ok(())
}

#[async_trait::async_trait]
impl ReadModels for EmbeddedReadModels {
    async fn get(
        &self,
        model: &str,
        generation: u64,
        key: &str,
    ) -> Result<Option<Vec<u8>>, ReadModelError> {
        check_key(key)?;
        let tx = self.db.begin_read().map_err(unavailable)?;
        let docs = tx.open_table(DOCS).map_err(unavailable)?;
        Ok(docs
            .get((model, generation, key))
            .map_err(unavailable)?
            .map(|v| v.value().to_vec()))
    }

    async fn scan(
        &self,
        model: &str,
        generation: u64,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Document>, ReadModelError> {
        let max = max.min(MAX_SCAN);
        let tx = self.db.begin_read().map_err(unavailable)?;
        let docs = tx.open_table(DOCS).map_err(unavailable)?;
        let start = match start_after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let mut out = Vec::new();
        let range = docs
            .range((model, generation, start)..(model, generation + 1, ""))
            .map_err(unavailable)?;
        for item in range {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(unavailable)?;
            let key = k.value().2;
            if start_after.is_some_and(|a| key <= a) {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            out.push(Document {
                key: key.to_owned(),
                value: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    async fn generations(&self, model: &str) -> Result<Generations, ReadModelError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let gens = tx.open_table(GENERATIONS).map_err(unavailable)?;
        let checkpoints = tx.open_table(CHECKPOINTS).map_err(unavailable)?;
        generations_in(&gens, &checkpoints, model)
    }

    async fn commit(
        &self,
        model: &str,
        generation: u64,
        writes: Vec<Write>,
        checkpoint: u64,
    ) -> Result<(), ReadModelError> {
        for (key, value) in &writes {
            check_key(key)?;
            if let Some(v) = value {
                check_value(key, v)?;
            }
        }
        let model = model.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let gens = tx.open_table(GENERATIONS).map_err(unavailable)?;
                let mut checkpoints = tx.open_table(CHECKPOINTS).map_err(unavailable)?;
                let g = generations_in(&gens, &checkpoints, &model)?;
                let current = if g.active == generation {
                    g.checkpoint
                } else if let Some((b, c)) = g.building.filter(|(b, _)| *b == generation) {
                    let _ = b;
                    c
                } else {
                    return Err(ReadModelError::Stale(format!(
                        "generation {generation} of read model {model:?} is no longer written \
                         (active {}, building {:?})",
                        g.active,
                        g.building.map(|b| b.0)
                    )));
                };
                if checkpoint <= current {
                    return Err(ReadModelError::Stale(format!(
                        "checkpoint {checkpoint} of read model {model:?} generation \
                         {generation} is not past the stored {current}"
                    )));
                }
                let mut docs = tx.open_table(DOCS).map_err(unavailable)?;
                for (key, value) in &writes {
                    match value {
                        Some(v) => {
                            docs.insert((model.as_str(), generation, key.as_str()), v.as_slice())
                                .map_err(unavailable)?;
                        }
                        None => {
                            docs.remove((model.as_str(), generation, key.as_str()))
                                .map_err(unavailable)?;
                        }
                    }
                }
                checkpoints
                    .insert((model.as_str(), generation), checkpoint)
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn begin_rebuild(&self, model: &str) -> Result<u64, ReadModelError> {
        let model = model.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let next;
            {
                let mut gens = tx.open_table(GENERATIONS).map_err(unavailable)?;
                let mut checkpoints = tx.open_table(CHECKPOINTS).map_err(unavailable)?;
                let mut docs = tx.open_table(DOCS).map_err(unavailable)?;
                let g = generations_in(&gens, &checkpoints, &model)?;
                if let Some((b, _)) = g.building {
                    drop_generation(&mut docs, &mut checkpoints, &model, b)?;
                }
                next = g.active.max(g.building.map_or(0, |b| b.0)) + 1;
                gens.insert(model.as_str(), (g.active, next))
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(next)
        })
        .await
    }

    async fn activate(&self, model: &str, generation: u64) -> Result<(), ReadModelError> {
        let model = model.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut gens = tx.open_table(GENERATIONS).map_err(unavailable)?;
                let mut checkpoints = tx.open_table(CHECKPOINTS).map_err(unavailable)?;
                let mut docs = tx.open_table(DOCS).map_err(unavailable)?;
                let g = generations_in(&gens, &checkpoints, &model)?;
                if g.building.map(|b| b.0) != Some(generation) {
                    return Err(ReadModelError::Stale(format!(
                        "generation {generation} of read model {model:?} is not being built"
                    )));
                }
                drop_generation(&mut docs, &mut checkpoints, &model, g.active)?;
                gens.insert(model.as_str(), (generation, 0))
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }
}
