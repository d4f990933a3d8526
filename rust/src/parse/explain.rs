//! The `detail` of a rejected telemetry message: one sentence naming the first rule of its
//! reason that THIS message breaks, in the order `judge` applies them. Built only for rejected
//! items, so accepted ones pay nothing; written straight into the batch's strings, with no
//! string of its own.
//!
//! Client text is quoted bounded (`errors::push_quoted`); a provision token is never quoted.

use std::borrow::Cow;
use std::fmt::Write;

use super::{checked_metric_name, parse_seq, MAX_METRICS};
use crate::encode::Float;
use crate::envelope::Value;
use crate::errors::{push_quoted, Reason};
use crate::ids::{valid_id, valid_tenant};
use crate::json::{self, Reader};
use crate::schema::MSG_TYPES;
use crate::timestamp::parse_rfc3339;
use crate::words;

/// The id rule's words, a macro so that the sentences naming it are single literals.
macro_rules! id_rule {
    () => {
        "1 to 128 bytes of UTF-8 without control characters or backslashes"
    };
}

/// A JSON value's kind, as a detail names it.
fn kind(v: &Value<'_>) -> &'static str {
    match v {
        Value::Missing => "nothing",
        Value::Null => "null",
        Value::Str(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Array => "an array",
        Value::Object => "an object",
    }
}

/// A string field of the message as the rules see it: from its JSON value or from the URL.
pub enum Field<'s> {
    Missing,
    NotString(&'static str),
    LoneSurrogate,
    Text(Cow<'s, str>),
}

impl<'s> Field<'s> {
    pub fn of(v: &Value<'s>) -> Field<'s> {
        match v {
            Value::Missing => Field::Missing,
            Value::Str(s) => s.decode().map_or(Field::LoneSurrogate, Field::Text),
            other => Field::NotString(kind(other)),
        }
    }

    /// A URL part; `None` stands for one holding a lone surrogate.
    pub fn url(s: Option<&'s str>) -> Field<'s> {
        s.map_or(Field::LoneSurrogate, |s| Field::Text(Cow::Borrowed(s)))
    }

    /// Its text; `None` when it is not a string, having written why to `out`.
    fn text_or_why(&self, name: &str, out: &mut String) -> Option<&str> {
        match self {
            Field::Missing => push_all(out, &[name, " is missing"]),
            Field::NotString(kind) => push_all(out, &[name, " must be a string, got ", kind]),
            Field::LoneSurrogate => lone(name, out),
            Field::Text(s) => return Some(s),
        }
        None
    }
}

fn lone(name: &str, out: &mut String) {
    push_all(
        out,
        &[name, " is not valid Unicode (it holds a lone surrogate)"],
    );
}

/// Appends the pieces of a sentence: no `format!` temporaries and formatting machinery for what
/// is mostly fixed text.
fn push_all(out: &mut String, pieces: &[&str]) {
    for piece in pieces {
        out.push_str(piece);
    }
}

/// What `judge` read of a rejected message.
pub struct Message<'s> {
    pub tenant: Field<'s>,
    pub device: Field<'s>,
    pub msg_type: Field<'s>,
    pub token: Field<'s>,
    pub site: Field<'s>,
    pub seq: Value<'s>,
    pub ts: Value<'s>,
    /// The message's JSON text, metrics and all.
    pub raw: &'s str,
    /// What the parser's own read of the metrics knows of their first broken rule.
    pub metrics: MetricsRead<'s>,
    pub max_payload: usize,
    /// Whether the receive time a message without `ts` gets is in InfluxDB's range.
    pub receive_time_ok: bool,
}

/// What the parser's read of a message's (last) `metrics` object found.
#[derive(Clone, Copy)]
pub enum MetricsRead<'s> {
    /// Nothing the detail can use: the metrics are read again from the message.
    Unknown,
    /// The names are valid and at most `MAX_METRICS`: the first broken rule is the value of the
    /// entry at `index` (in body order) of the `metrics` object whose text is `object`.
    BadValue { object: &'s str, index: usize },
}

/// Writes the detail of a message `judge` rejected for `reason` to `out`.
pub fn message(reason: Reason, m: &Message<'_>, out: &mut String) {
    let written = match reason {
        Reason::PayloadTooLarge => {
            too_large(m.raw.len(), m.max_payload, out);
            true
        }
        Reason::InvalidSchema => schema(m, out),
        Reason::InvalidMsgType => msg_type(&m.msg_type, out),
        Reason::InvalidTimestamp => timestamp(&m.ts, m.receive_time_ok, out),
        Reason::InvalidMetrics => match m.metrics {
            MetricsRead::BadValue { object, index } => bad_value(object, index, out),
            MetricsRead::Unknown => metrics(m.raw, out),
        },
        _ => false,
    };
    if !written {
        generic(reason, out);
    }
}

/// Writes the detail of a batch element that is not a JSON object (`raw` its text) to `out`.
pub fn not_object(raw: &str, max_payload: usize, out: &mut String) {
    if raw.len() > max_payload {
        return too_large(raw.len(), max_payload, out);
    }
    let v = Value::read(&mut Reader::new(raw)).unwrap_or(Value::Missing);
    push_all(out, &["message must be a JSON object, got ", kind(&v)]);
}

/// The reason's sentence, for a rejection no rule above names (none is known).
fn generic(reason: Reason, out: &mut String) {
    out.push_str(reason.detail().unwrap_or(reason.code()));
}

fn too_large(size: usize, max: usize, out: &mut String) {
    // `itoa` rather than `write!`: the formatting machinery costs a thousand instructions here.
    let (mut size_digits, mut max_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    push_all(
        out,
        &[
            "message is ",
            size_digits.format(size),
            " bytes; the limit is ",
            max_digits.format(max),
            " bytes",
        ],
    );
}

/// Writes the first id rule the message breaks, if any; true if it wrote.
fn schema(m: &Message<'_>, out: &mut String) -> bool {
    const VALID_ID: &str = concat!("a valid id: ", id_rule!());
    let mut rule = |name: &str, field: &Field<'_>, valid: fn(&str) -> bool, what: &str| -> bool {
        let Some(s) = field.text_or_why(name, out) else {
            return true;
        };
        if valid(s) {
            return false;
        }
        push_all(out, &[name, " "]);
        push_quoted(out, s);
        push_all(out, &[" is not ", what]);
        true
    };
    if rule(
        "tenant_id",
        &m.tenant,
        valid_tenant,
        "a tenant id: 1 to 64 of a-z, 0-9, _ and -",
    ) || rule("device_id", &m.device, valid_id, VALID_ID)
        || rule("site_id", &m.site, valid_id, VALID_ID)
    {
        return true;
    }
    match m.token.text_or_why("provision_token", out) {
        None => return true,
        Some(t) if !valid_id(t) => {
            out.push_str(concat!(
                "provision_token is not a valid token: ",
                id_rule!()
            ));
            return true;
        }
        Some(_) => {}
    }
    if let Field::Missing | Field::NotString(_) = m.msg_type {
        return m.msg_type.text_or_why("msg_type", out).is_none();
    }
    seq(&m.seq, out)
}

fn seq(v: &Value<'_>, out: &mut String) -> bool {
    const RULE: &str = "seq must be a whole number from 0 to 9223372036854775807";
    match v {
        Value::Missing | Value::Null => false,
        Value::Number(n) if n.is_integer() && parse_seq(n.text).is_some() => false,
        Value::Number(_) => {
            out.push_str(RULE);
            true
        }
        other => {
            push_all(out, &[RULE, ", got ", kind(other)]);
            true
        }
    }
}

fn msg_type(field: &Field<'_>, out: &mut String) -> bool {
    let Some(s) = field.text_or_why("msg_type", out) else {
        return true;
    };
    if MSG_TYPES.contains(&s) {
        return false;
    }
    out.push_str("msg_type ");
    push_quoted(out, s);
    out.push_str(" is not one of: ");
    for (i, t) in MSG_TYPES.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(t);
    }
    true
}

fn timestamp(ts: &Value<'_>, receive_time_ok: bool, out: &mut String) -> bool {
    if let Value::Missing | Value::Null = ts {
        if !receive_time_ok {
            out.push_str("message has no ts, and its receive time is outside InfluxDB's range");
        }
        return !receive_time_ok;
    }
    let field = Field::of(ts);
    if let Field::NotString(kind) = field {
        push_all(out, &["ts must be an RFC 3339 string, got ", kind]);
        return true;
    }
    let Some(s) = field.text_or_why("ts", out) else {
        return true;
    };
    if parse_rfc3339(s).is_some() {
        return false;
    }
    out.push_str("ts ");
    push_quoted(out, s);
    out.push_str(" is not an RFC 3339 timestamp within InfluxDB's range (years 1677 to 2262)");
    true
}

/// The first metrics rule the message's (last) `metrics` member breaks, read again from the
/// message: an object, names valid Unicode, at most `MAX_METRICS` names, then each name and
/// value in name order (the last of a duplicated name counts). True if it wrote.
fn metrics(raw: &str, out: &mut String) -> bool {
    let entries = match metrics_member(raw) {
        Ok(Some(Metrics::Object(entries))) => entries,
        Ok(Some(Metrics::NotObject(kind))) => {
            push_all(out, &["metrics must be an object, got ", kind]);
            return true;
        }
        Ok(None | Some(Metrics::Null)) | Err(_) => return false,
    };
    let mut named = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        match name {
            Some(name) => named.push((name, value)),
            None => {
                lone("a metric name", out);
                return true;
            }
        }
    }
    // Stable: of a duplicated name, the last in body order is kept.
    named.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut kept: Vec<(Cow<'_, str>, Value<'_>)> = Vec::with_capacity(named.len());
    for (name, value) in named {
        match kept.last_mut() {
            Some(last) if last.0 == name => last.1 = value,
            _ => kept.push((name, value)),
        }
    }
    if kept.len() > MAX_METRICS {
        // Writing to a `String` cannot fail.
        let _ = write!(
            out,
            "metrics holds {} names; at most {MAX_METRICS} are allowed",
            kept.len()
        );
        return true;
    }
    kept.iter().any(|(name, value)| metric(name, value, out))
}

/// The detail of the metric at `index` of the `metrics` object `object`, whose name the parser
/// found valid: only that entry is read again, rather than the message and all its metrics.
fn bad_value(object: &str, index: usize, out: &mut String) -> bool {
    match entry_at(object, index) {
        Ok((Some(name), value)) => metric(&name, &value, out),
        // The parser read this very text.
        _ => false,
    }
}

/// The entry at `index` (in body order) of the JSON object `object`.
fn entry_at(object: &str, index: usize) -> json::Result<Entry<'_>> {
    let mut r = Reader::new(object);
    r.begin_object()?;
    for i in 0..index {
        r.key_follows(i == 0)?;
        r.key()?;
        r.skip_value()?;
    }
    r.key_follows(index == 0)?;
    Ok((r.key()?.decode(), Value::read(&mut r)?))
}

/// Writes the rule the metric breaks, if any; true if it wrote.
fn metric(name: &str, value: &Value<'_>, out: &mut String) -> bool {
    if checked_metric_name(name, words::head(name.as_bytes())).is_none() {
        out.push_str("metric name ");
        push_quoted(out, name);
        match valid_id(name) {
            true => out.push_str(" is reserved"),
            false => out.push_str(concat!(" is not a valid name: ", id_rule!())),
        }
        return true;
    }
    let kind = match value {
        Value::Bool(_) => return false,
        Value::Number(n) if Float::of(n).is_some() => return false,
        Value::Number(_) => None,
        other => Some(kind(other)),
    };
    out.push_str("metric ");
    push_quoted(out, name);
    match kind {
        None => out.push_str(" is not a finite number"),
        Some(kind) => push_all(
            out,
            &[" is ", kind, "; metrics must be numbers or booleans"],
        ),
    }
    true
}

type Entry<'s> = (Option<Cow<'s, str>>, Value<'s>);

enum Metrics<'s> {
    Null,
    NotObject(&'static str),
    /// `(name, value)` in body order; a name `None` holds a lone surrogate.
    Object(Vec<Entry<'s>>),
}

/// The message's last `metrics` member, read again from its text.
fn metrics_member(raw: &str) -> json::Result<Option<Metrics<'_>>> {
    let mut r = Reader::new(raw);
    r.begin_object()?;
    let mut found = None;
    let mut first = true;
    while r.key_follows(first)? {
        first = false;
        if r.key()?.decode().as_deref() != Some("metrics") {
            r.skip_value()?;
            continue;
        }
        found = Some(if r.peek() == Some(b'{') {
            Metrics::Object(entries(&mut r)?)
        } else {
            match Value::read(&mut r)? {
                Value::Null => Metrics::Null,
                other => Metrics::NotObject(kind(&other)),
            }
        });
    }
    Ok(found)
}

fn entries<'s>(r: &mut Reader<'s>) -> json::Result<Vec<Entry<'s>>> {
    let mut out = Vec::new();
    r.begin_object()?;
    let mut first = true;
    while r.key_follows(first)? {
        first = false;
        let name = r.key()?.decode();
        out.push((name, Value::read(r)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics_of(json: &str) -> Option<String> {
        let mut out = String::new();
        metrics(&format!(r#"{{"a":1,"metrics":{json}}}"#), &mut out).then_some(out)
    }

    #[test]
    fn metrics_details_name_the_first_broken_rule_in_name_order() {
        let cases = [
            (
                r#"{"temp":"hot"}"#,
                "metric 'temp' is a string; metrics must be numbers or booleans",
            ),
            (
                r#"{"b":null,"a":[1]}"#,
                "metric 'a' is an array; metrics must be numbers or booleans",
            ),
            (r#"{"a":"x","a":1}"#, ""),
            (r#"{"seq":1}"#, "metric name 'seq' is reserved"),
            (r#"{"x":1e999}"#, "metric 'x' is not a finite number"),
            (
                r#"{"\ud800":1}"#,
                "a metric name is not valid Unicode (it holds a lone surrogate)",
            ),
            ("[1]", "metrics must be an object, got an array"),
        ];
        for (json, want) in cases {
            let want = (!want.is_empty()).then(|| want.to_owned());
            assert_eq!(metrics_of(json), want, "{json}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("\"m{i}\":1")).collect();
        assert_eq!(
            metrics_of(&format!("{{{}}}", many.join(","))).as_deref(),
            Some("metrics holds 300 names; at most 256 are allowed")
        );
    }
}
