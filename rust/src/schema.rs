//! What the core writes to InfluxDB, as `parse` writes it and `fields` checks it: the
//! measurements (one per `msg_type`), the field types, and a line's shape.

use std::hash::Hasher;

use crate::errors::UsageError;
use crate::words;

/// The `msg_type` values, each also the line's measurement.
pub const MSG_TYPES: [&str; 2] = ["telemetry", "heartbeat"];

/// InfluxDB 1.x field types. The core writes floats, booleans and `seq` as an integer; the
/// others only arrive through `learn` (another writer to the same database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Float,
    Integer,
    Unsigned,
    String,
    Boolean,
}

impl FieldType {
    pub const ALL: [FieldType; 5] = [
        FieldType::Float,
        FieldType::Integer,
        FieldType::Unsigned,
        FieldType::String,
        FieldType::Boolean,
    ];

    /// The name InfluxDB uses (`SHOW FIELD KEYS`, its conflict errors).
    pub const fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::Unsigned => "unsigned",
            FieldType::String => "string",
            FieldType::Boolean => "boolean",
        }
    }

    pub fn from_name(name: &str) -> Result<FieldType, UsageError> {
        FieldType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| UsageError::UnknownFieldType(name.to_owned()))
    }

    /// The type of a value as the core writes it: `true`/`false`, `{n}i`, `{n}u`, a quoted
    /// string, or a float (digits last, never `e`). Its last byte tells them apart: one table
    /// load, where tests of the first and the last byte were a branch each.
    pub(crate) fn of_value(value: &[u8]) -> FieldType {
        value
            .last()
            .map_or(FieldType::Float, |&c| TYPE_BY_LAST_BYTE[usize::from(c)])
    }
}

/// `FieldType::of_value` by a value's last byte.
static TYPE_BY_LAST_BYTE: [FieldType; 256] = {
    let mut t = [FieldType::Float; 256];
    t[b'e' as usize] = FieldType::Boolean;
    t[b'"' as usize] = FieldType::String;
    t[b'i' as usize] = FieldType::Integer;
    t[b'u' as usize] = FieldType::Unsigned;
    t
};

/// The shape of an item whose line was not described by a `Shape`: checked field by field.
pub const NO_SHAPE: u64 = 0;

/// Hashes a line's measurement and its fields (name, type) in line order into its shape, with
/// `words::keyed`: a client cannot pick names whose shape collides with a verified one. About
/// one multiply per field: `parse` computes one for every accepted item.
#[derive(Clone)]
pub struct Shape(foldhash::fast::FoldHasher<'static>);

impl Shape {
    /// A line of `MSG_TYPES[measurement]`. Inlined: a call cost more than the few stores
    /// of a fresh hasher, once per accepted item.
    #[inline(always)]
    pub fn new(measurement: usize) -> Self {
        let mut h = words::keyed();
        h.write_usize(measurement);
        Shape(h)
    }

    /// A line of any measurement (line protocol), hashed by its name (unescaped): apart from
    /// every `new` shape, which starts with an index of `MSG_TYPES`.
    pub fn named(measurement: &[u8]) -> Self {
        let mut s = Shape::new(usize::MAX);
        s.name(measurement, words::head(measurement), 0);
        s
    }

    /// The next field. `head` is the name's first 8 bytes as one word (`words::head`, or any
    /// packing the caller always uses): with the length and type it is one 128-bit write, a
    /// single multiply; only the bytes of a longer name are hashed on.
    #[inline]
    pub fn field(&mut self, name: &[u8], head: u64, ty: FieldType) {
        self.name(name, head, ty as u64);
    }

    #[inline]
    fn name(&mut self, name: &[u8], head: u64, kind: u64) {
        let meta = (name.len() as u64) << 8 | kind;
        self.0.write_u128(u128::from(head) << 64 | u128::from(meta));
        // The length is in `meta`: a name of at most 8 bytes is all in `head`, and hashing its
        // empty rest would still cost a call.
        if name.len() > 8 {
            self.0.write(&name[8..]);
        }
    }

    /// Never `NO_SHAPE`.
    pub fn finish(&self) -> u64 {
        self.0.finish().max(NO_SHAPE + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_tell_names_types_and_measurements_apart() {
        let shape = |m, fields: &[(&str, FieldType)]| {
            let mut s = Shape::new(m);
            for &(name, ty) in fields {
                s.field(name.as_bytes(), words::head(name.as_bytes()), ty);
            }
            s.finish()
        };
        let (f, b) = (FieldType::Float, FieldType::Boolean);
        let base = shape(0, &[("ab", f), ("c", f)]);
        assert_eq!(base, shape(0, &[("ab", f), ("c", f)]));
        let long = shape(0, &[("a long name, 17 a", f)]);
        assert_ne!(long, shape(0, &[("a long name, 17 b", f)]));
        assert_ne!(long, shape(0, &[("a long name, 17 a", b)]));
        for other in [
            shape(1, &[("ab", f), ("c", f)]),
            shape(0, &[("a", f), ("bc", f)]),
            shape(0, &[("ab", f), ("c", b)]),
            shape(0, &[("ab", f)]),
            shape(0, &[("ab", f), ("c", f), ("", f)]),
            shape(0, &[("a long name, 17 b", f), ("c", f)]),
        ] {
            assert_ne!(base, other);
            assert_ne!(other, NO_SHAPE);
        }
        let named = |m: &str| {
            let mut s = Shape::named(m.as_bytes());
            s.field(b"ab", words::head(b"ab"), f);
            s.field(b"c", words::head(b"c"), f);
            s.finish()
        };
        assert_eq!(named("telemetry"), named("telemetry"));
        assert_ne!(named("telemetry"), base);
        assert_ne!(named("telemetry"), named("telemetrx"));
        assert_ne!(named("a measurement of 17"), named("a measurement of 18"));
    }

    #[test]
    fn values_are_typed_as_the_core_writes_them() {
        let cases: [(&[u8], FieldType); 9] = [
            (b"true", FieldType::Boolean),
            (b"false", FieldType::Boolean),
            (b"\"a\\\"\"", FieldType::String),
            (b"\"\"", FieldType::String),
            (b"-12i", FieldType::Integer),
            (b"12u", FieldType::Unsigned),
            (b"1.5", FieldType::Float),
            (b"1e+16", FieldType::Float),
            (b"22.0", FieldType::Float),
        ];
        for (value, ty) in cases {
            assert_eq!(FieldType::of_value(value), ty, "{value:?}");
        }
    }

    #[test]
    fn field_type_names_round_trip() {
        for t in FieldType::ALL {
            assert_eq!(FieldType::from_name(t.name()), Ok(t));
        }
        assert_eq!(
            FieldType::from_name("bool"),
            Err(UsageError::UnknownFieldType("bool".into()))
        );
    }
}
