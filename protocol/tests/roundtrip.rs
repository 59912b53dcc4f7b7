//! Property tests: every message of the protocol survives both encodings,
//! and no input from the wire makes decoding panic.

use std::cell::Cell;

use arbitrary::Unstructured;
use hostbus_protocol::commands::Message;
use hostbus_protocol::{
    decode, encode, visit_commands, Command, CommandVisitor, ContentType, Error, Event, Heartbeat,
    Reply, DEFAULT_MAX_PAYLOAD,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CASES: u32 = 48;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Generates values of `T` from random bytes and checks that encoding then
/// decoding gives the same value back, in MessagePack and in JSON.
fn round_trips<T: Message>(what: &str) {
    let generated = Cell::new(0u32);
    runner()
        .run(&vec(any::<u8>(), 0..8192), |bytes| {
            let mut u = Unstructured::new(&bytes);
            let Ok(value) = T::arbitrary(&mut u) else {
                return Ok(());
            };
            generated.set(generated.get() + 1);
            for ct in [ContentType::MsgPack, ContentType::Json] {
                let encoded = encode(ct, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let decoded: T = decode(ct, &encoded, usize::MAX)
                    .map_err(|e| TestCaseError::fail(format!("{ct:?}: {e}")))?;
                prop_assert_eq!(&decoded, &value, "{:?}", ct);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(generated.get() > 0, "{what}: no value was generated");
}

/// Feeds arbitrary bytes, and truncated or extended encodings of real
/// values, to the decoder of `T`: it must return, never panic.
fn never_panics<T: Message>(what: &str) {
    runner()
        .run(
            &(vec(any::<u8>(), 0..4096), any::<usize>(), any::<u8>()),
            |(bytes, cut, extra)| {
                for ct in [ContentType::MsgPack, ContentType::Json] {
                    let _ = decode::<T>(ct, &bytes, DEFAULT_MAX_PAYLOAD);
                }
                let mut u = Unstructured::new(&bytes);
                if let Ok(value) = T::arbitrary(&mut u) {
                    for ct in [ContentType::MsgPack, ContentType::Json] {
                        let encoded =
                            encode(ct, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        if !encoded.is_empty() {
                            let cut = cut % encoded.len();
                            prop_assert!(
                                decode::<T>(ct, &encoded[..cut], DEFAULT_MAX_PAYLOAD).is_err(),
                                "{:?}: a truncated encoding decoded",
                                ct
                            );
                        }
                        let mut longer = encoded.clone();
                        longer.push(extra);
                        let _ = decode::<T>(ct, &longer, DEFAULT_MAX_PAYLOAD);
                        let mut flipped = encoded;
                        if !flipped.is_empty() {
                            let i = cut % flipped.len();
                            flipped[i] ^= extra | 1;
                            let _ = decode::<T>(ct, &flipped, DEFAULT_MAX_PAYLOAD);
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

struct RoundTripAll;
impl CommandVisitor for RoundTripAll {
    fn visit<C: Command>(&mut self) {
        round_trips::<C::Request>(&format!("{} request", C::NAME));
        round_trips::<C::Response>(&format!("{} response", C::NAME));
        round_trips::<Reply<C::Response>>(&format!("{} reply", C::NAME));
    }
}

struct GarbageAll;
impl CommandVisitor for GarbageAll {
    fn visit<C: Command>(&mut self) {
        never_panics::<C::Request>(&format!("{} request", C::NAME));
        never_panics::<Reply<C::Response>>(&format!("{} reply", C::NAME));
    }
}

#[test]
fn every_command_request_response_and_reply_round_trips() {
    visit_commands(&mut RoundTripAll);
}

#[test]
fn events_heartbeats_and_errors_round_trip() {
    round_trips::<Event>("event");
    round_trips::<Heartbeat>("heartbeat");
    round_trips::<Error>("error");
}

#[test]
fn garbage_truncated_and_corrupted_input_never_panics() {
    visit_commands(&mut GarbageAll);
    never_panics::<Event>("event");
    never_panics::<Heartbeat>("heartbeat");
}

#[test]
fn hostile_msgpack_lengths_are_refused_without_allocating() {
    use hostbus_protocol::commands::{VmDefineRequest, VmListResponse};
    // A map32/array32/str32/bin32 header claiming 4 G entries or bytes.
    for bytes in [
        &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
        &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
        &[0x81, 0xa3, b'v', b'm', b's', 0xdd, 0xff, 0xff, 0xff, 0xff][..],
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'][..],
        &[0xc6, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        assert!(
            decode::<VmDefineRequest>(ContentType::MsgPack, bytes, DEFAULT_MAX_PAYLOAD).is_err()
        );
        assert!(
            decode::<VmListResponse>(ContentType::MsgPack, bytes, DEFAULT_MAX_PAYLOAD).is_err()
        );
    }
    // Deep nesting: 100 000 nested arrays.
    let deep = vec![0x91u8; 100_000];
    assert!(decode::<VmListResponse>(ContentType::MsgPack, &deep, DEFAULT_MAX_PAYLOAD).is_err());
    let deep_json = "[".repeat(100_000);
    assert!(
        decode::<VmListResponse>(ContentType::Json, deep_json.as_bytes(), DEFAULT_MAX_PAYLOAD)
            .is_err()
    );
}

#[test]
fn wrong_typed_messages_are_errors() {
    use hostbus_protocol::commands::{Pong, VmDefineRequest, VmStartRequest};
    let pong = Pong {
        host_id: "h1".into(),
        time: 1,
        echo: None,
    };
    for ct in [ContentType::MsgPack, ContentType::Json] {
        let bytes = encode(ct, &pong).expect("encode");
        assert!(decode::<VmDefineRequest>(ct, &bytes, DEFAULT_MAX_PAYLOAD).is_err());
        assert!(decode::<VmStartRequest>(ct, &bytes, DEFAULT_MAX_PAYLOAD).is_err());
    }
    // A uuid given as a number, a bool given as a string.
    let json = br#"{"uuid": 42}"#;
    assert!(decode::<VmStartRequest>(ContentType::Json, json, DEFAULT_MAX_PAYLOAD).is_err());
    let json = br#"{"uuid": "6a8f1b8e-8a8e-4d47-9d6f-3c1f9f3f2c11", "paused": "yes"}"#;
    assert!(decode::<VmStartRequest>(ContentType::Json, json, DEFAULT_MAX_PAYLOAD).is_err());
}

#[test]
fn unknown_fields_are_ignored_and_unknown_enum_values_decode_to_unknown() {
    use hostbus_protocol::commands::VmListRequest;
    use hostbus_protocol::types::PowerState;
    let json = br#"{"power_state": "levitating", "added_in_1_9": [1, 2, 3]}"#;
    let req: VmListRequest = decode(ContentType::Json, json, DEFAULT_MAX_PAYLOAD).expect("decode");
    assert_eq!(req.power_state, Some(PowerState::Unknown));
    let msgpack = encode(
        ContentType::MsgPack,
        &serde_json::json!({"power_state": "levitating", "x": 1}),
    )
    .expect("encode");
    let req: VmListRequest =
        decode(ContentType::MsgPack, &msgpack, DEFAULT_MAX_PAYLOAD).expect("decode");
    assert_eq!(req.power_state, Some(PowerState::Unknown));
}
