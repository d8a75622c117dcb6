//! Configuration errors: each one says where (file, line, column, key path) and what was
//! expected.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
///
/// Displayed as `file:line:column: key_path: message`; parts that are unknown or empty (line
/// and column, an empty key path, an empty file name) are left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Render(self))]
pub struct ConfigError {
    /// The configuration file (as given to [`crate::load`] or [`crate::parse_str`]).
    pub file: PathBuf,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending key or value, when known.
    pub column: Option<usize>,
    /// Where in the configuration, e.g. `routes[2].pipeline[0].plugin`, `server.listen`;
    /// empty for problems with the whole file (unreadable, syntax error before any key).
    pub key_path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error with no known position.
    pub fn new(file: &Path, key_path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

/// Display helper for [`ConfigError`].
struct Render<'a>(&'a ConfigError);

impl fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let mut located = false;
        if !e.file.as_os_str().is_empty() {
            write!(f, "{}", e.file.display())?;
            located = true;
        }
        if let Some(line) = e.line {
            if located {
                f.write_str(":")?;
            }
            write!(f, "{line}")?;
            if let Some(column) = e.column {
                write!(f, ":{column}")?;
            }
            located = true;
        }
        if located {
            f.write_str(": ")?;
        }
        if !e.key_path.is_empty() {
            write!(f, "{}: ", e.key_path)?;
        }
        f.write_str(&e.message)
    }
}

/// Every problem found in a configuration, in the order of the file where possible.
///
/// Displayed as one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in report order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no errors (never the case for one returned by this crate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Display helper for [`ConfigErrors`].
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
