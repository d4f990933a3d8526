//! Field types per tenant and measurement. InfluxDB keeps one type per field of a measurement
//! (per shard) and refuses a point that sends another, after the gateway has answered 202; so
//! the core remembers each tenant's types and rejects a conflicting item before it is buffered.
//!
//! The first item that passes `admit` decides a field's type; what InfluxDB reports (a type
//! conflict error, a `SHOW FIELD KEYS`) overrides it through `learn`. Bounded: at most
//! `max_per_tenant` fields per tenant are remembered; beyond that a new field is not remembered
//! and is not checked (it is written as before, counted in `untracked`).
//!
//! Most items of a tenant send the same few field lists: `parse` records each line's shape (a
//! keyed hash of its measurement and field names and types), and a shape whose fields were all
//! found remembered with the same types is not read back again until `learn` changes a type.
//! A line read back checks each field by its key (a keyed hash of measurement, name and type)
//! first, and looks its name up only when the key is not known.

use std::sync::{Mutex, MutexGuard};

use crate::batch::Batch;
use crate::errors::UsageError;
use crate::schema::{FieldType, Shape, NO_SHAPE};
use crate::words;

/// `max_per_tenant` when the caller gives none.
pub const DEFAULT_MAX_FIELDS_PER_TENANT: usize = 10_000;

/// Verified shapes remembered per tenant; when full they are forgotten and verified again.
const MAX_SHAPES_PER_TENANT: usize = 4096;

/// A set of shapes or field keys. Each is already a keyed hash, never `NO_SHAPE` (0): the set
/// is an open-addressed table of them, 0 marking a free slot, probed from the key's own low
/// bits. Most items' check is one lookup here, for which a `HashSet` (control bytes, a group
/// match) cost about twice the instructions.
#[derive(Default)]
struct KeySet {
    /// A power of two in length, at most half full; empty until the first insert.
    slots: Vec<u64>,
    len: usize,
}

impl KeySet {
    #[inline]
    fn contains(&self, key: u64) -> bool {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = key as usize;
        while let Some(&slot) = self.slots.get(i & mask) {
            if slot == key {
                return true;
            }
            if slot == NO_SHAPE {
                return false;
            }
            i = (i & mask) + 1;
        }
        false
    }

    fn insert(&mut self, key: u64) {
        debug_assert_ne!(key, NO_SHAPE, "a key is never NO_SHAPE");
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        while self.slots[i] != NO_SHAPE {
            if self.slots[i] == key {
                return;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = key;
        self.len += 1;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![NO_SHAPE; size]);
        self.len = 0;
        for key in old.into_iter().filter(|&k| k != NO_SHAPE) {
            self.insert(key);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.slots.fill(NO_SHAPE);
        self.len = 0;
    }
}

/// Field name → type, of one measurement.
type Types = foldhash::HashMap<Box<[u8]>, FieldType>;

#[derive(Default)]
struct TenantFields {
    /// Per measurement (unescaped), field name → type.
    by_measurement: foldhash::HashMap<Box<[u8]>, Types>,
    len: usize,
    /// Shapes whose every field is remembered with the type the shape gives it.
    verified: KeySet,
    /// Keys (`field_key`) of fields found remembered with the key's type: a set of `u64`
    /// probes for less than a map of names, which hashes and compares the bytes.
    fields: KeySet,
}

#[derive(Default)]
struct State {
    /// Tenant → index into `tenants`; foldhash (seeded at random per process) as above.
    index: foldhash::HashMap<Box<str>, usize>,
    tenants: Vec<TenantFields>,
    untracked: u64,
    /// `admit`'s buffers, kept from batch to batch: a batch allocates none of its own.
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    /// Per tenant index of the batch, its index in `State::tenants`.
    slots: Vec<usize>,
    fields: LineFields,
    /// Per item, the fields its tenant does not know yet: index into `fields.refs`, key.
    new_fields: Vec<(usize, u64)>,
}

impl State {
    fn tenant(&mut self, tenant: &str) -> usize {
        if let Some(&t) = self.index.get(tenant) {
            return t;
        }
        self.tenants.push(TenantFields::default());
        self.index.insert(tenant.into(), self.tenants.len() - 1);
        self.tenants.len() - 1
    }
}

/// Each tenant's field types per measurement, shared by all requests. Thread-safe.
pub struct FieldTypes {
    max_per_tenant: usize,
    state: Mutex<State>,
}

impl FieldTypes {
    pub fn new(max_per_tenant: usize) -> Self {
        FieldTypes {
            max_per_tenant,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole entries: the map is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rejects, with `INVALID_METRICS` and a detail naming the field, each still-accepted item
    /// (request order) that sends a field with another type than the tenant's remembered one,
    /// and remembers the new fields of the others. Before `append`, once per batch.
    pub fn admit(&self, batch: &mut Batch) -> Result<(), UsageError> {
        let mut state = self.lock();
        let state = &mut *state;
        // Taken out while the closure below borrows `state`, put back after.
        let mut scratch = std::mem::take(&mut state.scratch);
        let Scratch {
            slots,
            fields,
            new_fields,
        } = &mut scratch;
        slots.clear();
        slots.resize(batch.tenant_count(), usize::MAX);
        let admitted = batch.reject_with(|item| {
            let slot = &mut slots[item.tenant_index];
            if *slot == usize::MAX {
                *slot = state.tenant(item.tenant());
            }
            let known = &mut state.tenants[*slot];
            let shape = item.shape();
            if shape != NO_SHAPE && known.verified.contains(shape) {
                return None;
            }
            let line = item.line();
            fields.read(line);
            let measurement = fields.measurement(line);
            let line_shape = Shape::named(measurement);
            // Looked up at the first field whose key is not known.
            let mut by_measurement = Some(&mut known.by_measurement);
            let mut types: Option<&mut Types> = None;
            new_fields.clear();
            for (i, f) in fields.refs.iter().enumerate() {
                let name = fields.name(line, f);
                let key = field_key(&line_shape, name, f.ty);
                if known.fields.contains(key) {
                    continue;
                }
                let types = types.get_or_insert_with(|| {
                    types_of(by_measurement.take().expect("once"), measurement)
                });
                match types.get(name) {
                    Some(&had) if had != f.ty => {
                        return Some(conflict(name, measurement, had, f.ty))
                    }
                    Some(_) => {
                        known.fields.insert(key);
                    }
                    None => new_fields.push((i, key)),
                }
            }
            // An untracked field is counted each time it is sent: its shape is never verified.
            let mut all_remembered = true;
            for &(i, key) in new_fields.iter() {
                if known.len >= self.max_per_tenant {
                    state.untracked += 1;
                    all_remembered = false;
                    continue;
                }
                let f = &fields.refs[i];
                let types = types.as_mut().expect("looked up for a new field");
                types.insert(fields.name(line, f).into(), f.ty);
                known.fields.insert(key);
                known.len += 1;
            }
            if all_remembered && shape != NO_SHAPE {
                if known.verified.len() >= MAX_SHAPES_PER_TENANT {
                    known.verified.clear();
                }
                known.verified.insert(shape);
            }
            None
        });
        state.scratch = scratch;
        admitted
    }

    /// The distinct fields of the batch's still-accepted items that their tenant has not
    /// remembered, as `(tenant, measurement, field, type)` of their first item, request order;
    /// nothing for a tenant at its cap. Read only: what a caller claims in a shared store (and
    /// `learn`s back) before `admit`, so every process decides a new field alike.
    pub fn unknown(&self, batch: &Batch) -> Vec<(String, String, String, FieldType)> {
        let state = self.lock();
        // Each of the batch's tenants is looked up once, not once per item.
        let tenants: Vec<Option<&TenantFields>> = (0..batch.tenant_count())
            .map(|t| state.index.get(batch.tenant(t)).map(|&i| &state.tenants[i]))
            .collect();
        let mut fields = LineFields::default();
        let mut out: Vec<(String, String, String, FieldType)> = Vec::new();
        for (tenant_index, line, shape) in batch.accepted_shapes() {
            let known = tenants[tenant_index];
            if known.is_some_and(|k| {
                k.len >= self.max_per_tenant || (shape != NO_SHAPE && k.verified.contains(shape))
            }) {
                continue;
            }
            fields.read(line);
            let measurement = fields.measurement(line);
            let types = known.and_then(|k| k.by_measurement.get(measurement));
            for f in &fields.refs {
                let name = fields.name(line, f);
                if types.is_some_and(|t| t.contains_key(name)) {
                    continue;
                }
                let tenant = batch.tenant(tenant_index);
                let m = String::from_utf8_lossy(measurement);
                let name = String::from_utf8_lossy(name);
                if !out
                    .iter()
                    .any(|(t, om, n, _)| t == tenant && *om == m && *n == name)
                {
                    out.push((tenant.to_owned(), m.into_owned(), name.into_owned(), f.ty));
                }
            }
        }
        out
    }

    /// Sets a field's type as InfluxDB reports it. False when it is not remembered: the
    /// tenant is at its cap.
    pub fn learn(&self, tenant: &str, measurement: &str, field: &str, ty: FieldType) -> bool {
        let mut state = self.lock();
        let t = state.tenant(tenant);
        let known = &mut state.tenants[t];
        let types = known
            .by_measurement
            .entry(measurement.as_bytes().into())
            .or_default();
        if let Some(had) = types.get_mut(field.as_bytes()) {
            if *had != ty {
                // Shapes verified and keys found with the old type may conflict with the new.
                known.verified.clear();
                known.fields.clear();
            }
            *had = ty;
            return true;
        }
        if known.len >= self.max_per_tenant {
            return false;
        }
        types.insert(field.as_bytes().into(), ty);
        known.len += 1;
        true
    }

    pub fn get(&self, tenant: &str, measurement: &str, field: &str) -> Option<FieldType> {
        let state = self.lock();
        let &t = state.index.get(tenant)?;
        state.tenants[t]
            .by_measurement
            .get(measurement.as_bytes())?
            .get(field.as_bytes())
            .copied()
    }

    /// Fields remembered, all tenants.
    pub fn len(&self) -> usize {
        self.lock().tenants.iter().map(|t| t.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fields of admitted items that were not remembered because their tenant was at its cap.
    pub fn untracked(&self) -> u64 {
        self.lock().untracked
    }

    pub fn max_per_tenant(&self) -> usize {
        self.max_per_tenant
    }
}

/// A measurement's field types, created empty at its first field.
fn types_of<'a>(
    by_measurement: &'a mut foldhash::HashMap<Box<[u8]>, Types>,
    measurement: &[u8],
) -> &'a mut Types {
    // Found then taken: a `get_mut` that falls back to `entry` does not borrow-check here.
    if by_measurement.contains_key(measurement) {
        return by_measurement.get_mut(measurement).expect("just found");
    }
    by_measurement.entry(measurement.into()).or_default()
}

/// A field's key: its name and type hashed as `Shape` hashes a field, after its line's
/// measurement (`line_shape`, `Shape::named`). Keyed like a shape: a client cannot pick a
/// name whose key collides with a known one's.
fn field_key(line_shape: &Shape, name: &[u8], ty: FieldType) -> u64 {
    let mut key = line_shape.clone();
    key.field(name, words::head(name), ty);
    key.finish()
}

fn conflict(name: &[u8], measurement: &[u8], had: FieldType, sent: FieldType) -> String {
    format!(
        "field type conflict: \"{}\" of {} is {}, this message sends {}",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(measurement),
        had.name(),
        sent.name()
    )
}

/// One field of a line: its name's range in the line, or in `LineFields::names` when it had
/// to be unescaped, and the type of its value.
struct FieldRef {
    name: std::ops::Range<usize>,
    unescaped: bool,
    ty: FieldType,
}

/// The fields of one line at a time, buffers reused from line to line.
#[derive(Default)]
struct LineFields {
    refs: Vec<FieldRef>,
    names: Vec<u8>,
    /// The line's measurement, as `FieldRef::name`.
    measurement: std::ops::Range<usize>,
    measurement_unescaped: bool,
}

impl LineFields {
    /// Reads back a line `parse`, `lineproto` or `shelly` wrote,
    /// `{measurement},{tags} {fields} {ts}\n`: holds its measurement and fields. Names never
    /// hold a backslash (the parsers refuse them), so outside a string value a backslash is
    /// always an escape.
    fn read(&mut self, line: &[u8]) {
        self.refs.clear();
        self.names.clear();
        let start = match plain_head(line) {
            Some((comma, start)) => {
                self.measurement_unescaped = false;
                self.measurement = 0..comma;
                start
            }
            None => self.read_escaped_head(line),
        };
        let end = memchr::memrchr(b' ', line).expect("a line ends with its timestamp");
        if self.read_plain(line, start, end) {
            return;
        }
        // A word at a time: names and values are short, a memchr call each costs more.
        let fields = &line[..end];
        let mut pos = start;
        while pos < end {
            let mut eq = pos;
            let mut unescaped = false;
            loop {
                eq = words::find(fields, eq, name_end);
                // A comma or space inside a name is escaped: the backslash is found first.
                if fields.get(eq) != Some(&b'\\') {
                    break;
                }
                unescaped = true;
                eq += 2;
            }
            let value_end = if fields.get(eq + 1) == Some(&b'"') {
                string_end(fields, eq + 2) + 1
            } else {
                words::find(fields, eq + 1, |w| words::eq(w, b','))
            };
            let name = if unescaped {
                let from = self.names.len();
                let raw = &line[pos..eq];
                self.names
                    .extend(raw.iter().copied().filter(|&c| c != b'\\'));
                from..self.names.len()
            } else {
                pos..eq
            };
            let ty = FieldType::of_value(&line[eq + 1..value_end]);
            self.refs.push(FieldRef {
                name,
                unescaped,
                ty,
            });
            pos = value_end + 1;
        }
    }

    /// `read`'s measurement of a line whose measurement or tags hold a backslash; returns
    /// where its fields start.
    fn read_escaped_head(&mut self, line: &[u8]) -> usize {
        let comma = unescaped(line, b',', 1).expect("a line has tags");
        self.measurement_unescaped = line[..comma].contains(&b'\\');
        self.measurement = if self.measurement_unescaped {
            self.names
                .extend(line[..comma].iter().copied().filter(|&c| c != b'\\'));
            0..self.names.len()
        } else {
            0..comma
        };
        unescaped(line, b' ', comma).expect("a line has fields") + 1
    }

    /// The fields of `line[start..end]` when it holds no quote or backslash (false, and no
    /// field, when it does): then every name and value is plain, so the `=` and `,` in it
    /// strictly alternate, and they are found 16 bytes at a time.
    fn read_plain(&mut self, line: &[u8], start: usize, end: usize) -> bool {
        let mut name = start;
        let mut eq = start;
        let mut after_eq = false;
        let mut at = start;
        while at < end {
            let Some((marks, quoted)) = block_marks(line, at, end) else {
                return false;
            };
            // Bits past `end` are the timestamp's or the padding's.
            let inside = if end - at < 16 {
                (1 << (end - at)) - 1
            } else {
                u32::MAX
            };
            if quoted & inside != 0 {
                self.refs.clear();
                return false;
            }
            let mut marks = marks & inside;
            while marks != 0 {
                let i = at + marks.trailing_zeros() as usize;
                marks &= marks - 1;
                if after_eq {
                    self.push_plain(line, name..eq, i);
                    name = i + 1;
                } else {
                    eq = i;
                }
                after_eq = !after_eq;
            }
            at += 16;
        }
        debug_assert!(after_eq, "a field set ends with a value");
        self.push_plain(line, name..eq, end);
        true
    }

    /// A plain field: its name's range, its value from after the `=` to `value_end`.
    fn push_plain(&mut self, line: &[u8], name: std::ops::Range<usize>, value_end: usize) {
        let ty = FieldType::of_value(&line[name.end + 1..value_end]);
        self.refs.push(FieldRef {
            name,
            unescaped: false,
            ty,
        });
    }

    fn measurement<'a>(&'a self, line: &'a [u8]) -> &'a [u8] {
        let from = if self.measurement_unescaped {
            &self.names
        } else {
            line
        };
        &from[self.measurement.clone()]
    }

    fn name<'a>(&'a self, line: &'a [u8], f: &FieldRef) -> &'a [u8] {
        let from = if f.unescaped { &self.names } else { line };
        &from[f.name.clone()]
    }
}

/// `(end of the measurement, start of the fields)` of a line whose measurement and tags hold
/// no backslash (`None` when they do): then the first comma ends the measurement and the first
/// space the tags. One word scan for that space, where finding the comma, the space and
/// checking for escapes took two memchr calls and a byte loop.
fn plain_head(line: &[u8]) -> Option<(usize, usize)> {
    let space = words::find(line, 0, |w| words::eq(w, b' ') | words::eq(w, b'\\'));
    let head = line
        .get(..space)
        .filter(|_| line.get(space) == Some(&b' '))?;
    let comma = words::find(head, 0, |w| words::eq(w, b','));
    (comma < space).then_some((comma, space + 1))
}

/// `words::field_marks` of the 16 bytes from `at`, those up to `end` copied into a padded
/// block when the line holds fewer.
fn block_marks(line: &[u8], at: usize, end: usize) -> Option<(u32, u32)> {
    words::field_marks(line, at).or_else(|| {
        let mut block = [0u8; 16];
        block[..end - at].copy_from_slice(&line[at..end]);
        words::field_marks(&block, 0)
    })
}

/// Lanes that end a field name or start an escape in it.
#[inline(always)]
fn name_end(w: u64) -> u64 {
    words::eq(w, b'=') | words::eq(w, b'\\')
}

/// The closing quote of a string value that starts at `from` (after its opening quote).
fn string_end(fields: &[u8], from: usize) -> usize {
    let mut i = from;
    loop {
        match fields.get(i) {
            Some(b'\\') => i += 2,
            Some(b'"') => return i,
            Some(_) => i += 1,
            None => panic!("a string value ends with a quote"),
        }
    }
}

/// The first `byte` at or after `from` that no backslash escapes.
fn unescaped(line: &[u8], byte: u8, from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let i = at + memchr::memchr(byte, &line[at..])?;
        if line[i - 1] != b'\\' {
            return Some(i);
        }
        at = i + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Reason;
    use crate::parse::parse_batch;

    fn body(metrics: &[&str]) -> String {
        let messages: Vec<String> = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    r#"{{"tenant_id":"t","device_id":"d{i}","site_id":"s","provision_token":"k","msg_type":"telemetry","metrics":{m}}}"#
                )
            })
            .collect();
        format!(r#"{{"messages":[{}]}}"#, messages.join(","))
    }

    fn admitted(types: &FieldTypes, metrics: &[&str]) -> (Vec<Option<Reason>>, Vec<String>) {
        let mut b = parse_batch(body(metrics).as_bytes(), 1, 8192).expect("a valid body");
        types.admit(&mut b).expect("first admit");
        let details = b.details().map(|(i, d)| format!("{i}: {d}")).collect();
        (b.reasons().collect(), details)
    }

    #[test]
    fn key_sets_hold_what_was_inserted_through_growth_and_clear() {
        let mut set = KeySet::default();
        assert!(!set.contains(7));
        // Keys sharing their low bits probe past each other.
        let keys: Vec<u64> = (1..200u64).map(|i| i << 20 | 5).chain([u64::MAX]).collect();
        for &k in &keys {
            set.insert(k);
            set.insert(k);
        }
        assert_eq!(set.len(), keys.len());
        assert!(keys.iter().all(|&k| set.contains(k)));
        assert!(!set.contains(6) && !set.contains(200 << 20 | 5));
        set.clear();
        assert_eq!(set.len(), 0);
        assert!(!set.contains(5 | 1 << 20));
    }

    #[test]
    fn lines_are_read_back_into_names_and_types() {
        let mut f = LineFields::default();
        let line = b"heartbeat,device_id=a\\ b\\,c,site_id=s\\=1 a\\ b=1.5,on=true,x\\,y\\=z=-2e-05,seq=3i 9\n";
        f.read(line);
        assert_eq!(f.measurement(line), b"heartbeat");
        let got: Vec<(&[u8], FieldType)> = f.refs.iter().map(|r| (f.name(line, r), r.ty)).collect();
        assert_eq!(
            got,
            [
                (&b"a b"[..], FieldType::Float),
                (b"on", FieldType::Boolean),
                (b"x,y=z", FieldType::Float),
                (b"seq", FieldType::Integer)
            ]
        );
        let line = b"telemetry,device_id=d,site_id=s seq=0i 1\n";
        f.read(line);
        assert_eq!(f.measurement(line), b"telemetry");
        assert_eq!(f.refs.len(), 1);
        // An escaped measurement: its comma and space are not where it ends.
        let line = b"cpu\\,load\\ 1,host=h on=false 9\n";
        f.read(line);
        assert_eq!(f.measurement(line), b"cpu,load 1");
        let got: Vec<(&[u8], FieldType)> = f.refs.iter().map(|r| (f.name(line, r), r.ty)).collect();
        assert_eq!(got, [(&b"on"[..], FieldType::Boolean)]);
        // Plain fields over several blocks, then a string value holding `,` and `=` late.
        let plain = b"m,t=1 a_long_field_name=1.5,b=true,c=-3i,d=1e-05,humidity=12.25 99\n";
        let quoted = b"m,t=1 a_long_field_name=1.5,b=true,c=-3i,d=1e-05,s=\"x,y=\\\"z\" 99\n";
        for line in [&plain[..], &quoted[..]] {
            f.read(line);
            let got: Vec<(&[u8], FieldType)> =
                f.refs.iter().map(|r| (f.name(line, r), r.ty)).collect();
            let last = if line == plain {
                (&b"humidity"[..], FieldType::Float)
            } else {
                (&b"s"[..], FieldType::String)
            };
            assert_eq!(
                got,
                [
                    (&b"a_long_field_name"[..], FieldType::Float),
                    (b"b", FieldType::Boolean),
                    (b"c", FieldType::Integer),
                    (b"d", FieldType::Float),
                    last
                ]
            );
        }
    }

    #[test]
    fn the_first_accepted_type_wins_within_and_across_batches() {
        let types = FieldTypes::new(100);
        let (reasons, details) = admitted(
            &types,
            &[r#"{"temp":true}"#, r#"{"temp":21.5}"#, r#"{"temp":false}"#],
        );
        let bad = Some(Reason::InvalidMetrics);
        assert_eq!(reasons, [None, bad, None]);
        assert_eq!(
            details,
            ["1: field type conflict: \"temp\" of telemetry is boolean, this message sends float"]
        );
        let (reasons, _) = admitted(&types, &[r#"{"temp":3,"hum":1}"#, r#"{"hum":true}"#]);
        // Nothing of a rejected item is remembered: the next item decides `hum`.
        assert_eq!(reasons, [bad, None]);
        assert_eq!(types.get("t", "telemetry", "hum"), Some(FieldType::Boolean));
        assert_eq!(types.get("t", "telemetry", "seq"), Some(FieldType::Integer));
        assert_eq!(types.len(), 3);
    }

    #[test]
    fn learned_types_override_and_the_cap_bounds_what_is_remembered() {
        let types = FieldTypes::new(3);
        assert!(types.learn("t", "telemetry", "temp", FieldType::Integer));
        // Any measurement (line protocol writes any); another tenant's cap is its own.
        assert!(types.learn("t2", "power", "temp", FieldType::Integer));
        assert_eq!(types.get("t2", "power", "temp"), Some(FieldType::Integer));
        let (reasons, details) = admitted(&types, &[r#"{"temp":1}"#]);
        assert_eq!(reasons, [Some(Reason::InvalidMetrics)]);
        assert_eq!(
            details,
            ["0: field type conflict: \"temp\" of telemetry is integer, this message sends float"]
        );
        assert!(types.learn("t", "telemetry", "temp", FieldType::Float));
        let (reasons, _) = admitted(&types, &[r#"{"temp":1,"a":1,"b":true}"#]);
        assert_eq!(reasons, [None]);
        // temp, a, b remembered; seq, beyond the cap of 3, is not, and passes unchecked.
        assert_eq!(types.len(), 4);
        assert_eq!(types.untracked(), 1);
        assert_eq!(types.get("t", "telemetry", "seq"), None);
        let (reasons, _) = admitted(&types, &[r#"{"b":false}"#]);
        assert_eq!(reasons, [None]);
        assert_eq!(types.untracked(), 2);
        assert!(!types.learn("t", "telemetry", "c", FieldType::String));
        // Another tenant has its own fields and its own cap.
        assert_eq!(types.get("u", "telemetry", "temp"), None);
    }

    #[test]
    fn verified_shapes_still_count_untracked_fields_and_see_learned_types() {
        let types = FieldTypes::new(2);
        let bad = Some(Reason::InvalidMetrics);
        // The second item has the first one's shape.
        let (reasons, _) = admitted(&types, &[r#"{"temp":1}"#, r#"{"temp":2}"#]);
        assert_eq!(reasons, [None, None]);
        assert!(types.learn("t", "telemetry", "temp", FieldType::Integer));
        let (reasons, details) = admitted(&types, &[r#"{"temp":3}"#]);
        assert_eq!(reasons, [bad]);
        assert_eq!(
            details,
            ["0: field type conflict: \"temp\" of telemetry is integer, this message sends float"]
        );
        // A new shape with a field found before is checked against the learned type too.
        let (reasons, _) = admitted(&types, &[r#"{"temp":3,"on":true}"#]);
        assert_eq!(reasons, [bad]);
        assert!(types.learn("t", "telemetry", "temp", FieldType::Float));
        // At the cap: `on` is untracked, and counted again for each item of the same shape.
        let (reasons, _) = admitted(&types, &[r#"{"temp":1,"on":true}"#; 3]);
        assert_eq!(reasons, [None, None, None]);
        assert_eq!(types.untracked(), 3);
        assert_eq!(types.len(), 2);
    }

    #[test]
    fn admit_is_before_append_and_once() {
        let types = FieldTypes::new(10);
        let mut b = parse_batch(body(&["{}"]).as_bytes(), 1, 8192).expect("a valid body");
        types.admit(&mut b).expect("first admit");
        assert_eq!(types.admit(&mut b), Err(UsageError::AlreadyAdmitted));
        assert_eq!(
            b.resolve::<&str>(&[(1, None)]),
            Err(UsageError::AlreadyAdmitted)
        );
        let mut b = parse_batch(body(&["{}"]).as_bytes(), 1, 8192).expect("a valid body");
        b.append_with(|_, _| true).expect("append");
        assert_eq!(types.admit(&mut b), Err(UsageError::AlreadyAppended));
    }

    #[test]
    fn unknown_lists_each_new_field_once_with_its_first_type_and_admits_nothing() {
        let types = FieldTypes::new(10);
        types.learn("t", "telemetry", "a", FieldType::Float);
        let b = parse_batch(
            body(&[r#"{"a":1,"b":true}"#, r#"{"b":2,"c":3}"#]).as_bytes(),
            1,
            8192,
        )
        .expect("a valid body");
        let new: Vec<(String, String, String, &str)> = types
            .unknown(&b)
            .into_iter()
            .map(|(t, m, f, ty)| (t, m, f, ty.name()))
            .collect();
        let row = |f: &str, ty| ("t".to_string(), "telemetry".to_string(), f.to_string(), ty);
        // `seq` is a field of every line.
        let expected = [
            row("b", "boolean"),
            row("seq", "integer"),
            row("c", "float"),
        ];
        assert_eq!(new, expected);
        assert_eq!(types.get("t", "telemetry", "b"), None);
        assert_eq!(admitted(&types, &[r#"{"a":1}"#]).0, [None]);
    }
}
