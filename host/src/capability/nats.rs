//! Connecting to NATS: the one place where the client options shared by every
//! NATS-backed part of the gateway (event store, read models, pub/sub, leader
//! election, the admin report) are set.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a connection attempt, and a request on the connection, may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why no NATS connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {error}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// A server address is malformed, or no server could be reached.
    #[error("cannot connect to NATS at {servers}: {error}")]
    Connect {
        /// The servers tried (or the malformed one).
        servers: String,
        /// Why.
        error: String,
    },
}

/// Check the options every JetStream-backed store shares: at least one
/// server, 1 to 5 replicas, and a stream name JetStream accepts. The error
/// is the message for the user.
pub fn check_stream_options(
    servers: &[String],
    replicas: usize,
    stream: &str,
) -> Result<(), String> {
    if servers.is_empty() {
        return Err("no NATS servers given".into());
    }
    if !(1..=5).contains(&replicas) {
        return Err(format!("replicas must be 1 to 5, got {replicas}"));
    }
    if stream.is_empty()
        || stream
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
    {
        return Err(format!(
            "JetStream stream name {stream:?} must be non-empty without `.`, `*`, `>` or whitespace"
        ));
    }
    Ok(())
}

/// When the first connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// Now: an unreachable server set is an error.
    Required,
    /// In the background, retrying: the client is returned at once (for
    /// reports that must not block the gateway's start).
    InBackground,
}

/// Connect to `servers` as the client `name` (shown by the server's
/// monitoring), with the credentials file if any.
pub async fn connect(
    name: &str,
    servers: &[String],
    credentials: Option<&Path>,
    initial: Initial,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(TIMEOUT)
        .request_timeout(Some(TIMEOUT));
    if initial == Initial::InBackground {
        options = options.retry_on_initial_connect();
    }
    if let Some(path) = credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| ConnectError::Credentials {
                path: path.to_path_buf(),
                error: e.to_string(),
            })?;
    }
    let mut addrs = Vec::with_capacity(servers.len());
    for s in servers {
        addrs.push(
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConnectError::Connect {
                    servers: s.clone(),
                    error: e.to_string(),
                })?,
        );
    }
    options
        .connect(addrs)
        .await
        .map_err(|e| ConnectError::Connect {
            servers: servers.join(", "),
            error: e.to_string(),
        })
}
