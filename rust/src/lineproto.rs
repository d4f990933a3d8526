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
use crate::encode::{push_f64, push_lp_key, push_lp_measurement, push_lp_string};
use crate::errors::{BodyError, Reason, UsageError};
use crate::ids::{valid_id, valid_tenant};
use crate::timestamp::{MAX_NS, MIN_NS};

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
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Str(Cow<'a, str>),
    Bool(bool),
}

/// One line, read; buffers reused from line to line.
#[derive(Default)]
struct Parsed<'a> {
    measurement: Cow<'a, str>,
    /// The line's tags but its identity tags, in line order.
    tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    device_tag: Option<Cow<'a, str>>,
    /// Every tag key of the line, identity tags included (duplicates and clashes).
    tag_keys: Vec<Cow<'a, str>>,
    fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
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
    let mut out = Vec::with_capacity(256);
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
                out.clear();
                encode(&parsed, device, site, ts, &mut out);
                let id = Identity {
                    tenant,
                    device,
                    site,
                    token,
                };
                batch.push_accepted(&id, |o| o.extend_from_slice(&out));
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
            let device = p.device_tag.as_deref().ok_or(LineError::NoDevice)?;
            let site = sites.get(device).ok_or(LineError::UnknownDevice)?;
            Ok((device, site, ""))
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
        if let Some(d) = parsed.device_tag.as_deref() {
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
fn encode(p: &Parsed<'_>, device: &str, site: &str, ts: i64, out: &mut Vec<u8>) {
    push_lp_measurement(out, p.measurement.as_bytes());
    let mut tags: Vec<(&str, &str)> = Vec::with_capacity(p.tags.len() + 2);
    tags.push((DEVICE_TAG, device));
    tags.push((SITE_TAG, site));
    tags.extend(p.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
    tags.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (k, v) in tags {
        out.push(b',');
        push_lp_key(out, k.as_bytes());
        out.push(b'=');
        push_lp_key(out, v.as_bytes());
    }
    let mut num = itoa::Buffer::new();
    for (i, (k, v)) in p.fields.iter().enumerate() {
        out.push(if i == 0 { b' ' } else { b',' });
        push_lp_key(out, k.as_bytes());
        out.push(b'=');
        match v {
            FieldValue::Float(f) => push_f64(out, *f),
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
fn name<'a>(raw: &'a str, escapable: &[u8]) -> Option<Cow<'a, str>> {
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
    valid_id(&text).then_some(text)
}

fn reserved(key: &str) -> bool {
    RESERVED_KEYS.contains(&key)
}

/// Reads one line (without its newline, trimmed, not a comment) into `p`.
fn read_line<'a>(line: &'a str, p: &mut Parsed<'a>, writer: &Writer<'_>) -> Result<(), LineError> {
    p.tags.clear();
    p.tag_keys.clear();
    p.fields.clear();
    p.device_tag = None;
    p.timestamp = None;
    let b = line.as_bytes();
    let end = name_end(b, 0, b", ");
    p.measurement = name(&line[..end], b", ").ok_or(LineError::Measurement)?;
    let mut at = end;
    if b.get(at) == Some(&b',') {
        at = read_tags(line, at + 1, p, writer)?;
    }
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
        if reserved(&key) || p.tag_keys.contains(&key) {
            return Err(LineError::TagSet);
        }
        if p.tag_keys.len() == MAX_LP_TAGS {
            return Err(LineError::TooManyTags);
        }
        p.tag_keys.push(key.clone());
        match &*key {
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
            return Ok(at);
        }
        at += 1;
    }
}

/// Reads the field set from `at`; returns where it ended (a space or the end).
fn read_fields<'a>(line: &'a str, mut at: usize, p: &mut Parsed<'a>) -> Result<usize, LineError> {
    let b = line.as_bytes();
    loop {
        let eq = name_end(b, at, b",= ");
        if b.get(eq) != Some(&b'=') {
            return Err(LineError::FieldSet);
        }
        let key = name(&line[at..eq], b",= ").ok_or(LineError::FieldSet)?;
        if reserved(&key)
            || key == DEVICE_TAG
            || key == SITE_TAG
            || p.tag_keys.contains(&key)
            || p.fields.iter().any(|(k, _)| *k == key)
        {
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
            let value = field_value(&b[eq + 1..end]).ok_or(LineError::FieldValue)?;
            (value, end)
        };
        if p.fields.len() == MAX_LP_FIELDS {
            return Err(LineError::TooManyFields);
        }
        p.fields.push((key, value));
        at = end;
        if b.get(at) != Some(&b',') {
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
/// `{n}u`, or a finite float `-?(d+(.d*)?|.d+)([eE][+-]?d+)?`.
fn field_value(v: &[u8]) -> Option<FieldValue<'static>> {
    match v {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Some(FieldValue::Bool(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    match v.split_last()? {
        (b'i', n) => integer(n).map(FieldValue::Integer),
        (b'u', n) => digits(n)
            .then(|| ascii(n).parse().ok())
            .flatten()
            .map(FieldValue::Unsigned),
        _ => float(v).map(FieldValue::Float),
    }
}

fn digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("ASCII digits")
}

/// `-?d+` that fits an i64.
fn integer(b: &[u8]) -> Option<i64> {
    let unsigned = b.strip_prefix(b"-").unwrap_or(b);
    digits(unsigned).then(|| ascii(b).parse().ok()).flatten()
}

fn float(v: &[u8]) -> Option<f64> {
    let unsigned = v.strip_prefix(b"-").unwrap_or(v);
    let mantissa_end = unsigned
        .iter()
        .position(|&c| matches!(c, b'e' | b'E'))
        .unwrap_or(unsigned.len());
    let (mantissa, exponent) = unsigned.split_at(mantissa_end);
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &b""[..]),
    };
    let int_ok = int.is_empty() || digits(int);
    let frac_ok = frac.is_empty() || digits(frac);
    if !int_ok || !frac_ok || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    if let Some(exp) = exponent.get(1..) {
        let exp = exp
            .strip_prefix(b"+")
            .or(exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        if !digits(exp) {
            return None;
        }
    }
    let x: f64 = ascii(v).parse().ok()?;
    x.is_finite().then_some(x)
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
