//! The embedded storage engine: [redb](https://docs.rs/redb), a pure-Rust,
//! crash-safe (copy-on-write B-trees, checksummed commits) key/value store.
//!
//! Each durable capability keeps its own database file under
//! `backend.data_dir` (e.g. `pubsub.redb`), opened with [`open`]. redb locks
//! the file for the life of the process, so two `ficus` processes that share
//! a data directory cannot corrupt each other's files: the second one gets
//! [`StorageError::Locked`].

use std::path::{Path, PathBuf};

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (most likely another `ficus`) has the file open.
    #[error("{} is locked: another ficus process is using it (processes sharing backend.data_dir cannot share its embedded databases, used by durable subscriptions and the event store; give each its own data_dir)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The directory or file could not be created or read.
    #[error("cannot open {}: {detail}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Open (creating it and its directory if needed) the database at `path`.
pub fn open(path: &Path) -> Result<redb::Database, StorageError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
                path: path.to_path_buf(),
                detail: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
    }
    match redb::Database::create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StorageError::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(StorageError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_file_is_refused_with_the_path() {
        let dir = std::env::temp_dir().join(format!("ficus-storage-{}", std::process::id()));
        let path = dir.join("sub").join("x.redb");
        let first = open(&path).expect("first open");
        let err = open(&path).expect_err("second open must fail");
        let text = err.to_string();
        assert!(matches!(err, StorageError::Locked { .. }), "{text}");
        assert!(
            text.contains("x.redb") && text.contains("another ficus process"),
            "{text}"
        );
        drop(first);
        open(&path).expect("open again after close");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
