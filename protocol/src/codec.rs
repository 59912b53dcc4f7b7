//! Encodings: MessagePack with named fields (the default) and JSON, chosen by
//! the AMQP `content_type`, with a size limit applied before decoding.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorCode};

mod maps_only;
use maps_only::MapsOnly;
#[cfg(test)]
mod prescan_tests;

/// Largest payload a peer accepts by default: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Content type string of MessagePack payloads.
pub const MSGPACK: &str = "application/msgpack";
/// Content type string of JSON payloads.
pub const JSON: &str = "application/json";

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentType {
    /// MessagePack, structs as maps with field names (never arrays).
    #[default]
    MsgPack,
    /// JSON (UTF-8).
    Json,
}

impl ContentType {
    /// The `content_type` property value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::MsgPack => MSGPACK,
            ContentType::Json => JSON,
        }
    }

    /// Parses a `content_type` property. An absent property means MessagePack;
    /// parameters such as `; charset=utf-8` are ignored.
    pub fn parse(value: Option<&str>) -> Result<Self, CodecError> {
        let Some(raw) = value else {
            return Ok(ContentType::MsgPack);
        };
        let essence = raw.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "" | MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(ContentType::MsgPack)
            }
            JSON => Ok(ContentType::Json),
            _ => Err(CodecError::UnsupportedContentType(raw.to_owned())),
        }
    }
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than allowed.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid message of the expected type.
    #[error("cannot decode payload: {0}")]
    Malformed(String),
    /// The value could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(String),
    /// The content type is not spoken here.
    #[error("unsupported content type `{0}`")]
    UnsupportedContentType(String),
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        let message = e.to_string();
        match e {
            CodecError::TooLarge { size, limit } => Error::new(
                ErrorCode::PayloadTooLarge,
                [("size", size.to_string()), ("limit", limit.to_string())],
                message,
            ),
            CodecError::Malformed(reason) => {
                Error::new(ErrorCode::MalformedMessage, [("reason", reason)], message)
            }
            CodecError::Encode(reason) => Error::internal(reason),
            CodecError::UnsupportedContentType(ct) => Error::new(
                ErrorCode::UnsupportedContentType,
                [("content_type", ct)],
                message,
            ),
        }
    }
}

/// Encodes a value. MessagePack structs are written as maps with field
/// names; UUIDs are strings in both encodings.
pub fn encode<T: Serialize + ?Sized>(ct: ContentType, value: &T) -> Result<Vec<u8>, CodecError> {
    match ct {
        ContentType::MsgPack => {
            // Named fields, and the human-readable forms of types that have
            // one (UUIDs as their 36-character strings, not 16 raw bytes), so
            // both encodings carry the same values.
            let mut buf = Vec::new();
            let mut ser = rmp_serde::Serializer::new(&mut buf)
                .with_struct_map()
                .with_human_readable();
            value
                .serialize(&mut ser)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            Ok(buf)
        }
        ContentType::Json => {
            serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
        }
    }
}

/// Decodes a value, refusing payloads over `limit` bytes before looking at them
/// and arrays where a struct is expected (structs are maps, never positional
/// arrays). Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(
    ct: ContentType,
    bytes: &[u8],
    limit: usize,
) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    match ct {
        ContentType::MsgPack => {
            match msgpack_value_len(bytes) {
                Some(n) if n == bytes.len() => {}
                Some(n) => {
                    return Err(CodecError::Malformed(format!(
                        "{} trailing bytes after the message",
                        bytes.len() - n
                    )))
                }
                None => {
                    return Err(CodecError::Malformed(
                        "truncated or invalid MessagePack".to_owned(),
                    ))
                }
            }
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
            T::deserialize(MapsOnly(&mut de)).map_err(|e| CodecError::Malformed(e.to_string()))
        }
        ContentType::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            T::deserialize(MapsOnly(&mut de))
                .and_then(|value| de.end().map(|()| value))
                .map_err(|e| CodecError::Malformed(e.to_string()))
        }
    }
}

/// Length in bytes of the first complete MessagePack value in `buf`, or
/// `None` when it is truncated or uses the reserved marker. Iterative, so
/// hostile nesting cannot exhaust the stack; every step consumes a byte.
fn msgpack_value_len(buf: &[u8]) -> Option<usize> {
    /// The `n`-byte (1, 2 or 4) big-endian unsigned integer at `pos`.
    fn be(buf: &[u8], pos: usize, n: usize) -> Option<u64> {
        let bytes = buf.get(pos..pos.checked_add(n)?)?;
        let mut word = [0u8; 8];
        word.get_mut(8 - n..)?.copy_from_slice(bytes);
        Some(u64::from_be_bytes(word))
    }
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let m = *buf.get(pos)?;
        pos += 1;
        // (bytes of length field, extra fixed bytes, payload bytes, children)
        let skip: u64 = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => {
                pending += 2 * u64::from(m & 0x0f);
                0
            }
            0x90..=0x9f => {
                pending += u64::from(m & 0x0f);
                0
            }
            0xa0..=0xbf => u64::from(m & 0x1f),
            0xc4 | 0xd9 => 1 + be(buf, pos, 1)?,
            0xc5 | 0xda => 2 + be(buf, pos, 2)?,
            0xc6 | 0xdb => 4 + be(buf, pos, 4)?,
            0xc7 => 2 + be(buf, pos, 1)?,
            0xc8 => 3 + be(buf, pos, 2)?,
            0xc9 => 5 + be(buf, pos, 4)?,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xca | 0xce | 0xd2 => 4,
            0xcb | 0xcf | 0xd3 => 8,
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xdc => {
                pending += be(buf, pos, 2)?;
                2
            }
            0xdd => {
                pending += be(buf, pos, 4)?;
                4
            }
            0xde => {
                pending += 2 * be(buf, pos, 2)?;
                2
            }
            0xdf => {
                pending += 2 * be(buf, pos, 4)?;
                4
            }
            0xc1 => return None,
        };
        pos = pos.checked_add(usize::try_from(skip).ok()?)?;
        if pos > buf.len() {
            return None;
        }
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Empty, Ping, Pong, VmDefineRequest, VmStartRequest};
    use crate::reply::Reply;
    use crate::types::DiskSpec;

    /// `json` as JSON text and as MessagePack (maps with names, arrays).
    fn both(json: &str) -> [(ContentType, Vec<u8>); 2] {
        let value: serde_json::Value = serde_json::from_str(json).expect("test json");
        let msgpack = rmp_serde::to_vec(&value).expect("test msgpack");
        [
            (ContentType::Json, json.as_bytes().to_vec()),
            (ContentType::MsgPack, msgpack),
        ]
    }

    /// Decodes `json` in both encodings as `T`: `Ok` when both decode.
    fn decode_both<T: DeserializeOwned>(json: &str) -> Result<(), String> {
        for (ct, bytes) in both(json) {
            decode::<T>(ct, &bytes, DEFAULT_MAX_PAYLOAD)
                .map_err(|e| format!("{ct:?}: {}", Error::from(e).message))?;
        }
        Ok(())
    }

    /// `json` is refused in both encodings with `MALFORMED_MESSAGE`, whose
    /// reason says a map was expected.
    fn refused_as_positional<T: DeserializeOwned + std::fmt::Debug>(json: &str) {
        for (ct, bytes) in both(json) {
            let e: Error = decode::<T>(ct, &bytes, DEFAULT_MAX_PAYLOAD)
                .map(|v| panic!("{ct:?} {json} decoded as {v:?}"))
                .unwrap_err()
                .into();
            assert_eq!(e.code, ErrorCode::MalformedMessage, "{ct:?} {json}");
            let reason = e.param("reason").unwrap_or_default();
            assert!(reason.contains("expected a map"), "{ct:?} {json}: {reason}");
        }
    }

    #[test]
    fn structs_are_maps_never_positional_arrays() {
        // Top level: the empty request, a request.
        refused_as_positional::<Empty>("[]");
        refused_as_positional::<VmStartRequest>(
            r#"["6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001", false]"#,
        );
        // Nested: a struct in a struct, in an enum's value, a struct variant.
        refused_as_positional::<VmDefineRequest>(
            r#"{"spec": ["web01", null, "", 1048576, null, 2]}"#,
        );
        refused_as_positional::<Reply<Pong>>(r#"{"ok": ["h1", 1700000000000, "hi"]}"#);
        refused_as_positional::<DiskSpec>(
            r#"{"target": "vda", "source": {"new_volume": ["default", 1048576]}}"#,
        );
        // The same as maps decode; arrays stay arrays where a list is expected.
        decode_both::<Empty>("{}").expect("empty map");
        decode_both::<VmStartRequest>(
            r#"{"uuid": "6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001", "paused": false}"#,
        )
        .expect("vm.start as a map");
        decode_both::<VmDefineRequest>(
            r#"{"spec": {"name": "web01", "memory_kib": 1048576, "vcpus": 2, "disks": [
                {"target": "vda", "source": {"new_volume": {"pool": "default", "capacity_bytes": 1048576}}}
            ], "boot": {"order": ["disk", "network"]}}}"#,
        )
        .expect("vm.define with lists");
        decode_both::<Reply<Pong>>(r#"{"ok": {"host_id": "h1", "time": 1, "echo": null}}"#)
            .expect("a reply");
    }

    /// The wrapper forwards the wrapped deserializer's human readability
    /// (UUIDs are strings in one, 16 bytes in the other), both ways.
    #[test]
    fn maps_only_keeps_the_wrapped_deserializers_readability() {
        use serde::Deserializer as _;
        let bytes = [0xc0];
        let mut compact = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
        assert!(!MapsOnly(&mut compact).is_human_readable());
        let mut readable = rmp_serde::Deserializer::from_read_ref(&bytes[..]).with_human_readable();
        assert!(MapsOnly(&mut readable).is_human_readable());
    }

    /// What the wrapper hands on keeps what the wrapped one says: the
    /// sizes of sequences and maps (which size the decoded collections),
    /// what a visitor expected (in error messages), a unit variant's check.
    #[test]
    fn maps_only_hands_on_sizes_expectations_and_unit_variants() {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        use serde::Deserializer as _;
        struct Hint;
        impl<'de> Visitor<'de> for Hint {
            type Value = Option<usize>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence or a map")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let hint = seq.size_hint();
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(hint)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let hint = map.size_hint();
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(hint)
            }
        }
        let hint = |bytes: &[u8]| {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            MapsOnly(&mut de).deserialize_any(Hint).expect("a hint")
        };
        assert_eq!(hint(&[0x93, 1, 2, 3]), Some(3), "a sequence of 3");
        assert_eq!(
            hint(&[0x82, 0xa1, b'a', 1, 0xa1, b'b', 2]),
            Some(2),
            "a map of 2"
        );

        for (ct, bytes) in both(r#""x""#) {
            let e = decode::<Ping>(ct, &bytes, DEFAULT_MAX_PAYLOAD).unwrap_err();
            assert!(
                e.to_string().contains("expected struct Ping"),
                "{ct:?}: {e}"
            );
        }

        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Shape {
            Unit,
            Sized(u32),
        }
        // A unit variant given a value is refused, not taken with the value left over.
        for (ct, bytes) in both(r#"{"Unit": 5}"#) {
            let got = decode::<Shape>(ct, &bytes, DEFAULT_MAX_PAYLOAD);
            assert!(got.is_err(), "{ct:?}: {got:?}");
        }
        for (ct, bytes) in both(r#"{"Sized": 5}"#) {
            assert!(
                matches!(
                    decode::<Shape>(ct, &bytes, DEFAULT_MAX_PAYLOAD),
                    Ok(Shape::Sized(5))
                ),
                "{ct:?}"
            );
        }
    }

    #[test]
    fn content_types_parse_leniently_but_refuse_strangers() {
        // Each type's property value is its documented name and parses back.
        assert_eq!(ContentType::MsgPack.as_str(), "application/msgpack");
        assert_eq!(ContentType::Json.as_str(), "application/json");
        for ct in [ContentType::MsgPack, ContentType::Json] {
            assert_eq!(ContentType::parse(Some(ct.as_str())), Ok(ct));
        }
        assert_eq!(ContentType::parse(None), Ok(ContentType::MsgPack));
        assert_eq!(
            ContentType::parse(Some("application/json; charset=utf-8")),
            Ok(ContentType::Json)
        );
        assert!(matches!(
            ContentType::parse(Some("text/xml")),
            Err(CodecError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn msgpack_uses_field_names() {
        let bytes = encode(
            ContentType::MsgPack,
            &Ping {
                echo: Some("x".into()),
            },
        )
        .expect("encode");
        // fixmap of 1, fixstr "echo", fixstr "x"
        assert_eq!(bytes, [0x81, 0xa4, b'e', b'c', b'h', b'o', 0xa1, b'x']);
    }

    #[test]
    fn oversized_and_trailing_input_is_refused() {
        let big = vec![0u8; 10];
        assert!(matches!(
            decode::<Empty>(ContentType::MsgPack, &big, 5),
            Err(CodecError::TooLarge { size: 10, limit: 5 })
        ));
        let mut bytes = encode(
            ContentType::MsgPack,
            &Ping {
                echo: Some("hi".into()),
            },
        )
        .expect("encode");
        assert!(decode::<Ping>(ContentType::MsgPack, &bytes, 100).is_ok());
        bytes.push(0xc0);
        let err = decode::<Ping>(ContentType::MsgPack, &bytes, 100).unwrap_err();
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
        bytes.truncate(bytes.len() - 2);
        assert!(decode::<Ping>(ContentType::MsgPack, &bytes, 100).is_err());
    }
}
