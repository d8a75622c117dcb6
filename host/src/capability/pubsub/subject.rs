//! Subjects, patterns and the checks `publish` applies to a message.
//!
//! The grammar and the matcher are shared with config validation
//! ([`ficus_config::subject`]); this module adds the message checks.

pub use ficus_config::subject::{check_pattern, check_subject, matches, MAX_SUBJECT_BYTES};

use super::{Header, PubSubError};

/// Size of a message as limited by `pubsub.max_message_bytes`: payload plus
/// header names and values.
pub fn message_size(payload: &[u8], headers: &[Header]) -> usize {
    payload.len()
        + headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

/// Check what a publisher hands in: a concrete subject, header names that
/// are tokens, and the size limit.
pub fn check_message(
    subject: &str,
    payload: &[u8],
    headers: &[Header],
    max_bytes: usize,
) -> Result<(), PubSubError> {
    check_subject(subject)
        .map_err(|e| PubSubError::Invalid(format!("subject {subject:?}: {e}")))?;
    for (name, value) in headers {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(PubSubError::Invalid(format!(
                "header name {name:?}: expected letters, digits, '-', '_' or '.'"
            )));
        }
        if value.contains(['\r', '\n', '\0']) {
            return Err(PubSubError::Invalid(format!(
                "header {name:?}: the value has a control character"
            )));
        }
    }
    if message_size(payload, headers) > max_bytes {
        return Err(PubSubError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_checks() {
        let h = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
        assert_eq!(check_message("a.b", b"x", &h("k", "v"), 10), Ok(()));
        assert!(matches!(
            check_message("a.*", b"x", &[], 10),
            Err(PubSubError::Invalid(m)) if m.contains("wildcard")
        ));
        assert!(matches!(
            check_message("a..b", b"x", &[], 10),
            Err(PubSubError::Invalid(_))
        ));
        assert!(matches!(
            check_message("a", b"x", &h("bad name", "v"), 10),
            Err(PubSubError::Invalid(m)) if m.contains("header name")
        ));
        assert!(matches!(
            check_message("a", b"x", &h("k", "a\nb"), 10),
            Err(PubSubError::Invalid(_))
        ));
        // 8 bytes of payload + 1 + 1 of header = 10: at the limit.
        assert_eq!(check_message("a", b"12345678", &h("k", "v"), 10), Ok(()));
        assert_eq!(
            check_message("a", b"123456789", &h("k", "v"), 10),
            Err(PubSubError::TooLarge)
        );
    }
}
