//! AMQP URLs rewritten: user info percent-encoded and replaced, the port
//! read.

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://user:pass@rest` with new user info.
pub(super) fn replace_userinfo(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host_part = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!(
        "{scheme}://{}:{}@{host_part}",
        percent_encode(user),
        percent_encode(password)
    )
}

/// The port of an AMQP URL (5672 or 5671 by default).
pub(super) fn url_port(url: &str) -> u16 {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(if scheme == "amqps" { 5671 } else { 5672 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_for_other_users() {
        assert_eq!(
            replace_userinfo("amqp://guest:guest@broker:5673/%2f", "ops", "p@ss word"),
            "amqp://ops:p%40ss%20word@broker:5673/%2f"
        );
        assert_eq!(
            replace_userinfo("amqp://broker/vh", "a", "b"),
            "amqp://a:b@broker/vh"
        );
        assert_eq!(url_port("amqp://u:p@broker:5673/%2f"), 5673);
        assert_eq!(url_port("amqp://broker"), 5672);
        assert_eq!(url_port("amqps://broker/x"), 5671);
    }
}
