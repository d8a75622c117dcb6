//! Pub/sub subjects and subscription patterns (NATS style).
//!
//! A *subject* is one or more dot-separated tokens of `[A-Za-z0-9_-]`, e.g. `orders.placed`.
//! A *pattern* is a subject in which a token may also be `*` (exactly one token) or, as the last
//! token only, `>` (one or more trailing tokens): `orders.*` matches `orders.placed` but not
//! `orders.eu.placed`; `orders.>` matches both, but not `orders`.
//!
//! The grammar lives here so that configuration validation and the host's broker agree on it.

/// Maximum length of a subject or pattern, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

fn check_token(token: &str, index: usize) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("token {} is empty", index + 1));
    }
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "token {} ({token:?}) has {c:?}: tokens are letters, digits, '_' or '-'",
            index + 1
        ));
    }
    Ok(())
}

fn check_length(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > MAX_SUBJECT_BYTES {
        return Err(format!(
            "is {} bytes long (at most {MAX_SUBJECT_BYTES})",
            text.len()
        ));
    }
    Ok(())
}

/// Checks a concrete subject (what `publish` takes): no wildcards.
pub fn check_subject(subject: &str) -> Result<(), String> {
    check_length(subject)?;
    for (i, token) in subject.split('.').enumerate() {
        if token == "*" || token == ">" {
            return Err(format!(
                "wildcard {token:?} (token {}) is only allowed in subscription patterns",
                i + 1
            ));
        }
        check_token(token, i)?;
    }
    Ok(())
}

/// Checks a subscription pattern: a subject whose tokens may be `*`, and whose last token may
/// be `>`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    check_length(pattern)?;
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        match *token {
            "*" => {}
            ">" if i + 1 == tokens.len() => {}
            ">" => {
                return Err(format!(
                    "'>' (token {}) must be the last token (it matches every remaining token)",
                    i + 1
                ))
            }
            _ => check_token(token, i)?,
        }
    }
    Ok(())
}

/// Whether `subject` matches `pattern`. Both are assumed valid (see [`check_pattern`] and
/// [`check_subject`]).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(check_subject("orders.placed").is_ok());
        assert!(check_subject("a-b_c.D9").is_ok());
        assert!(check_subject("").unwrap_err().contains("empty"));
        assert!(check_subject("orders..x").unwrap_err().contains("token 2"));
        assert!(check_subject("orders.*").unwrap_err().contains("wildcard"));
        assert!(check_subject("orders.>").unwrap_err().contains("wildcard"));
        assert!(check_subject("a b").unwrap_err().contains("' '"));
        assert!(check_subject(".a").is_err());
        assert!(check_subject("a.").is_err());
        assert!(check_subject(&"a".repeat(300)).unwrap_err().contains("256"));
    }

    #[test]
    fn patterns() {
        assert!(check_pattern("orders.*").is_ok());
        assert!(check_pattern("orders.>").is_ok());
        assert!(check_pattern(">").is_ok());
        assert!(check_pattern("*.*.x").is_ok());
        assert!(check_pattern("orders.>.x").unwrap_err().contains("last"));
        assert!(check_pattern("orders.*x").is_err());
        assert!(check_pattern("orders.").is_err());
    }

    #[test]
    fn matching() {
        assert!(matches("orders.*", "orders.placed"));
        assert!(!matches("orders.*", "orders.eu.placed"));
        assert!(!matches("orders.*", "orders"));
        assert!(matches("orders.>", "orders.placed"));
        assert!(matches("orders.>", "orders.eu.placed"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches(">", "x"));
        assert!(matches("*.placed", "orders.placed"));
        assert!(!matches("*.placed", "orders.shipped"));
        assert!(matches("orders.placed", "orders.placed"));
        assert!(!matches("orders.placed", "orders.placed.x"));
        assert!(!matches("orders.placed.x", "orders.placed"));
    }
}
