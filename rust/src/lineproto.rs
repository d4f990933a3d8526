//! InfluxDB line-protocol bodies → validated items of a `Batch`, each line re-encoded in the
//! core's canonical form with the writer's identity tags (`device_id`, `site_id`), so the rest
//! of the pipeline (admission, field types, buffers, WAL) is the JSON route's.
//!
//! One line per `\n`; blank lines and `#` comments are skipped and take no item. A line is
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, read left to right:
//! the first rule it breaks refuses it with a reason code and a detail (docs/core-rules.md,
//! "Line protocol"). Names (measurement, tag keys and values, field keys) follow the id rules
//! once unescaped, so a backslash never reaches InfluxDB outside a string value.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::batch::{Batch, Identity};
use crate::encode::{push_lp_measurement, push_lp_string, Float, Key};
use crate::errors::{BodyError, Reason, UsageError};
use crate::ids::{checked_id, valid_id, valid_tenant};
use crate::json::Number;
use crate::schema::{FieldType, Shape};
use crate::timestamp::{MAX_NS, MIN_NS};
use crate::words;

/// Tags a line may send (its `device_id`/`site_id` tags included).
pub const MAX_LP_TAGS: usize = 64;
/// Fields a line may send (the JSON route's `MAX_METRICS`).
pub const MAX_LP_FIELDS: usize = 256;
/// Lines (blank lines and comments included) a body may hold.
pub const MAX_LP_LINES: usize = 100_000;

/// Keys InfluxDB refuses as tag or field keys.
const RESERVED_KEYS: [&str; 3] = ["time", "_field", "_measurement"];
/// The identity tags the core writes; a line's own are never written.
const DEVICE_TAG: &str = "device_id";
const SITE_TAG: &str = "site_id";

/// The unit of a line's timestamp, as the `precision` query parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    ns_per_unit: i64,
}

impl Precision {
    /// `ns`, `us`/`µs`/`u`, `ms`, `s`, `m`, `h`; an empty name is `ns`.
    pub fn from_name(name: &str) -> Result<Precision, BodyError> {
        let ns_per_unit = match name {
            "" | "ns" => 1,
            "us" | "\u{b5}s" | "u" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(BodyError::Precision(name.to_owned())),
        };
        Ok(Precision { ns_per_unit })
    }
}

/// Who writes the body, which decides each line's device.
pub enum Writer<'w> {
    /// A device with its own credential: every line is its.
    Device {
        device: &'w str,
        site: &'w str,
        token: &'w str,
    },
    /// A tenant key: each line's `device_id` tag names the device, which must be one of
    /// `sites` (the tenant's active devices asked for, each with its site).
    TenantKey { sites: &'w HashMap<String, String> },
}

/// Why a line is refused; `reason` and `detail` are what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineError {
    TooLong,
    Measurement,
    TagSet,
    TooManyTags,
    MissingFields,
    FieldSet,
    FieldValue,
    TooManyFields,
    Timestamp,
    NoDevice,
    UnknownDevice,
}

impl LineError {
    fn reason(self) -> Reason {
        match self {
            LineError::TooLong => Reason::PayloadTooLarge,
            LineError::Measurement
            | LineError::TagSet
            | LineError::TooManyTags
            | LineError::MissingFields
            | LineError::NoDevice => Reason::InvalidSchema,
            LineError::FieldSet | LineError::FieldValue | LineError::TooManyFields => {
                Reason::InvalidMetrics
            }
            LineError::Timestamp => Reason::InvalidTimestamp,
            LineError::UnknownDevice => Reason::Unauthorized,
        }
    }

    fn detail(self, max_line_bytes: usize) -> String {
        match self {
            LineError::TooLong => format!("line exceeds {max_line_bytes} bytes"),
            LineError::Measurement => "invalid measurement".into(),
            LineError::TagSet => "invalid tag set".into(),
            LineError::TooManyTags => format!("more than {MAX_LP_TAGS} tags"),
            LineError::MissingFields => "missing fields".into(),
            LineError::FieldSet => "invalid field set".into(),
            LineError::FieldValue => "invalid field value".into(),
            LineError::TooManyFields => format!("more than {MAX_LP_FIELDS} fields"),
            LineError::Timestamp => "invalid timestamp".into(),
            LineError::NoDevice => "a tenant key writes lines with a device_id tag".into(),
            LineError::UnknownDevice => "device_id is not an active device of the tenant".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum FieldValue<'a> {
    Float(Float<'a>),
    Integer(i64),
    Unsigned(u64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl FieldValue<'_> {
    fn field_type(&self) -> FieldType {
        match self {
            FieldValue::Float(_) => FieldType::Float,
            FieldValue::Integer(_) => FieldType::Integer,
            FieldValue::Unsigned(_) => FieldType::Unsigned,
            FieldValue::Str(_) => FieldType::String,
            FieldValue::Bool(_) => FieldType::Boolean,
        }
    }
}

/// A name, unescaped, and whether line protocol escapes some of it (as `checked_id`).
#[derive(Debug, Clone, Default)]
struct Name<'a> {
    text: Cow<'a, str>,
    escape: bool,
}

impl Name<'_> {
    fn key(&self) -> Key<'_> {
        Key::scanned(self.text.as_bytes(), self.escape)
    }
}

/// One field of a line.
struct Field<'a> {
    /// The key as the line sends it.
    sent: &'a str,
    key: Name<'a>,
    value: FieldValue<'a>,
}

/// One line, read. Most lines of a body repeat the measurement, tags and field keys of the
/// line before, so what was read of those is kept from line to line: text sent again, byte
/// for byte, is not read again.
#[derive(Default)]
struct Parsed<'a> {
    /// The measurement and tag set as sent, when `measurement`, `tags`, `device_tag` and
    /// `tag_keys` hold them whole.
    series: Option<&'a str>,
    measurement: Name<'a>,
    /// The line's tags but its identity tags, sorted by key.
    tags: Vec<(Name<'a>, Name<'a>)>,
    device_tag: Option<Name<'a>>,
    /// Every tag key of the line, identity tags included (duplicates and clashes).
    tag_keys: Vec<Cow<'a, str>>,
    /// The line's fields, in line order. After a refused line, its first fields and then
    /// fields of an earlier line read after the same keys: each entry's key passed the key
    /// rules after the keys of the entries before it.
    fields: Vec<Field<'a>>,
    /// The `schema::Shape` of the measurement and fields.
    shape: u64,
    /// In the body's precision.
    timestamp: Option<i64>,
}

/// Checks what the caller (not the client) gives `parse_lines`: a valid tenant, and for a
/// device writer valid ids.
pub fn check_writer(tenant: &str, writer: &Writer<'_>) -> Result<(), UsageError> {
    if !valid_tenant(tenant) {
        return Err(UsageError::BadSetting {
            name: "tenant_id",
            rule: "a valid tenant",
        });
    }
    if let Writer::Device {
        device,
        site,
        token,
    } = writer
    {
        if ![device, site, token].iter().all(|s| valid_id(s)) {
            return Err(UsageError::BadSetting {
                name: "device",
                rule: "valid ids (device_id, site_id, provision_token)",
            });
        }
    }
    Ok(())
}

/// The lines of a body, with their 1-based numbers: UTF-8, at most `MAX_LP_LINES`.
fn lines(body: &[u8]) -> Result<impl Iterator<Item = (u32, &str)>, BodyError> {
    let text = simdutf8::basic::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let count = memchr::memchr_iter(b'\n', body).count() + usize::from(!body.ends_with(b"\n"));
    if count > MAX_LP_LINES {
        return Err(BodyError::TooManyLines {
            count,
            max: MAX_LP_LINES,
        });
    }
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, line)| ((i + 1) as u32, line)))
}

/// A line without the spaces, tabs and carriage returns around it; None for a blank line or
/// a comment.
fn content(line: &str) -> Option<&str> {
    let line = line.trim_matches([' ', '\t', '\r']);
    (!line.is_empty() && !line.starts_with('#')).then_some(line)
}

/// Parse a body, in `precision`, for `tenant` written by `writer` (`check_writer` passed):
/// one item per line that is neither blank nor a comment. A line without a timestamp gets
/// `receive_ns` plus its item index.
pub fn parse_lines(
    body: &[u8],
    tenant: &str,
    receive_ns: i64,
    precision: Precision,
    max_line_bytes: usize,
    writer: &Writer<'_>,
) -> Result<Batch, BodyError> {
    let lines = lines(body)?;
    let mut batch = Batch::with_capacity(64, body.len() + body.len() / 2).received_at(receive_ns);
    if matches!(writer, Writer::TenantKey { .. }) {
        batch = batch.by_tenant_key();
    }
    let mut parsed = Parsed::default();
    let mut group = None;
    let mut index: i64 = 0;
    for (number, line) in lines {
        let Some(line) = content(line) else {
            continue;
        };
        batch.number_next(number);
        let read = if line.len() > max_line_bytes {
            Err(LineError::TooLong)
        } else {
            read_line(line, &mut parsed, writer)
                .and_then(|()| timestamp_ns(parsed.timestamp, precision, receive_ns, index))
                .and_then(|ts| identity(&parsed, writer).map(|id| (ts, id)))
        };
        index += 1;
        match read {
            Ok((ts, (device, site, token))) => {
                let id = Identity {
                    tenant,
                    device,
                    site,
                    token,
                };
                let at = batch.find_group_after(group, &id);
                group = Some(at);
                // An identity an earlier line has: its ids were scanned then (an id the rules
                // refuse, only a registry's site could be, is escaped byte by byte).
                let escapes = match at.found {
                    Some(g) => batch.group_escapes(g),
                    None => (
                        checked_id(device).unwrap_or(true),
                        checked_id(site).unwrap_or(true),
                    ),
                };
                let device = Key::scanned(device.as_bytes(), escapes.0);
                let site = Key::scanned(site.as_bytes(), escapes.1);
                batch.push_shaped(&id, at, escapes, parsed.shape, |out| {
                    encode(&parsed, device, site, ts, out);
                });
            }
            Err(e) => {
                // A tenant key's refused line names no device the response could echo.
                let device = match writer {
                    Writer::Device { device, .. } => Some(*device),
                    Writer::TenantKey { .. } => None,
                };
                let detail = e.detail(max_line_bytes);
                batch.push_rejected_with(e.reason(), Some(tenant), device, &detail);
            }
        }
    }
    Ok(batch)
}

/// The `(device, site, token)` a read line is written for.
fn identity<'w>(
    p: &'w Parsed<'_>,
    writer: &'w Writer<'_>,
) -> Result<(&'w str, &'w str, &'w str), LineError> {
    match writer {
        Writer::Device {
            device,
            site,
            token,
        } => Ok((device, site, token)),
        Writer::TenantKey { sites } => {
            let device = p.device_tag.as_ref().ok_or(LineError::NoDevice)?;
            let site = sites.get(&*device.text).ok_or(LineError::UnknownDevice)?;
            Ok((&device.text, site, ""))
        }
    }
}

/// The distinct `device_id` tag values of a body's lines that a tenant key could write (every
/// rule but the device's own checked), in order of first appearance: the devices to look up.
pub fn line_devices(body: &[u8], max_line_bytes: usize) -> Result<Vec<String>, BodyError> {
    let no_sites = HashMap::new();
    let writer = Writer::TenantKey { sites: &no_sites };
    let mut parsed = Parsed::default();
    let mut devices: Vec<String> = Vec::new();
    for (_, line) in lines(body)? {
        let Some(line) = content(line) else {
            continue;
        };
        if line.len() > max_line_bytes || read_line(line, &mut parsed, &writer).is_err() {
            continue;
        }
        if let Some(d) = parsed.device_tag.as_ref().map(|d| &*d.text) {
            if !devices.iter().any(|known| known == d) {
                devices.push(d.to_owned());
            }
        }
    }
    Ok(devices)
}

/// The line's timestamp in ns: its own in `precision`, else `receive_ns + index`.
fn timestamp_ns(
    own: Option<i64>,
    precision: Precision,
    receive_ns: i64,
    index: i64,
) -> Result<i64, LineError> {
    let ns = match own {
        Some(t) => t.checked_mul(precision.ns_per_unit),
        None => receive_ns.checked_add(index),
    };
    ns.filter(|ns| (MIN_NS..=MAX_NS).contains(ns))
        .ok_or(LineError::Timestamp)
}

/// `{measurement},{tags sorted by key, identity tags among them} {fields in line order} {ts}\n`.
fn encode(p: &Parsed<'_>, device: Key<'_>, site: Key<'_>, ts: i64, out: &mut Vec<u8>) {
    let measurement = p.measurement.text.as_bytes();
    if p.measurement.escape {
        push_lp_measurement(out, measurement);
    } else {
        out.extend_from_slice(measurement);
    }
    let mut identity = [(DEVICE_TAG, device), (SITE_TAG, site)]
        .into_iter()
        .peekable();
    for (k, v) in &p.tags {
        while let Some((ik, iv)) = identity.next_if(|(ik, _)| ik.as_bytes() < k.text.as_bytes()) {
            push_tag(out, Key::scanned(ik.as_bytes(), false), iv);
        }
        push_tag(out, k.key(), v.key());
    }
    for (ik, iv) in identity {
        push_tag(out, Key::scanned(ik.as_bytes(), false), iv);
    }
    let mut num = itoa::Buffer::new();
    for (i, f) in p.fields.iter().enumerate() {
        out.push(if i == 0 { b' ' } else { b',' });
        f.key.key().push(out);
        out.push(b'=');
        match &f.value {
            FieldValue::Float(f) => f.push(out),
            FieldValue::Integer(n) => {
                out.extend_from_slice(num.format(*n).as_bytes());
                out.push(b'i');
            }
            FieldValue::Unsigned(n) => {
                out.extend_from_slice(num.format(*n).as_bytes());
                out.push(b'u');
            }
            FieldValue::Str(s) => push_lp_string(out, s.as_bytes()),
            FieldValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
    out.push(b' ');
    out.extend_from_slice(num.format(ts).as_bytes());
    out.push(b'\n');
}

fn push_tag(out: &mut Vec<u8>, key: Key<'_>, value: Key<'_>) {
    out.push(b',');
    key.push(out);
    out.push(b'=');
    value.push(out);
}

/// Where a name ends: the first of `stops` no backslash escapes, or the end.
fn name_end(b: &[u8], from: usize, stops: &[u8]) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if stops.contains(&c) => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// A name with its escapes (`\` before one of `escapable`) undone; None when a backslash
/// escapes anything else, or the name breaks the id rules.
fn name<'a>(raw: &'a str, escapable: &[u8]) -> Option<Name<'a>> {
    let text = if raw.contains('\\') {
        let b = raw.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                let next = *b.get(i + 1)?;
                if !escapable.contains(&next) {
                    return None;
                }
                out.push(next);
                i += 2;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Cow::Owned(String::from_utf8(out).expect("only ASCII escapes were removed"))
    } else {
        Cow::Borrowed(raw)
    };
    let escape = checked_id(&text)?;
    Some(Name { text, escape })
}

fn reserved(key: &str) -> bool {
    RESERVED_KEYS.contains(&key)
}

/// Whether `b` holds `sent` from `at`, followed by `stop`.
fn sent_again(b: &[u8], at: usize, sent: &str, stop: u8) -> bool {
    b.get(at..)
        .is_some_and(|rest| rest.starts_with(sent.as_bytes()))
        && b.get(at + sent.len()) == Some(&stop)
}

/// Reads one line (without its newline, trimmed, not a comment) into `p`.
fn read_line<'a>(line: &'a str, p: &mut Parsed<'a>, writer: &Writer<'_>) -> Result<(), LineError> {
    p.timestamp = None;
    let b = line.as_bytes();
    // Up to an unescaped space the measurement and tags read alike whatever follows.
    let mut at = match p.series.take() {
        Some(series) if sent_again(b, 0, series, b' ') => series.len(),
        _ => read_series(line, p, writer)?,
    };
    p.series = Some(&line[..at]);
    while b.get(at) == Some(&b' ') {
        at += 1;
    }
    if at >= b.len() {
        return Err(LineError::MissingFields);
    }
    at = read_fields(line, at, p)?;
    if at < b.len() {
        while b.get(at) == Some(&b' ') {
            at += 1;
        }
        p.timestamp = Some(integer(&b[at..]).ok_or(LineError::Timestamp)?);
    }
    Ok(())
}

/// Reads the measurement and the tag set; returns where they end (a space or the end).
fn read_series<'a>(
    line: &'a str,
    p: &mut Parsed<'a>,
    writer: &Writer<'_>,
) -> Result<usize, LineError> {
    p.tags.clear();
    p.tag_keys.clear();
    p.device_tag = None;
    let b = line.as_bytes();
    let end = name_end(b, 0, b", ");
    p.measurement = name(&line[..end], b", ").ok_or(LineError::Measurement)?;
    if b.get(end) == Some(&b',') {
        return read_tags(line, end + 1, p, writer);
    }
    Ok(end)
}

/// Reads the tag set from `at` (after the measurement's comma); returns where it ended (a
/// space or the end).
fn read_tags<'a>(
    line: &'a str,
    mut at: usize,
    p: &mut Parsed<'a>,
    writer: &Writer<'_>,
) -> Result<usize, LineError> {
    let b = line.as_bytes();
    loop {
        let eq = name_end(b, at, b",= ");
        if b.get(eq) != Some(&b'=') {
            return Err(LineError::TagSet);
        }
        let key = name(&line[at..eq], b",= ").ok_or(LineError::TagSet)?;
        let end = name_end(b, eq + 1, b",= ");
        if b.get(end) == Some(&b'=') {
            return Err(LineError::TagSet);
        }
        let value = name(&line[eq + 1..end], b",= ").ok_or(LineError::TagSet)?;
        if reserved(&key.text) || p.tag_keys.contains(&key.text) {
            return Err(LineError::TagSet);
        }
        if p.tag_keys.len() == MAX_LP_TAGS {
            return Err(LineError::TooManyTags);
        }
        p.tag_keys.push(key.text.clone());
        match &*key.text {
            DEVICE_TAG => {
                if matches!(writer, Writer::TenantKey { .. }) {
                    p.device_tag = Some(value);
                }
            }
            SITE_TAG => {}
            _ => p.tags.push((key, value)),
        }
        at = end;
        if b.get(at) != Some(&b',') {
            // Keys are distinct: the order is total.
            p.tags
                .sort_unstable_by(|a, b| a.0.text.as_bytes().cmp(b.0.text.as_bytes()));
            return Ok(at);
        }
        at += 1;
    }
}

/// Reads the field set from `at`, and the line's shape; returns where it ended (a space or
/// the end).
fn read_fields<'a>(line: &'a str, mut at: usize, p: &mut Parsed<'a>) -> Result<usize, LineError> {
    let b = line.as_bytes();
    let mut shape = Shape::named(p.measurement.text.as_bytes());
    // Fields of this line so far: `p.fields[..n]`.
    let mut n = 0;
    loop {
        // The key the earlier line sent after the same keys passed the rules but one.
        let (eq, fresh) = match p.fields.get(n).filter(|f| sent_again(b, at, f.sent, b'=')) {
            Some(f) => (at + f.sent.len(), None),
            None => {
                let eq = name_end(b, at, b",= ");
                if b.get(eq) != Some(&b'=') {
                    return Err(LineError::FieldSet);
                }
                let key = name(&line[at..eq], b",= ").ok_or(LineError::FieldSet)?;
                let text = &*key.text;
                if reserved(text)
                    || text == DEVICE_TAG
                    || text == SITE_TAG
                    || p.fields[..n].iter().any(|f| f.key.text == text)
                {
                    return Err(LineError::FieldSet);
                }
                (eq, Some(key))
            }
        };
        let text = fresh
            .as_ref()
            .unwrap_or_else(|| &p.fields[n].key)
            .text
            .as_ref();
        // The rule that depends on the tags.
        if p.tag_keys.iter().any(|k| k == text) {
            return Err(LineError::FieldSet);
        }
        let (value, end) = if b.get(eq + 1) == Some(&b'"') {
            let close = string_end(b, eq + 2).ok_or(LineError::FieldSet)?;
            if !matches!(b.get(close + 1), None | Some(b',' | b' ')) {
                return Err(LineError::FieldSet);
            }
            let value = FieldValue::Str(unquote(&line[eq + 2..close]));
            (value, close + 1)
        } else {
            let end = b[eq + 1..]
                .iter()
                .position(|&c| matches!(c, b',' | b' '))
                .map_or(b.len(), |n| eq + 1 + n);
            let value = field_value(&line[eq + 1..end]).ok_or(LineError::FieldValue)?;
            (value, end)
        };
        if n == MAX_LP_FIELDS {
            return Err(LineError::TooManyFields);
        }
        let ty = value.field_type();
        match fresh {
            Some(key) => {
                // The fields after a new key were read after other keys: forgotten.
                p.fields.truncate(n);
                p.fields.push(Field {
                    sent: &line[at..eq],
                    key,
                    value,
                });
            }
            None => p.fields[n].value = value,
        }
        let text = p.fields[n].key.text.as_bytes();
        shape.field(text, words::head(text), ty);
        n += 1;
        at = end;
        if b.get(at) != Some(&b',') {
            p.fields.truncate(n);
            p.shape = shape.finish();
            return Ok(at);
        }
        at += 1;
    }
}

/// The closing quote of a string value starting at `from` (after its opening quote): a
/// backslash takes the byte after it along.
fn string_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// A string value's text: `\"` and `\\` are escapes, any other backslash is itself.
fn unquote(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && matches!(b.get(i + 1), Some(b'"' | b'\\')) {
            i += 1;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8(out).expect("only ASCII escapes were removed"))
}

/// A field value that is not a string: a boolean in any of InfluxDB's spellings, `{n}i`,
/// `{n}u`, or a finite float.
fn field_value(v: &str) -> Option<FieldValue<'_>> {
    let b = v.as_bytes();
    match b {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Some(FieldValue::Bool(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    match b.split_last()? {
        (b'i', n) => integer(n).map(FieldValue::Integer),
        (b'u', n) => unsigned(n).map(FieldValue::Unsigned),
        _ => float(v).map(FieldValue::Float),
    }
}

/// `d+` that fits a u64.
fn unsigned(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let digit = c.wrapping_sub(b'0');
        (digit < 10)
            .then(|| n.checked_mul(10)?.checked_add(u64::from(digit)))
            .flatten()
    })
}

/// `-?d+` that fits an i64.
fn integer(b: &[u8]) -> Option<i64> {
    match b.split_first() {
        Some((b'-', digits)) => 0i64.checked_sub_unsigned(unsigned(digits)?),
        _ => i64::try_from(unsigned(b)?).ok(),
    }
}

/// A finite float `-?(d+(.d*)?|.d+)([eE][+-]?d+)?`. Most are JSON numbers too, whose digits
/// `Float` prints without a float conversion; the others (`1.`, `.5`, `01`) are converted.
fn float(v: &str) -> Option<Float<'_>> {
    let b = v.as_bytes();
    let sign = usize::from(b.first() == Some(&b'-'));
    let int_end = words::skip_digits(b, sign);
    let dot = b.get(int_end) == Some(&b'.');
    let frac_end = if dot {
        words::skip_digits(b, int_end + 1)
    } else {
        int_end
    };
    let frac_digits = frac_end - int_end - usize::from(dot);
    if int_end == sign && frac_digits == 0 {
        return None;
    }
    if let Some(exp) = b.get(frac_end..).filter(|e| !e.is_empty()) {
        let (e, exp) = exp.split_first()?;
        let exp = exp
            .strip_prefix(b"+")
            .or(exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        if !matches!(e, b'e' | b'E') || exp.is_empty() || !exp.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    let int = &b[sign..int_end];
    let json = !int.is_empty() && (int.len() == 1 || int[0] != b'0') && (!dot || frac_digits > 0);
    if json {
        return Float::of(&Number {
            text: v,
            int_end,
            frac_end,
        });
    }
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(Float::Binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Precision = Precision { ns_per_unit: 1 };

    fn device() -> Writer<'static> {
        Writer::Device {
            device: "d 1",
            site: "s=1",
            token: "tok",
        }
    }

    /// `(line number, reason or None, line or detail)` per item.
    fn parsed(body: &str, writer: &Writer<'_>) -> Vec<(u32, Option<Reason>, String)> {
        let b = parse_lines(body.as_bytes(), "t", 1_000, NS, 200, writer).expect("a body");
        let details: HashMap<usize, &str> = b.details().collect();
        let mut lines = b.accepted_lines().map(|(_, l)| String::from_utf8_lossy(l));
        b.reasons()
            .zip(b.line_numbers())
            .enumerate()
            .map(|(i, (r, &n))| {
                let text = match r {
                    None => lines.next().expect("a line per accepted item").into_owned(),
                    Some(_) => details[&i].to_owned(),
                };
                (n, r, text)
            })
            .collect()
    }

    #[test]
    fn lines_are_re_encoded_with_the_writers_identity() {
        let got = parsed(
            "# comment\n\n  w\\ x\\,y=z,zone=a\\ b,device_id=forged,site_id=no v=1,\
             n=-3i,u=7u,s=\"a\\\"b\\\\c\\d\",on=T,off=FALSE 42 \r\nm f=1e3\n",
            &device(),
        );
        assert_eq!(
            got,
            [
                (
                    3,
                    None,
                    "w\\ x\\,y=z,device_id=d\\ 1,site_id=s\\=1,zone=a\\ b v=1.0,n=-3i,u=7u,\
                     s=\"a\\\"b\\\\c\\\\d\",on=true,off=false 42\n"
                        .into()
                ),
                (
                    4,
                    None,
                    "m,device_id=d\\ 1,site_id=s\\=1 f=1000.0 1001\n".into()
                ),
            ]
        );
    }

    #[test]
    fn each_broken_rule_refuses_its_line_with_reason_and_detail() {
        use Reason::*;
        let long = format!("m f={}", "1".repeat(200));
        let cases: &[(&str, Reason, &str)] = &[
            (&long, PayloadTooLarge, "line exceeds 200 bytes"),
            (",t=a f=1", InvalidSchema, "invalid measurement"),
            ("m\\=x f=1", InvalidSchema, "invalid measurement"),
            ("m", InvalidSchema, "missing fields"),
            ("m,t=a", InvalidSchema, "missing fields"),
            ("m,t= f=1", InvalidSchema, "invalid tag set"),
            ("m,t=a=b f=1", InvalidSchema, "invalid tag set"),
            ("m,t=a,t=b f=1", InvalidSchema, "invalid tag set"),
            ("m,time=a f=1", InvalidSchema, "invalid tag set"),
            ("m,t=a\\\\b f=1", InvalidSchema, "invalid tag set"),
            ("m f", InvalidMetrics, "invalid field set"),
            ("m f=1,f=2", InvalidMetrics, "invalid field set"),
            ("m,t=a t=1", InvalidMetrics, "invalid field set"),
            ("m device_id=1", InvalidMetrics, "invalid field set"),
            ("m f=\"open", InvalidMetrics, "invalid field set"),
            ("m f=\"a\"b", InvalidMetrics, "invalid field set"),
            ("m f=1,", InvalidMetrics, "invalid field set"),
            ("m f=1.5i", InvalidMetrics, "invalid field value"),
            ("m f=-1u", InvalidMetrics, "invalid field value"),
            (
                "m f=9223372036854775808i",
                InvalidMetrics,
                "invalid field value",
            ),
            ("m f=1e400", InvalidMetrics, "invalid field value"),
            ("m f=NaN", InvalidMetrics, "invalid field value"),
            ("m f=tru", InvalidMetrics, "invalid field value"),
            ("m f=1 1.5", InvalidTimestamp, "invalid timestamp"),
            (
                "m f=1 9223372036854775807",
                InvalidTimestamp,
                "invalid timestamp",
            ),
        ];
        for &(line, reason, detail) in cases {
            let got = parsed(line, &device());
            assert_eq!(got, [(1, Some(reason), detail.into())], "{line:?}");
        }
        let many_tags: String = (0..65).map(|i| format!(",t{i}=v")).collect();
        let body = format!("m{many_tags} f=1");
        let b = parse_lines(body.as_bytes(), "t", 0, NS, 1000, &device()).expect("a body");
        assert_eq!(b.details().next(), Some((0, "more than 64 tags")));
    }

    #[test]
    fn a_tenant_key_writes_for_the_devices_its_lines_name() {
        let sites = HashMap::from([("d2".to_owned(), "s2".to_owned())]);
        let writer = Writer::TenantKey { sites: &sites };
        let body = "m,device_id=d2,site_id=x f=1 5\nm f=1\nm,device_id=d3 f=1\n";
        let got = parsed(body, &writer);
        assert_eq!(
            got,
            [
                (1, None, "m,device_id=d2,site_id=s2 f=1.0 5\n".into()),
                (
                    2,
                    Some(Reason::InvalidSchema),
                    "a tenant key writes lines with a device_id tag".into()
                ),
                (
                    3,
                    Some(Reason::Unauthorized),
                    "device_id is not an active device of the tenant".into()
                ),
            ]
        );
        let b = parse_lines(body.as_bytes(), "t", 0, NS, 200, &writer).expect("a body");
        assert!(b.tenant_key());
        assert_eq!(
            line_devices(body.as_bytes(), 200).expect("a body"),
            ["d2", "d3"]
        );
    }

    #[test]
    fn details_stay_in_line_order_when_field_types_add_theirs() {
        let types = crate::fields::FieldTypes::new(10);
        let mut b = parse_lines(b"m a=1\nm a=2i\nm a", "t", 0, NS, 200, &device()).expect("a body");
        types.admit(&mut b).expect("admit");
        let details: Vec<usize> = b.details().map(|(i, _)| i).collect();
        assert_eq!(details, [1, 2]);
    }

    #[test]
    fn floats_print_as_python_repr_whether_or_not_they_are_json_numbers() {
        for (sent, written) in [
            ("22", "22.0"),
            ("-0", "-0.0"),
            ("22.50", "22.5"),
            ("1.", "1.0"),
            (".5", "0.5"),
            ("-.25e1", "-2.5"),
            ("007", "7.0"),
            ("00.10", "0.1"),
            ("1E5", "100000.0"),
            ("1e16", "1e+16"),
            ("0.00001234", "1.234e-05"),
            ("1234567890.123456789", "1234567890.1234567"),
            ("5e-324", "5e-324"),
        ] {
            let body = format!("m f={sent} 1");
            let b = parse_lines(body.as_bytes(), "t", 0, NS, 200, &device()).expect("a body");
            let (_, line) = b.accepted_lines().next().expect("accepted");
            let want = format!("m,device_id=d\\ 1,site_id=s\\=1 f={written} 1\n");
            assert_eq!(String::from_utf8_lossy(line), want, "{sent}");
        }
    }

    #[test]
    fn lines_of_one_measurement_and_field_types_share_a_shape() {
        let body = "m f=1,n=2i 1\nm f=2.5,n=-3i 2\nm n=2i,f=1 3\nm f=1,n=2u 4\nm\\ x f=1,n=2i 5\n";
        let b = parse_lines(body.as_bytes(), "t", 0, NS, 200, &device()).expect("a body");
        let shapes: Vec<u64> = b.accepted_shapes().map(|(_, _, s)| s).collect();
        assert_eq!(shapes[0], shapes[1]);
        for other in &shapes[2..] {
            assert_ne!(shapes[0], *other);
        }
    }

    #[test]
    fn precisions_scale_timestamps_and_unknown_ones_are_refused() {
        for (name, ns) in [
            ("s", 2_000_000_000),
            ("\u{b5}s", 2_000),
            ("h", 7_200_000_000_000_i64),
        ] {
            let p = Precision::from_name(name).expect("a precision");
            let b = parse_lines(b"m f=1 2", "t", 0, p, 200, &device()).expect("a body");
            let (_, line) = b.accepted_lines().next().expect("accepted");
            assert!(line.ends_with(format!(" {ns}\n").as_bytes()), "{name}");
        }
        assert_eq!(
            Precision::from_name("d"),
            Err(BodyError::Precision("d".into()))
        );
        let bad = parse_lines(b"m f=1 \xff", "t", 0, NS, 200, &device());
        assert_eq!(bad.err(), Some(BodyError::NotUtf8));
    }
}
