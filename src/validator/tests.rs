//! The validator against apache-avro: random and hostile datums of every
//! Avro type, each error kind at its exact offset, captures, and schemas.

use std::collections::HashMap;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{NamesRef, NamespaceRef, ResolvedSchema, Schema, UuidSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Uuid};

use super::*;

const EXAMPLE: &str = include_str!("../../config/agents/example.avsc");
const TEMPERATURE: &str = include_str!("../../config/agents/temperature.avsc");

/// Every Avro type: nested and reused records, a recursive linked list,
/// enum, fixed, arrays (of records, of arrays, of nulls), maps, unions,
/// and the logical types.
const EVERYTHING: &str = r#"{
  "type": "record", "name": "Everything", "namespace": "test.all",
  "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "by", "type": "bytes"},
    {"name": "s", "type": "string"},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "x", "type": "int"},
      {"name": "y", "type": "double"},
      {"name": "deeper", "type": {"type": "record", "name": "Deeper",
        "namespace": "test.other", "fields": [{"name": "z", "type": "long"}]}}
    ]}},
    {"name": "inner2", "type": "Inner"},
    {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
    {"name": "list", "type": {"type": "record", "name": "Node", "fields": [
      {"name": "value", "type": "int"},
      {"name": "next", "type": ["null", "Node"]}
    ]}},
    {"name": "ints", "type": {"type": "array", "items": "int"}},
    {"name": "records", "type": {"type": "array", "items": "Inner"}},
    {"name": "nested", "type": {"type": "array", "items": {"type": "array", "items": "string"}}},
    {"name": "nulls", "type": {"type": "array", "items": "null"}},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "mcolor", "type": {"type": "map", "values": "Color"}},
    {"name": "opt", "type": ["null", "double"]},
    {"name": "u", "type": ["null", "string", "Hash", {"type": "array", "items": "boolean"}, "Inner"]},
    {"name": "dec_b", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "dec_f", "type": {"type": "fixed", "name": "Dec", "size": 8, "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "uuid_s", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "uuid_f", "type": {"type": "fixed", "name": "UuidF", "size": 16, "logicalType": "uuid"}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "tmil", "type": {"type": "int", "logicalType": "time-millis"}},
    {"name": "tmic", "type": {"type": "long", "logicalType": "time-micros"}},
    {"name": "tsm", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "tsn", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
    {"name": "ltsm", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
    {"name": "ltsu", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "ltsn", "type": {"type": "long", "logicalType": "local-timestamp-nanos"}},
    {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
    {"name": "tail", "type": "float"}
  ]
}"#;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn text(&mut self) -> String {
        const CHARS: [&str; 6] = ["a", "Z", "0", " ", "é", "温"];
        let n = self.below(6) as usize;
        (0..n).map(|_| CHARS[self.below(6) as usize]).collect()
    }
    /// Mostly small numbers, sometimes extremes: exercises every varint length.
    fn long(&mut self) -> i64 {
        match self.below(4) {
            0 => self.below(100) as i64 - 50,
            1 => [i64::MIN, i64::MAX, 0, -1][self.below(4) as usize],
            _ => (self.next() as i64) >> self.below(63),
        }
    }
}

/// apache-avro's encoder (`to_avro_datum`, without its deprecation).
fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("apache-avro encodes")
}

/// apache-avro's decoder (`from_avro_datum`, without its deprecation).
fn decode(schema: &Schema, datum: &mut &[u8]) -> Option<Value> {
    GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(datum))
        .ok()
}

fn parse(json: &str) -> (Schema, Validator) {
    let schema = Schema::parse_str(json).expect("schema parses");
    let v = Validator::compile(&schema).expect("schema compiles");
    (schema, v)
}

/// A random value of `schema` (recursion bounded by `depth`).
fn gen_value(
    schema: &Schema,
    names: &NamesRef,
    ns: NamespaceRef,
    rng: &mut Rng,
    depth: u32,
) -> Value {
    // Collections empty out with depth, so recursive types stay finite.
    let n = |rng: &mut Rng| if depth > 8 { 0 } else { rng.below(4) as usize };
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(rng.below(2) == 1),
        Schema::Int => Value::Int(rng.long() as i32),
        Schema::Long => Value::Long(rng.long()),
        Schema::Float => Value::Float(f32::from_bits(rng.next() as u32)),
        Schema::Double => Value::Double(f64::from_bits(rng.next())),
        Schema::Bytes => {
            let len = n(rng);
            Value::Bytes(rng.bytes(len))
        }
        Schema::String => Value::String(rng.text()),
        Schema::Fixed(f) => Value::Fixed(f.size, rng.bytes(f.size)),
        Schema::Enum(e) => {
            let i = rng.below(e.symbols.len() as u64) as usize;
            Value::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Array(a) => Value::Array(
            (0..n(rng))
                .map(|_| gen_value(&a.items, names, ns, rng, depth + 1))
                .collect(),
        ),
        Schema::Map(m) => Value::Map(
            (0..n(rng))
                .map(|_| (rng.text(), gen_value(&m.types, names, ns, rng, depth + 1)))
                .collect::<HashMap<_, _>>(),
        ),
        Schema::Union(u) => {
            let variants = u.variants();
            // Deep enough: take the null branch when there is one.
            let i = match variants.iter().position(|v| *v == Schema::Null) {
                Some(null) if depth > 8 => null,
                _ => rng.below(variants.len() as u64) as usize,
            };
            let v = gen_value(&variants[i], names, ns, rng, depth + 1);
            Value::Union(i as u32, Box::new(v))
        }
        Schema::Record(r) => {
            let name = r.name.fully_qualified_name(ns);
            Value::Record(
                r.fields
                    .iter()
                    .map(|f| {
                        let v = gen_value(&f.schema, names, name.namespace(), rng, depth + 1);
                        (f.name.clone(), v)
                    })
                    .collect(),
            )
        }
        Schema::Ref { name } => {
            let name = name.fully_qualified_name(ns);
            let target = names[name.as_ref()];
            gen_value(target, names, name.namespace(), rng, depth + 1)
        }
        Schema::Decimal(_) => {
            let len = 1 + n(rng);
            Value::Decimal(Decimal::from(rng.bytes(len)))
        }
        Schema::BigDecimal => Value::BigDecimal(apache_avro::BigDecimal::from(rng.long())),
        Schema::Uuid(_) => Value::Uuid(Uuid::from_u64_pair(rng.next(), rng.next())),
        Schema::Date => Value::Date(rng.long() as i32),
        Schema::TimeMillis => Value::TimeMillis(rng.long() as i32),
        Schema::TimeMicros => Value::TimeMicros(rng.long()),
        Schema::TimestampMillis => Value::TimestampMillis(rng.long()),
        Schema::TimestampMicros => Value::TimestampMicros(rng.long()),
        Schema::TimestampNanos => Value::TimestampNanos(rng.long()),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(rng.long()),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(rng.long()),
        Schema::LocalTimestampNanos => Value::LocalTimestampNanos(rng.long()),
        Schema::Duration(_) => Value::Duration(Duration::new(
            Months::new(rng.next() as u32),
            Days::new(rng.next() as u32),
            Millis::new(rng.next() as u32),
        )),
    }
}

fn random_datums(schema: &Schema, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let resolved = ResolvedSchema::try_from(schema).expect("resolves");
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let v = gen_value(schema, resolved.get_names(), None, &mut rng, 0);
            encode(schema, v)
        })
        .collect()
}

/// Whether apache-avro decodes `datum` as one datum with no byte left.
fn avro_accepts(schema: &Schema, datum: &[u8]) -> bool {
    let mut rest = datum;
    decode(schema, &mut rest).is_some() && rest.is_empty()
}

fn err(kind: InvalidKind, offset: u32) -> Result<(), InvalidDatum> {
    Err(InvalidDatum { kind, offset })
}

/// Zigzag varint, as the test's own reference encoder.
fn zz(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

#[test]
fn random_valid_datums_validate() {
    for (json, seed) in [(EXAMPLE, 1), (TEMPERATURE, 2), (EVERYTHING, 3)] {
        let (schema, v) = parse(json);
        let mut out = vec![Captured::default(); v.numeric_slots().len()];
        for datum in random_datums(&schema, 500, seed) {
            assert_eq!(v.validate(&datum), Ok(()), "{datum:?}");
            assert_eq!(v.validate_capture(&datum, &mut out), Ok(()));
        }
    }
}

#[test]
fn scalar_and_special_schemas() {
    let (_, v) = parse(r#""double""#);
    assert_eq!(v.numeric_slots(), &[NumericKind::Double]);
    assert_eq!(v.numeric_slot_paths(), &[String::new()]);
    assert_eq!(v.validate(&1.5f64.to_le_bytes()), Ok(()));
    assert_eq!(v.validate(&[0; 7]), err(InvalidKind::Truncated, 0));
    assert_eq!(v.validate(&[]), err(InvalidKind::Empty, 0));

    // A datum that encodes to nothing: the empty datagram is that datum.
    let (_, v) = parse(r#""null""#);
    assert_eq!(v.validate(&[]), Ok(()));
    assert_eq!(v.validate(&[0]), err(InvalidKind::TrailingBytes, 0));

    // apache-avro's big-decimal: bytes holding a length-prefixed
    // integer and a scale, exactly.
    let (schema, v) = parse(r#"{"type": "bytes", "logicalType": "big-decimal"}"#);
    let d = encode(
        &schema,
        Value::BigDecimal(apache_avro::BigDecimal::from(-12345)),
    );
    assert_eq!(v.validate(&d), Ok(()));
    // Found by the `schema` fuzz target: length 4 holding an inner
    // length of -3, which apache-avro cannot read.
    let inner_negative = [0x08, 0xfc, 0x04, 0xd2, 0x04];
    assert!(!avro_accepts(&schema, &inner_negative));
    assert_eq!(
        v.validate(&inner_negative),
        err(InvalidKind::BadBigDecimal, 0)
    );
    for bad in [
        vec![0x02, 0x04],                   // integer cut short
        vec![0x04, 0x02, 0x07],             // no scale
        vec![0x08, 0x02, 0x07, 0x00, 0x00], // a byte after the scale
    ] {
        assert_eq!(
            v.validate(&bad),
            err(InvalidKind::BadBigDecimal, 0),
            "{bad:?}"
        );
    }
    assert_eq!(v.validate(&[0x06, 0x02, 0x07, 0x04]), Ok(()));
    assert!(avro_accepts(&schema, &[0x06, 0x02, 0x07, 0x04]));

    // uuid on bytes (apache-avro only): exactly 16 bytes.
    let (schema, v) = parse(r#"{"type": "bytes", "logicalType": "uuid"}"#);
    assert!(matches!(schema, Schema::Uuid(UuidSchema::Bytes)));
    let d = encode(&schema, Value::Uuid(Uuid::from_u64_pair(1, 2)));
    assert_eq!(v.validate(&d), Ok(()));
    assert_eq!(v.validate(&[2, 0]), err(InvalidKind::BadUuid, 0));
}

#[test]
fn uuid_text_forms() {
    let (schema, v) = parse(r#"{"type": "string", "logicalType": "uuid"}"#);
    for text in [
        "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "67E5504410B1426F9247BB680E5FE0C8",
        "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
        "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
    ] {
        let d = [zz(text.len() as i64), text.as_bytes().to_vec()].concat();
        assert_eq!(v.validate(&d), Ok(()), "{text}");
        assert!(avro_accepts(&schema, &d), "{text}");
    }
    for text in [
        "",
        "67e55044-10b1-426f-9247-bb680e5fe0c",
        "67e55044x10b1-426f-9247-bb680e5fe0c8",
        "URN:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
    ] {
        let d = [zz(text.len() as i64), text.as_bytes().to_vec()].concat();
        assert_eq!(v.validate(&d), err(InvalidKind::BadUuid, 0), "{text}");
    }
}

#[test]
fn each_error_kind() {
    use InvalidKind::*;
    let (schema, example) = parse(EXAMPLE);
    let good = random_datums(&schema, 1, 7).remove(0);

    assert_eq!(example.validate(&[]), err(Empty, 0));
    // Cut inside `square_wave` (the last 16 bytes are two doubles): the
    // offset is that double's, though `validate` checks the doubles as
    // one run.
    let cut = &good[..good.len() - 10];
    assert_eq!(
        example.validate(cut),
        err(Truncated, good.len() as u32 - 16)
    );
    assert_eq!(
        example
            .validate(&good[..good.len() - 1])
            .map_err(|e| e.kind),
        Err(Truncated)
    );
    let mut long = good.clone();
    long.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        example.validate(&long),
        err(TrailingBytes, good.len() as u32)
    );

    // Wrong types: a string where the first double is expected. The
    // string's bytes are taken as part of a double, and the record then
    // runs out of bytes.
    let mut wrong = [zz(1), zz(2), b"hi".to_vec(), zz(3)].concat();
    let strings_at = wrong.len();
    wrong.extend([zz(5), b"hello".to_vec()].concat());
    assert_eq!(example.validate(&wrong), err(Truncated, strings_at as u32));
    // ... and an int where a string is expected: 6 = length 3, not there.
    assert_eq!(example.validate(&[2, 6, 0]), err(Truncated, 1));

    // Varints: an int of 6 bytes, an int over i32, a long of 11 bytes,
    // a 10-byte long whose last byte carries more than the 64th bit.
    let (_, int) = parse(r#""int""#);
    assert_eq!(
        int.validate(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        err(BadVarint, 0)
    );
    assert_eq!(
        int.validate(&zz(i64::from(i32::MAX) + 1)),
        err(BadVarint, 0)
    );
    assert_eq!(int.validate(&zz(i64::from(i32::MIN))), Ok(()));
    assert_eq!(int.validate(&[0x80, 0x80]), err(Truncated, 0));
    let (_, long_v) = parse(r#""long""#);
    assert_eq!(long_v.validate(&[0xff; 11]), err(BadVarint, 0));
    let mut ten = vec![0xff; 9];
    ten.push(0x02);
    assert_eq!(long_v.validate(&ten), err(BadVarint, 0));
    assert_eq!(long_v.validate(&zz(i64::MIN)), Ok(()));
    assert_eq!(long_v.validate(&zz(i64::MAX)), Ok(()));

    let (_, boolean) = parse(r#""boolean""#);
    assert_eq!(boolean.validate(&[1]), Ok(()));
    assert_eq!(boolean.validate(&[2]), err(BadBoolean, 0));

    let (_, union) = parse(r#"["null", "int"]"#);
    assert_eq!(union.validate(&[0]), Ok(()));
    assert_eq!(union.validate(&[2, 4]), Ok(()));
    assert_eq!(union.validate(&zz(2)), err(BadUnionIndex, 0));
    assert_eq!(union.validate(&zz(-1)), err(BadUnionIndex, 0));

    let (_, en) = parse(r#"{"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}"#);
    assert_eq!(en.validate(&zz(2)), Ok(()));
    assert_eq!(en.validate(&zz(3)), err(BadEnumIndex, 0));
    assert_eq!(en.validate(&zz(-1)), err(BadEnumIndex, 0));

    let (_, string) = parse(r#""string""#);
    assert_eq!(string.validate(&zz(-1)), err(NegativeLength, 0));
    assert_eq!(string.validate(&[6, b'a', b'b']), err(Truncated, 0));
    assert_eq!(string.validate(&[6, b'a', 0xff, 0xfe]), err(InvalidUtf8, 2));

    // A block with a negative count is preceded by its byte size.
    let (schema, ints) = parse(r#"{"type": "array", "items": "int"}"#);
    let block = [zz(-2), zz(2), zz(1), zz(2), zz(0)].concat();
    assert_eq!(ints.validate(&block), Ok(()));
    assert!(avro_accepts(&schema, &block));
    let wrong_size = [zz(-2), zz(3), zz(1), zz(2), zz(0), vec![0]].concat();
    assert_eq!(ints.validate(&wrong_size), err(BadBlockSize, 4));
    let negative_size = [zz(-2), zz(-2), zz(1), zz(2), zz(0)].concat();
    assert_eq!(ints.validate(&negative_size), err(NegativeLength, 1));
    let past_end = [zz(-2), zz(9), zz(1), zz(2), zz(0)].concat();
    assert_eq!(ints.validate(&past_end), err(Truncated, 1));
    let (_, map) = parse(r#"{"type": "map", "values": "null"}"#);
    assert_eq!(
        map.validate(&[zz(-1), zz(2), vec![2, b'k', 0]].concat()),
        Ok(())
    );

    // Recursion: every level of the list is a union branch frame.
    let (schema, list) = parse(
        r#"{"type": "record", "name": "Node", "fields": [
            {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}"#,
    );
    let nested = |levels: usize| {
        let mut d = Vec::new();
        for _ in 0..levels {
            d.extend([zz(7), zz(1)].concat());
        }
        d.extend([zz(7), zz(0)].concat());
        d
    };
    assert_eq!(list.validate(&nested(MAX_DEPTH)), Ok(()));
    // (apache-avro recurses on the Rust stack: kept shallow for debug builds.)
    assert!(avro_accepts(&schema, &nested(16)));
    assert_eq!(
        list.validate(&nested(MAX_DEPTH + 1)),
        err(TooDeep, 2 * (MAX_DEPTH as u32 + 1))
    );

    // Items of no bytes cost no work per item: any count that fits
    // MAX_ITEMS is one block header. 2^60 nulls: refused at the count,
    // no loop.
    let (schema, nulls) = parse(r#"{"type": "array", "items": "null"}"#);
    let many = [zz(100_000), zz(0)].concat();
    assert_eq!(many.len(), 4);
    assert_eq!(nulls.validate(&many), Ok(()));
    assert!(avro_accepts(&schema, &many));
    let limit = i64::from(MAX_ITEMS);
    assert_eq!(nulls.validate(&[zz(limit), zz(0)].concat()), Ok(()));
    assert_eq!(
        nulls.validate(&[zz(limit + 1), zz(0)].concat()),
        err(TooManyItems, 0)
    );
    // The limit is per datum, across blocks.
    let split = [zz(limit - 1), zz(2), zz(0)].concat();
    assert_eq!(
        nulls.validate(&split),
        err(TooManyItems, zz(limit - 1).len() as u32)
    );
    assert_eq!(
        nulls.validate(&[zz(1 << 60), zz(0)].concat()),
        err(TooManyItems, 0)
    );
    assert_eq!(
        nulls.validate(&[zz(-(1 << 60)), zz(0), zz(0)].concat()),
        err(TooManyItems, 0)
    );
    assert_eq!(
        nulls.validate(&[zz(i64::MIN), zz(0), zz(0)].concat()),
        err(TooManyItems, 0)
    );
    // ... also behind a frame: items of empty records inside a list.
    let (schema, empties) = parse(
        r#"{"type": "array", "items": {"type": "array", "items":
            {"type": "record", "name": "E", "fields": [{"name": "n", "type": "null"},
              {"name": "z", "type": {"type": "fixed", "name": "Z", "size": 0}}]}}}"#,
    );
    let three = [
        zz(3),
        zz(1000),
        zz(0),
        zz(-1000),
        zz(0),
        zz(0),
        zz(1000),
        zz(0),
        zz(0),
    ];
    let three = three.concat();
    assert_eq!(empties.validate(&three), Ok(()));
    assert!(avro_accepts(&schema, &three));
    assert_eq!(
        empties.validate(&[zz(1), zz(1 << 40), zz(0), zz(0)].concat()),
        err(TooManyItems, 1)
    );
    // Items that take bytes: a count beyond the bytes left is cut short
    // at the count (or beyond its block's size), before any item runs.
    let (_, ints_deep) = parse(r#"{"type": "array", "items": {"type": "array", "items": "int"}}"#);
    assert_eq!(
        ints_deep.validate(&[zz(1), zz(1 << 40)].concat()),
        err(Truncated, 1)
    );
    assert_eq!(
        ints.validate(&[zz(3), zz(1), zz(2)].concat()),
        err(Truncated, 0)
    );
    assert_eq!(
        ints.validate(&[zz(3), zz(1), zz(2), zz(3), zz(0)].concat()),
        Ok(())
    );
    assert_eq!(
        ints.validate(&[zz(-3), zz(2), zz(1), zz(2), zz(0)].concat()),
        err(BadBlockSize, 0)
    );
}

#[test]
fn validator_is_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Validator>();
}

#[test]
fn pack_round_trips_and_messages() {
    for kind in InvalidKind::ALL {
        for offset in [0, 1, 12, u32::MAX] {
            let e = InvalidDatum { kind, offset };
            assert_ne!(e.pack(), 0);
            assert_eq!(InvalidDatum::unpack(e.pack()), Some(e));
        }
    }
    assert_eq!(InvalidDatum::unpack(0), None);
    assert_eq!(InvalidDatum::unpack(99 << 32), None);
    let shown = |kind, offset| InvalidDatum { kind, offset }.to_string();
    assert_eq!(shown(InvalidKind::Truncated, 12), "truncated at byte 12");
    assert_eq!(
        shown(InvalidKind::BadUnionIndex, 7),
        "union branch out of range at byte 7"
    );
    assert_eq!(
        shown(InvalidKind::TrailingBytes, 40),
        "trailing bytes after the record, which ends at byte 40"
    );
    // Each cause of a refused length says which.
    assert_eq!(
        shown(InvalidKind::Oversized, 512),
        "datagram longer than max_datagram (512 bytes)"
    );
    assert_eq!(
        shown(InvalidKind::TooManyItems, 3),
        "more than 1048576 array or map items in one record at byte 3"
    );
    assert_eq!(shown(InvalidKind::TooLarge, 0), "datagram of 4 GiB or more");
}

#[test]
fn schema_errors() {
    assert!(matches!(
        Validator::from_json("{"),
        Err(SchemaError::Parse(_))
    ));
    assert!(matches!(
        Validator::from_json(
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}"#
        ),
        Err(SchemaError::Parse(_))
    ));
    // Each level uses the previous record twice: 2^30 fields once inlined.
    let mut json = String::from(
        r#"{"type": "record", "name": "L0", "fields": [{"name": "a", "type": "int"}]}"#,
    );
    for i in 1..=30 {
        json = format!(
            r#"{{"type": "record", "name": "L{i}", "fields": [{{"name": "a", "type": {json}}}, {{"name": "b", "type": "L{}"}}]}}"#,
            i - 1
        );
    }
    assert!(matches!(
        Validator::from_json(&json),
        Err(SchemaError::TooLarge)
    ));
}

#[test]
fn recursive_types_compile_and_validate() {
    // A tree through an array, and mutual recursion through unions.
    for json in [
        r#"{"type": "record", "name": "Tree", "fields": [
            {"name": "v", "type": "long"},
            {"name": "kids", "type": {"type": "array", "items": "Tree"}}]}"#,
        r#"{"type": "record", "name": "A", "namespace": "n1", "fields": [
            {"name": "b", "type": ["null", {"type": "record", "name": "B", "namespace": "n2",
              "fields": [{"name": "a", "type": ["null", "n1.A"]}, {"name": "m", "type": {"type": "map", "values": "B"}}]}]},
            {"name": "x", "type": "double"}]}"#,
    ] {
        let (schema, v) = parse(json);
        for datum in random_datums(&schema, 300, 11) {
            assert_eq!(v.validate(&datum), Ok(()));
        }
    }
}

#[test]
fn captures_of_example_are_exact() {
    let (schema, v) = parse(EXAMPLE);
    // `time` is a timestamp-nanos: not a slot.
    assert_eq!(
        v.numeric_slots(),
        &[
            NumericKind::Int,
            NumericKind::Double,
            NumericKind::Double,
            NumericKind::Double,
            NumericKind::Double
        ]
    );
    assert_eq!(
        v.numeric_slot_paths(),
        &["counter", "sine_wave", "ramp", "square_wave", "noise"]
    );
    let record = Value::Record(vec![
        (
            "time".into(),
            Value::TimestampNanos(1_700_000_000_000_000_000),
        ),
        ("message".into(), Value::String("hello".into())),
        ("counter".into(), Value::Int(-300)),
        ("sine_wave".into(), Value::Double(0.5)),
        ("ramp".into(), Value::Double(-2.25)),
        ("square_wave".into(), Value::Double(1.0)),
        ("noise".into(), Value::Double(f64::MIN_POSITIVE)),
    ]);
    let datum = encode(&schema, record);
    let mut out = [Captured::default(); 5];
    assert_eq!(v.validate_capture(&datum, &mut out), Ok(()));
    // time: 9-byte varint; message: 1 + 5; counter: zz(-300) = 599, 2 bytes.
    let c = |start, end, value| Captured { start, end, value };
    assert_eq!(
        out,
        [
            c(15, 17, Num::Int(-300)),
            c(17, 25, Num::Float(0.5)),
            c(25, 33, Num::Float(-2.25)),
            c(33, 41, Num::Float(1.0)),
            c(41, 49, Num::Float(f64::MIN_POSITIVE)),
        ]
    );
    assert_eq!(datum.len(), 49);
    assert_eq!(datum[15..17], zz(-300)[..]);

    // SpeedData v0.x wrote the logicalType beside the type, where Avro
    // ignores it: still an instant, not a slot.
    let (_, old) = parse(
        r#"{"type": "record", "name": "data", "fields": [
            {"name": "time", "type": "long", "logicalType": "timestamp-nanos"},
            {"name": "counter", "type": "int"}]}"#,
    );
    assert_eq!(old.numeric_slot_paths(), &["counter"]);

    // temperature.avsc: `time` is a plain long there.
    let (_, t) = parse(TEMPERATURE);
    assert_eq!(
        t.numeric_slot_paths(),
        &[
            "time",
            "temperature_c",
            "temperature_f",
            "pressure_pa",
            "humidity_pct"
        ]
    );
}

#[test]
fn captures_through_nested_and_referenced_records_only() {
    let (schema, v) = parse(EVERYTHING);
    assert_eq!(
        v.numeric_slot_paths(),
        &[
            "i",
            "l",
            "f",
            "d",
            "inner.x",
            "inner.y",
            "inner.deeper.z",
            "inner2.x",
            "inner2.y",
            "inner2.deeper.z",
            "list.value",
            "tail"
        ]
    );
    let mut out = vec![Captured::default(); v.numeric_slots().len()];
    for datum in random_datums(&schema, 200, 5) {
        v.validate_capture(&datum, &mut out).expect("valid");
        let Some(Value::Record(fields)) = decode(&schema, &mut &datum[..]) else {
            panic!("apache-avro decodes");
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let Some(Value::Float(tail)) = get("tail") else {
            panic!()
        };
        let last = out[out.len() - 1];
        assert_eq!(last.end as usize, datum.len());
        assert!(matches!(last.value, Num::Float(f) if f.to_bits() == f64::from(tail).to_bits()));
        // Spans are in byte order and hold the value's encoding.
        for w in out.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
        for c in &out {
            let bytes = &datum[c.start as usize..c.end as usize];
            match c.value {
                Num::Int(i) => assert_eq!(bytes, &zz(i)[..]),
                Num::Float(f) => {
                    let decoded = match <[u8; 8]>::try_from(bytes) {
                        Ok(b) => f64::from_le_bytes(b),
                        Err(_) => f64::from(f32::from_le_bytes(bytes.try_into().unwrap())),
                    };
                    assert_eq!(decoded.to_bits(), f.to_bits());
                }
            }
        }
    }
}

/// Whenever we accept bytes, apache-avro decodes them as one datum with
/// nothing left over. Only this direction must hold: apache-avro is more
/// lenient in places (it ignores array block byte sizes, accepts
/// overlong int varints, returns Null for a string or union cut short
/// at the end of input, and has no depth or item budget), so it may
/// accept what we refuse.
#[test]
fn differential_against_apache_avro() {
    let mut rng = Rng(0x5eed);
    let mut accepted_mutants = 0;
    // Small and collection-heavy, so that random bytes are often a datum.
    const SMALL: &str = r#"{"type": "array", "items": ["null", "int",
        {"type": "map", "values": "boolean"}, {"type": "enum", "name": "E", "symbols": ["A", "B"]}]}"#;
    let mut accepted_random = 0;
    for (json, seed) in [
        (EXAMPLE, 21),
        (TEMPERATURE, 22),
        (EVERYTHING, 23),
        (SMALL, 24),
    ] {
        let (schema, v) = parse(json);
        for datum in random_datums(&schema, 300, seed) {
            for _ in 0..20 {
                let mut m = datum.clone();
                match rng.below(6) {
                    0 if !m.is_empty() => {
                        let i = rng.below(m.len() as u64) as usize;
                        m[i] ^= 1 << rng.below(8);
                    }
                    1 if !m.is_empty() => {
                        let i = rng.below(m.len() as u64) as usize;
                        m[i] = rng.next() as u8;
                    }
                    2 => m.truncate(rng.below(m.len() as u64 + 1) as usize),
                    3 => {
                        let i = rng.below(m.len() as u64 + 1) as usize;
                        m.insert(i, rng.next() as u8);
                    }
                    4 if !m.is_empty() => {
                        m.remove(rng.below(m.len() as u64) as usize);
                    }
                    _ => m.push(rng.next() as u8),
                }
                if v.validate(&m).is_ok() {
                    accepted_mutants += 1;
                    assert!(avro_accepts(&schema, &m), "{json}: {m:?}");
                }
            }
        }
        let tries = if json == SMALL { 50_000 } else { 3_000 };
        for _ in 0..tries {
            let max_len = if rng.below(2) == 0 { 48 } else { 8 };
            let n = rng.below(max_len) as usize;
            // Half of them from small byte values: short varints, valid
            // booleans and indexes, zero terminators.
            let m = if rng.below(2) == 0 {
                rng.bytes(n)
            } else {
                (0..n).map(|_| rng.below(8) as u8).collect()
            };
            if v.validate(&m).is_ok() {
                accepted_random += 1;
                assert!(avro_accepts(&schema, &m), "{json}: {m:?}");
            }
        }
    }
    assert!(accepted_random > 100, "{accepted_random}");
    // The mutations do reach the "accepted" side (e.g. flipped double bits).
    assert!(accepted_mutants > 1000, "{accepted_mutants}");
}

#[test]
fn capture_does_not_change_the_verdict() {
    let (schema, v) = parse(EVERYTHING);
    let mut rng = Rng(99);
    let mut out = vec![Captured::default(); v.numeric_slots().len()];
    let mut short = [Captured::default(); 2];
    for datum in random_datums(&schema, 200, 31) {
        for _ in 0..10 {
            let mut m = datum.clone();
            let i = rng.below(m.len() as u64) as usize;
            m[i] = rng.next() as u8;
            let plain = v.validate(&m);
            assert_eq!(v.validate_capture(&m, &mut out), plain);
            assert_eq!(v.validate_capture(&m, &mut short), plain);
            assert_eq!(v.validate_capture(&m, &mut []), plain);
        }
    }
}

#[test]
fn named_refs_resolve_across_namespaces() {
    let (schema, v) = parse(
        r#"{"type": "record", "name": "outer.R", "fields": [
            {"name": "p", "type": {"type": "record", "name": "P", "namespace": "geo",
                "fields": [{"name": "lat", "type": "double"}]}},
            {"name": "q", "type": "geo.P"},
            {"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "g", "type": "outer.F"}]}"#,
    );
    assert_eq!(v.numeric_slot_paths(), &["p.lat", "q.lat"]);
    for datum in random_datums(&schema, 50, 3) {
        assert_eq!(datum.len(), 8 + 8 + 2 + 2);
        assert_eq!(v.validate(&datum), Ok(()));
    }
}
