//! Typed per-route configuration.

use serde::de::DeserializeOwned;

/// Deserialize a filter's per-route config (the JSON text passed to
/// [`Filter::configure`](crate::Filter::configure)) into `T`.
///
/// Empty or all-whitespace text is read as `{}`. On failure the message names
/// the key path of the offending value, e.g.
/// ``config.request.set.x-id: invalid type: integer `1`, expected a string``,
/// so it can be returned from `configure` as is. Use
/// `#[serde(deny_unknown_fields)]` on your config structs to reject
/// misspelt keys.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Config {
///     #[serde(default)]
///     retries: u32,
/// }
///
/// let config: Config = ficus_sdk::config(r#"{"retries": 2}"#).unwrap();
/// assert_eq!(config.retries, 2);
///
/// let err = ficus_sdk::config::<Config>(r#"{"retries": -1}"#).err().unwrap();
/// assert!(err.starts_with("config.retries: "), "{err}");
/// ```
pub fn config<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let mut de = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = describe(err.inner());
        if path == "." || path == "?" {
            format!("config: {message}")
        } else {
            format!("config.{path}: {message}")
        }
    })?;
    de.end().map_err(|err| format!("config: {err}"))?;
    Ok(value)
}

/// The error message; for data errors (wrong type, unknown key) without the
/// JSON line and column, which mean nothing to someone who wrote the config
/// in TOML: the key path says where the error is.
fn describe(err: &serde_json::Error) -> String {
    let message = err.to_string();
    if err.classify() != serde_json::error::Category::Data {
        return message;
    }
    let position = format!(" at line {} column {}", err.line(), err.column());
    match message.strip_suffix(&position) {
        Some(stripped) => stripped.to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::config;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Edits {
        #[serde(default)]
        set: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        request: Option<Edits>,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn empty_text_is_an_empty_object() {
        let c: Conf = config("").unwrap();
        assert_eq!(
            c,
            Conf {
                request: None,
                limit: 0
            }
        );
        let c: Conf = config("  \n").unwrap();
        assert_eq!(c.limit, 0);
    }

    #[test]
    fn parses_nested_values() {
        let c: Conf = config(r#"{"request":{"set":{"x-a":"1"}},"limit":3}"#).unwrap();
        assert_eq!(c.limit, 3);
        assert_eq!(c.request.unwrap().set["x-a"], "1");
    }

    #[test]
    fn error_names_the_key_path() {
        let err = config::<Conf>(r#"{"request":{"set":{"x-a":1}}}"#).unwrap_err();
        assert!(
            err.starts_with("config.request.set.x-a: invalid type: integer `1`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = config::<Conf>(r#"{"request":{"sett":{}}}"#).unwrap_err();
        assert_eq!(
            err,
            "config.request.sett: unknown field `sett`, expected `set`"
        );
    }

    #[test]
    fn root_errors_and_trailing_text() {
        let err = config::<Conf>("true").unwrap_err();
        assert!(err.starts_with("config: invalid type"), "{err}");
        let err = config::<Conf>("{} x").unwrap_err();
        assert!(err.starts_with("config: trailing characters"), "{err}");
        let err = config::<Conf>("{").unwrap_err();
        assert_eq!(
            err,
            "config: EOF while parsing an object at line 1 column 1"
        );
    }
}
