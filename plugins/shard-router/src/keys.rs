//! Extracting a shard key from parts of a request: cookies, query
//! parameters, path segments, the client address. Pure `std`, no Wasm
//! imports (compiled natively by the end-to-end suite too).

/// The value of cookie `name` in `cookie` header values (`a=1; b=2`; HTTP/2
/// may split cookies over several header values). Names match exactly;
/// surrounding double quotes are removed from the value. Empty values count
/// as absent.
pub(crate) fn cookie<'a>(values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .filter(|v| !v.is_empty())
}

/// The value of the first query parameter `name` in a query string (without
/// `?`), as written in the URL (not percent-decoded). Empty values count as
/// absent.
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Path segment `index` (0-based, empty segments skipped) of a path without
/// its query: segment 1 of `/users/42/orders` is `42`.
pub(crate) fn path_segment(path: &str, index: usize) -> Option<&str> {
    path.split('/').filter(|s| !s.is_empty()).nth(index)
}

/// The IP of a client address `ip:port` or `[v6]:port` (a bare address is
/// returned as is).
pub(crate) fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match addr.rsplit_once(':') {
        // One colon: IPv4 with a port. More: a bare IPv6 address.
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

/// Percent-decode `%XX` escapes (invalid escapes are kept as written; the
/// result is UTF-8 with invalid sequences replaced).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Trimmed, non-empty text of a header value.
pub(crate) fn header_text(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let values = ["a=1; uid=alice ; c=3", "uid=bob"];
        assert_eq!(cookie(values, "uid"), Some("alice"));
        assert_eq!(cookie(["x=1", "uid=\"carol\""], "uid"), Some("carol"));
        assert_eq!(cookie(["uid="], "uid"), None);
        assert_eq!(cookie(["UID=dan"], "uid"), None);
        assert_eq!(cookie(["nouid=1;uidx=2"], "uid"), None);
        assert_eq!(cookie(["a=1;;  ;uid=eve=x"], "uid"), Some("eve=x"));
        assert_eq!(cookie(Vec::<&str>::new(), "uid"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("user=7&x=1", "user"), Some("7"));
        assert_eq!(query_param("x=1&user=a%20b&user=8", "user"), Some("a%20b"));
        assert_eq!(query_param("user&x=1", "user"), None);
        assert_eq!(query_param("username=1", "user"), None);
        assert_eq!(query_param("", "user"), None);
    }

    #[test]
    fn path_segments() {
        assert_eq!(path_segment("/users/42/orders", 0), Some("users"));
        assert_eq!(path_segment("/users/42/orders", 1), Some("42"));
        assert_eq!(path_segment("//users//42/", 1), Some("42"));
        assert_eq!(path_segment("/users", 1), None);
        assert_eq!(path_segment("/", 0), None);
    }

    #[test]
    fn client_ips() {
        assert_eq!(client_ip("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(client_ip("[::1]:443"), "::1");
        assert_eq!(client_ip("::1"), "::1");
        assert_eq!(client_ip("10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("caf%C3%A9"), "caf\u{e9}");
    }

    #[test]
    fn header_values() {
        assert_eq!(header_text("  alice "), Some("alice"));
        assert_eq!(header_text("   "), None);
    }
}
