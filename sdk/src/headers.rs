//! Header and path helpers on the [`Request`] and [`Response`] handles, and
//! the pure validators behind them.

use crate::{HeaderError, Request, Response};

/// Whether `name` is a valid HTTP header name (an RFC 9110 `token`: ASCII
/// letters, digits and ``!#$%&'*+-.^_`|~``, at least one character).
///
/// The host refuses invalid names with [`HeaderError::InvalidName`]; checking
/// them in `configure` turns a per-request error into a config error.
///
/// ```
/// assert!(ficus_sdk::is_valid_header_name("x-request-id"));
/// assert!(!ficus_sdk::is_valid_header_name("bad header"));
/// ```
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether `value` is a valid HTTP header value: visible ASCII, spaces, tabs
/// and bytes 0x80..=0xFF; no control characters (in particular no CR or LF)
/// and no DEL.
///
/// ```
/// assert!(ficus_sdk::is_valid_header_value(b"text/plain; charset=utf-8"));
/// assert!(!ficus_sdk::is_valid_header_value(b"a\r\nb"));
/// ```
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Split a `path-with-query` into the path and the query (without `?`).
///
/// ```
/// assert_eq!(ficus_sdk::split_path_query("/a/b?x=1"), ("/a/b", Some("x=1")));
/// assert_eq!(ficus_sdk::split_path_query("/a"), ("/a", None));
/// ```
pub fn split_path_query(path_with_query: &str) -> (&str, Option<&str>) {
    match path_with_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_with_query, None),
    }
}

fn lossy(value: Vec<u8>) -> String {
    match String::from_utf8(value) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

macro_rules! header_helpers {
    ($handle:ident) => {
        /// Text helpers over the generated header methods (`header`,
        /// `set-header`, ...). Each costs one host call.
        impl $handle {
            /// The first value of a header as text, if present (name is
            /// case-insensitive). Bytes that are not UTF-8 are replaced with
            /// U+FFFD; use `header` for the raw bytes.
            pub fn header_str(&self, name: &str) -> Option<String> {
                self.header(name).map(lossy)
            }

            /// All values of a header as text, in order (non-UTF-8 bytes are
            /// replaced with U+FFFD).
            pub fn header_all_str(&self, name: &str) -> Vec<String> {
                self.header_all(name).into_iter().map(lossy).collect()
            }

            /// Whether the header is present.
            pub fn has_header(&self, name: &str) -> bool {
                self.header(name).is_some()
            }

            /// Replace all values of a header with one text value.
            ///
            /// # Errors
            ///
            /// [`HeaderError::InvalidName`] or [`HeaderError::InvalidValue`]
            /// when the name or value is not valid HTTP (see
            /// [`is_valid_header_name`] and [`is_valid_header_value`]),
            /// [`HeaderError::Forbidden`] for headers the host manages
            /// (hop-by-hop headers and `content-length`).
            pub fn set_header_str(&self, name: &str, value: &str) -> Result<(), HeaderError> {
                self.set_header(name, value.as_bytes())
            }

            /// Add a text value to a header, keeping existing ones.
            ///
            /// # Errors
            ///
            /// As for `set_header_str`.
            pub fn append_header_str(&self, name: &str, value: &str) -> Result<(), HeaderError> {
                self.append_header(name, value.as_bytes())
            }
        }
    };
}

header_helpers!(Request);
header_helpers!(Response);

/// Path helpers.
impl Request {
    /// The path without the query, e.g. `/orders/7` for `/orders/7?x=1`.
    pub fn path(&self) -> String {
        let full = self.path_with_query();
        split_path_query(&full).0.to_string()
    }

    /// The query without `?`, if the request has one.
    pub fn query(&self) -> Option<String> {
        let full = self.path_with_query();
        split_path_query(&full).1.map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        for ok in ["x-a", "X-Request-Id", "a", "!#$%&'*+-.^_`|~09az"] {
            assert!(is_valid_header_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "é", "a\n", "(x)", "a/b", "x\"", "a,b"] {
            assert!(!is_valid_header_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn header_values() {
        assert!(is_valid_header_value(b""));
        assert!(is_valid_header_value(b"a b\tc"));
        assert!(is_valid_header_value("caf\u{e9}".as_bytes()));
        assert!(!is_valid_header_value(b"a\rb"));
        assert!(!is_valid_header_value(b"a\nb"));
        assert!(!is_valid_header_value(b"a\0b"));
        assert!(!is_valid_header_value(b"a\x7fb"));
    }

    #[test]
    fn path_and_query() {
        assert_eq!(split_path_query("/"), ("/", None));
        assert_eq!(split_path_query("/a?"), ("/a", Some("")));
        assert_eq!(split_path_query("/a?b=1?c"), ("/a", Some("b=1?c")));
    }

    #[test]
    fn lossy_text() {
        assert_eq!(lossy(b"plain".to_vec()), "plain");
        assert_eq!(lossy(vec![b'a', 0xff, b'b']), "a\u{fffd}b");
    }
}
