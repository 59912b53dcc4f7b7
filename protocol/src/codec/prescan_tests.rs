//! Property tests of the MessagePack pre-scan (`msgpack_value_len`) and of
//! `decode`'s size limit: values across every length class of MessagePack
//! (fix, 8-, 16- and 32-bit strings and binaries, every ext size, arrays
//! and maps with fix, 16- and 32-bit counts, nested), written by `rmp` (the
//! encoder under `rmp-serde`, so not by the code under test), must scan to
//! exactly their encoded length; every strict prefix is truncated; bytes
//! after the value are not part of it.
//!
//! Payload bytes are `0xc1`, MessagePack's one reserved marker: a scan that
//! gets a length wrong lands inside a payload and stops there, so a wrong
//! length arithmetic fails the test instead of passing by luck.

use std::cell::RefCell;
use std::collections::BTreeSet;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{decode, encode, msgpack_value_len, CodecError, ContentType};
use crate::commands::Ping;

/// A MessagePack value, by the shape of its encoding.
#[derive(Debug, Clone)]
enum V {
    Nil,
    Bool(bool),
    PosFix(u8),
    NegFix(i8),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// A string of this many bytes.
    Str(usize),
    /// A binary of this many bytes.
    Bin(usize),
    /// An ext of this type and this many bytes.
    Ext(i8, usize),
    Array(Vec<V>),
    Map(Vec<(V, V)>),
    /// An array of this many one-byte children: 16- and 32-bit counts
    /// without generating tens of thousands of values.
    WideArray(u32),
    /// A map of this many pairs of one-byte keys and values.
    WideMap(u32),
}

/// A length in each class: fix (strings only), 8-, 16- and 32-bit.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..=31,
        3 => 32usize..=255,
        2 => 256usize..=65_535,
        1 => 65_536usize..=70_000,
    ]
}

/// A count in each class of arrays and maps above the fix one.
fn wide_count() -> impl Strategy<Value = u32> {
    prop_oneof![16u32..=300, 65_530u32..=65_540, 65_536u32..=66_000]
}

fn value() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        Just(V::Nil),
        any::<bool>().prop_map(V::Bool),
        (0u8..=0x7f).prop_map(V::PosFix),
        (-32i8..=-1).prop_map(V::NegFix),
        any::<u8>().prop_map(V::U8),
        any::<u16>().prop_map(V::U16),
        any::<u32>().prop_map(V::U32),
        any::<u64>().prop_map(V::U64),
        any::<i8>().prop_map(V::I8),
        any::<i16>().prop_map(V::I16),
        any::<i32>().prop_map(V::I32),
        any::<i64>().prop_map(V::I64),
        any::<f32>().prop_map(V::F32),
        any::<f64>().prop_map(V::F64),
        length().prop_map(V::Str),
        length().prop_map(V::Bin),
        (
            any::<i8>(),
            prop_oneof![Just(1usize), Just(2), Just(4), Just(8), Just(16), length()]
        )
            .prop_map(|(t, n)| V::Ext(t, n)),
        wide_count().prop_map(V::WideArray),
        wide_count().prop_map(V::WideMap),
    ];
    // Up to 20 children: across the fix (≤ 15) and 16-bit classes.
    leaf.prop_recursive(4, 48, 20, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..20).prop_map(V::Array),
            vec((inner.clone(), inner), 0..20).prop_map(V::Map),
        ]
    })
}

const PAYLOAD: u8 = 0xc1;

/// Writes `v` to `out`, adding the marker of each value written to `seen`.
fn write(v: &V, out: &mut Vec<u8>, seen: &mut BTreeSet<u8>) {
    use rmp::encode as e;
    let at = out.len();
    let len = |n: usize| u32::try_from(n).expect("test lengths fit in u32");
    match v {
        V::Nil => e::write_nil(out).expect("vec"),
        V::Bool(b) => e::write_bool(out, *b).expect("vec"),
        V::PosFix(n) => e::write_pfix(out, *n).expect("vec"),
        V::NegFix(n) => e::write_nfix(out, *n).expect("vec"),
        V::U8(n) => e::write_u8(out, *n).expect("vec"),
        V::U16(n) => e::write_u16(out, *n).expect("vec"),
        V::U32(n) => e::write_u32(out, *n).expect("vec"),
        V::U64(n) => e::write_u64(out, *n).expect("vec"),
        V::I8(n) => e::write_i8(out, *n).expect("vec"),
        V::I16(n) => e::write_i16(out, *n).expect("vec"),
        V::I32(n) => e::write_i32(out, *n).expect("vec"),
        V::I64(n) => e::write_i64(out, *n).expect("vec"),
        V::F32(n) => e::write_f32(out, *n).expect("vec"),
        V::F64(n) => e::write_f64(out, *n).expect("vec"),
        V::Str(n) => {
            e::write_str_len(out, len(*n)).expect("vec");
            out.resize(out.len() + n, PAYLOAD);
        }
        V::Bin(n) => {
            e::write_bin_len(out, len(*n)).expect("vec");
            out.resize(out.len() + n, PAYLOAD);
        }
        V::Ext(t, n) => {
            e::write_ext_meta(out, len(*n), *t).expect("vec");
            out.resize(out.len() + n, PAYLOAD);
        }
        V::Array(items) => {
            e::write_array_len(out, len(items.len())).expect("vec");
            items.iter().for_each(|i| write(i, out, seen));
        }
        V::Map(pairs) => {
            e::write_map_len(out, len(pairs.len())).expect("vec");
            for (k, v) in pairs {
                write(k, out, seen);
                write(v, out, seen);
            }
        }
        V::WideArray(n) => {
            e::write_array_len(out, *n).expect("vec");
            out.resize(out.len() + *n as usize, 0x07);
        }
        V::WideMap(n) => {
            e::write_map_len(out, *n).expect("vec");
            out.resize(out.len() + 2 * *n as usize, 0xc0);
        }
    }
    seen.insert(out[at]);
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn the_prescan_measures_every_length_class_exactly() {
    let markers = RefCell::new(BTreeSet::new());
    runner(384)
        .run(
            &(value(), any::<u8>(), any::<prop::sample::Index>()),
            |(v, extra, cut)| {
                let mut bytes = Vec::new();
                write(&v, &mut bytes, &mut markers.borrow_mut());
                prop_assert_eq!(msgpack_value_len(&bytes), Some(bytes.len()), "{:?}", v);
                // What follows the value is not part of it.
                let mut longer = bytes.clone();
                longer.push(extra);
                longer.extend_from_slice(&[PAYLOAD; 9]);
                prop_assert_eq!(msgpack_value_len(&longer), Some(bytes.len()), "{:?}", v);
                // Every strict prefix is truncated (MessagePack is prefix
                // free): the empty one, one byte short, and one in between.
                for end in [0, bytes.len() - 1, cut.index(bytes.len())] {
                    prop_assert_eq!(msgpack_value_len(&bytes[..end]), None, "{:?}[..{}]", v, end);
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let markers = markers.into_inner();
    // The generator reaches every class: each marker but 0xc1 (reserved)
    // began some value, and each fix range had one.
    let fixed: Vec<u8> = (0xc0..=0xdf).filter(|m| *m != 0xc1).collect();
    let missing: Vec<String> = fixed
        .iter()
        .filter(|m| !markers.contains(m))
        .map(|m| format!("{m:#04x}"))
        .collect();
    assert!(missing.is_empty(), "no value began with {missing:?}");
    for (lo, hi) in [
        (0x00, 0x7f),
        (0x80, 0x8f),
        (0x90, 0x9f),
        (0xa0, 0xbf),
        (0xe0, 0xff),
    ] {
        assert!(
            markers.range(lo..=hi).next().is_some(),
            "no marker in {lo:#x}..={hi:#x}"
        );
    }
}

/// Big-endian lengths whose every byte matters: a reader that shifted the
/// wrong way, or dropped a byte, scans these wrong.
#[test]
fn multi_byte_lengths_are_read_big_endian() {
    for (marker, width) in [(0xdau8, 2usize), (0xc5, 2), (0xdb, 4), (0xc6, 4)] {
        for n in [0x0102usize, 0x01_0001, 0x01_0203] {
            if width == 2 && n > 0xffff {
                continue;
            }
            let mut bytes = vec![marker];
            bytes.extend_from_slice(&(n as u32).to_be_bytes()[4 - width..]);
            bytes.resize(bytes.len() + n, PAYLOAD);
            assert_eq!(
                msgpack_value_len(&bytes),
                Some(bytes.len()),
                "{marker:#x} of {n}"
            );
        }
    }
    // 16- and 32-bit counts: an array of 0x0102 nils, a map of 0x010002 pairs.
    let mut bytes = vec![0xdc, 0x01, 0x02];
    bytes.resize(3 + 0x0102, 0xc0);
    assert_eq!(msgpack_value_len(&bytes), Some(bytes.len()));
    let mut bytes = vec![0xdf, 0x00, 0x01, 0x00, 0x02];
    bytes.resize(5 + 2 * 0x01_0002, 0xc0);
    assert_eq!(msgpack_value_len(&bytes), Some(bytes.len()));
    bytes.pop();
    assert_eq!(msgpack_value_len(&bytes), None);
}

/// Real messages with strings of every length class go through `decode`
/// whole, in both encodings.
#[test]
fn messages_with_strings_of_every_length_class_round_trip() {
    for n in [0usize, 31, 32, 255, 256, 65_535, 65_536, 100_000] {
        let ping = Ping {
            echo: Some("e".repeat(n)),
        };
        for ct in [ContentType::MsgPack, ContentType::Json] {
            let bytes = encode(ct, &ping).expect("encode");
            let back: Ping = decode(ct, &bytes, usize::MAX).expect("decode");
            assert_eq!(back, ping, "{ct:?} with a string of {n}");
        }
    }
}

/// A payload of exactly the limit is decoded; one byte more is refused
/// before it is looked at.
#[test]
fn the_size_limit_admits_its_own_size_and_refuses_one_byte_more() {
    let ping = Ping {
        echo: Some("x".repeat(300)),
    };
    for ct in [ContentType::MsgPack, ContentType::Json] {
        let bytes = encode(ct, &ping).expect("encode");
        let size = bytes.len();
        assert_eq!(decode::<Ping>(ct, &bytes, size), Ok(ping.clone()), "{ct:?}");
        assert_eq!(
            decode::<Ping>(ct, &bytes, size - 1),
            Err(CodecError::TooLarge {
                size,
                limit: size - 1
            }),
            "{ct:?}"
        );
    }
}
