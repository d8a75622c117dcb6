//! Helpers shared by the config test files (`mod common;`): parse TOML text as if read from
//! `conf/gateway.toml`, and check a located error.

#![allow(dead_code)]

use std::path::Path;

use ficus_config::{parse_str, Config, ConfigError};

pub(crate) const FILE: &str = "conf/gateway.toml";

pub(crate) fn parse(text: &str) -> Config {
    parse_str(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub(crate) fn errors(text: &str) -> Vec<ConfigError> {
    match parse_str(text, Path::new(FILE)) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0,
    }
}

#[track_caller]
pub(crate) fn assert_error(e: &ConfigError, key_path: &str, line: usize, message: &str) {
    assert_eq!(e.key_path, key_path, "key path of {e}");
    assert_eq!(e.line, Some(line), "line of {e}");
    assert!(
        e.message.contains(message),
        "message of {e}\n  expected to contain: {message}"
    );
}
