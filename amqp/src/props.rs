//! Conversion between lapin's `BasicProperties` and the protocol's
//! plain-data `AmqpProperties`.

use hostbus_protocol::{AmqpProperties, HeaderValue};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// A short string of at most 255 bytes: longer text is cut on a character
/// boundary. lapin panics on a longer one, and text read from the wire can
/// be longer than it was sent (bytes that are not UTF-8 are read as U+FFFD,
/// three bytes each), so nothing built from a received message may reach
/// lapin uncut.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

/// lapin properties from protocol properties. Strings longer than a short
/// string allows are cut ([`short`]); headers of [`HeaderValue::Other`]
/// types are left out.
pub fn to_lapin(p: &AmqpProperties) -> BasicProperties {
    let mut b = BasicProperties::default();
    // Each text property set only when present, cut to a short string.
    macro_rules! text {
        ($($field:ident => $with:ident),+) => {
            $(if let Some(v) = &p.$field {
                b = b.$with(short(v));
            })+
        };
    }
    text!(
        message_id => with_message_id,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        kind => with_type,
        content_type => with_content_type,
        expiration => with_expiration,
        user_id => with_user_id
    );
    if let Some(v) = p.timestamp {
        b = b.with_timestamp(v);
    }
    if let Some(v) = p.delivery_mode {
        b = b.with_delivery_mode(v);
    }
    if !p.headers.is_empty() {
        let mut t = FieldTable::default();
        for (k, v) in &p.headers {
            let v = match v {
                HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
                HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
                HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
                HeaderValue::Other(_) => continue,
            };
            t.insert(short(k), v);
        }
        b = b.with_headers(t);
    }
    b
}

fn header(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::LongString(s) => {
            HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::Float(_) => HeaderValue::Other("float".into()),
        AMQPValue::Double(_) => HeaderValue::Other("double".into()),
        AMQPValue::DecimalValue(_) => HeaderValue::Other("decimal".into()),
        AMQPValue::FieldArray(_) => HeaderValue::Other("array".into()),
        AMQPValue::FieldTable(_) => HeaderValue::Other("table".into()),
        AMQPValue::ByteArray(_) => HeaderValue::Other("byte array".into()),
        AMQPValue::Void => HeaderValue::Other("void".into()),
    }
}

/// Protocol properties from lapin properties; header values of types the
/// protocol does not read become [`HeaderValue::Other`].
pub fn from_lapin(b: &BasicProperties) -> AmqpProperties {
    let s = |v: &Option<ShortString>| v.as_ref().map(|x| x.as_str().to_owned());
    AmqpProperties {
        message_id: s(b.message_id()),
        correlation_id: s(b.correlation_id()),
        reply_to: s(b.reply_to()),
        kind: s(b.kind()),
        content_type: s(b.content_type()),
        timestamp: *b.timestamp(),
        expiration: s(b.expiration()),
        user_id: s(b.user_id()),
        delivery_mode: *b.delivery_mode(),
        headers: b
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), header(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostbus_protocol::names::DIRECT_REPLY_TO;
    use hostbus_protocol::{now_ms, Envelope};

    #[test]
    fn properties_survive_lapin_and_back() {
        let mut e = Envelope::new("vm.start");
        e.reply_to = Some(DIRECT_REPLY_TO.into());
        e.deadline = Some(now_ms() + 5_000);
        e.sender = Some("manager".into());
        e.asynchronous = true;
        let now = now_ms();
        e.sent_at = Some(now / 1000);
        let p = e.to_properties(now);
        let back = from_lapin(&to_lapin(&p));
        assert_eq!(back, p);
        assert_eq!(Envelope::from_properties(&back), Ok(e));
    }

    #[test]
    fn foreign_header_kinds_are_read() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongInt(7));
        table.insert("b".into(), AMQPValue::ShortString("x".into()));
        table.insert("c".into(), AMQPValue::Double(1.5));
        let p = from_lapin(&BasicProperties::default().with_headers(table));
        assert_eq!(p.headers.get("a"), Some(&HeaderValue::Int(7)));
        assert_eq!(p.headers.get("b"), Some(&HeaderValue::Str("x".into())));
        assert_eq!(
            p.headers.get("c"),
            Some(&HeaderValue::Other("double".into()))
        );
        // ... and are not written back.
        let back = to_lapin(&p);
        let headers = back.headers().as_ref().expect("headers");
        assert!(headers.inner().contains_key("a"));
        assert!(!headers.inner().contains_key("c"));
    }

    /// Issue 12: a version header of another type was dropped here and then
    /// refused as missing.
    #[test]
    fn a_version_header_of_the_wrong_type_is_refused_as_such() {
        let mut table = FieldTable::default();
        table.insert(
            hostbus_protocol::envelope::VERSION_HEADER.into(),
            AMQPValue::Double(1.0),
        );
        let props = BasicProperties::default()
            .with_message_id(uuid_like().as_str().into())
            .with_type("host.ping".into())
            .with_headers(table);
        let err = Envelope::from_properties(&from_lapin(&props)).expect_err("refused");
        assert_eq!(err.param("property"), Some("x-hostbus-version"));
        assert_eq!(err.param("reason"), Some("is not `<major>.<minor>`"));
    }

    fn uuid_like() -> String {
        "6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001".to_owned()
    }

    #[test]
    fn long_text_from_the_wire_is_cut_not_a_panic() {
        let long = "\u{fffd}".repeat(200); // 600 bytes
        let p = AmqpProperties {
            message_id: Some(long.clone()),
            kind: Some(long.clone()),
            headers: [(long.clone(), HeaderValue::Int(1))].into_iter().collect(),
            ..AmqpProperties::default()
        };
        let b = to_lapin(&p);
        let id = b.message_id().as_ref().expect("message id");
        assert_eq!(id.as_str().len(), 255);
        assert!(id.as_str().chars().all(|c| c == '\u{fffd}'));
    }
}
