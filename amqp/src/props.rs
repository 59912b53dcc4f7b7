//! Conversion between lapin's `BasicProperties` and the protocol's
//! plain-data `AmqpProperties`.

use hostbus_protocol::{AmqpProperties, HeaderValue};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// lapin properties from protocol properties.
pub fn to_lapin(p: &AmqpProperties) -> BasicProperties {
    let mut b = BasicProperties::default();
    if let Some(v) = &p.message_id {
        b = b.with_message_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.correlation_id {
        b = b.with_correlation_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.reply_to {
        b = b.with_reply_to(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.kind {
        b = b.with_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.content_type {
        b = b.with_content_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = p.timestamp {
        b = b.with_timestamp(v);
    }
    if let Some(v) = &p.expiration {
        b = b.with_expiration(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.user_id {
        b = b.with_user_id(ShortString::from(v.as_str()));
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
            };
            t.insert(ShortString::from(k.as_str()), v);
        }
        b = b.with_headers(t);
    }
    b
}

fn header(v: &AMQPValue) -> Option<HeaderValue> {
    Some(match v {
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
        _ => return None,
    })
}

/// Protocol properties from lapin properties; header values of other types are dropped.
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
                    .filter_map(|(k, v)| header(v).map(|h| (k.as_str().to_owned(), h)))
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
        assert!(!p.headers.contains_key("c"));
    }
}
