//! The `detail` of a rejected telemetry message: one sentence naming the first rule of its
//! reason that THIS message breaks, in the order `judge` applies them. Built only for rejected
//! items (the message is read again here, from its raw text), so accepted ones pay nothing.
//!
//! Client text is quoted bounded (`errors::quoted`); a provision token is never quoted.

use std::borrow::Cow;

use super::{checked_metric_name, parse_seq, MAX_METRICS};
use crate::encode::Float;
use crate::envelope::Value;
use crate::errors::{quoted, Reason};
use crate::ids::{valid_id, valid_tenant};
use crate::json::{self, Reader};
use crate::schema::MSG_TYPES;
use crate::timestamp::parse_rfc3339;
use crate::words;

const ID_RULE: &str = "1 to 128 bytes of UTF-8 without control characters or backslashes";

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

    /// Why it is not a string, or `None` with its text.
    fn text(&self, name: &str) -> Result<&str, String> {
        match self {
            Field::Missing => Err(format!("{name} is missing")),
            Field::NotString(kind) => Err(format!("{name} must be a string, got {kind}")),
            Field::LoneSurrogate => Err(lone(name)),
            Field::Text(s) => Ok(s),
        }
    }
}

fn lone(name: &str) -> String {
    format!("{name} is not valid Unicode (it holds a lone surrogate)")
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
    pub max_payload: usize,
    /// Whether the receive time a message without `ts` gets is in InfluxDB's range.
    pub receive_time_ok: bool,
}

/// The detail of a message `judge` rejected for `reason`.
pub fn message(reason: Reason, m: &Message<'_>) -> String {
    let found = match reason {
        Reason::PayloadTooLarge => Some(too_large(m.raw.len(), m.max_payload)),
        Reason::InvalidSchema => schema(m),
        Reason::InvalidMsgType => msg_type(&m.msg_type),
        Reason::InvalidTimestamp => timestamp(&m.ts, m.receive_time_ok),
        Reason::InvalidMetrics => metrics(m.raw),
        _ => None,
    };
    found.unwrap_or_else(|| generic(reason))
}

/// The detail of a batch element that is not a JSON object (`raw` its text).
pub fn not_object(raw: &str, max_payload: usize) -> String {
    if raw.len() > max_payload {
        return too_large(raw.len(), max_payload);
    }
    let v = Value::read(&mut Reader::new(raw)).unwrap_or(Value::Missing);
    format!("message must be a JSON object, got {}", kind(&v))
}

/// The reason's sentence, for a rejection no rule above names (none is known).
fn generic(reason: Reason) -> String {
    reason.detail().unwrap_or(reason.code()).to_owned()
}

fn too_large(size: usize, max: usize) -> String {
    format!("message is {size} bytes; the limit is {max} bytes")
}

fn schema(m: &Message<'_>) -> Option<String> {
    let rule = |name: &str, field: &Field<'_>, valid: fn(&str) -> bool, what: &str| {
        field
            .text(name)
            .and_then(|s| match valid(s) {
                true => Ok(()),
                false => Err(format!("{name} {} is not {what}", quoted(s))),
            })
            .err()
    };
    rule(
        "tenant_id",
        &m.tenant,
        valid_tenant,
        "a tenant id: 1 to 64 of a-z, 0-9, _ and -",
    )
    .or_else(|| {
        rule(
            "device_id",
            &m.device,
            valid_id,
            &format!("a valid id: {ID_RULE}"),
        )
    })
    .or_else(|| {
        rule(
            "site_id",
            &m.site,
            valid_id,
            &format!("a valid id: {ID_RULE}"),
        )
    })
    .or_else(|| match m.token.text("provision_token") {
        Ok(t) if !valid_id(t) => Some(format!("provision_token is not a valid token: {ID_RULE}")),
        Ok(_) => None,
        Err(e) => Some(e),
    })
    .or_else(|| match &m.msg_type {
        Field::Missing | Field::NotString(_) => m.msg_type.text("msg_type").err(),
        _ => None,
    })
    .or_else(|| seq(&m.seq))
}

fn seq(v: &Value<'_>) -> Option<String> {
    const RULE: &str = "seq must be a whole number from 0 to 9223372036854775807";
    match v {
        Value::Missing | Value::Null => None,
        Value::Number(n) if n.is_integer() && parse_seq(n.text).is_some() => None,
        Value::Number(_) => Some(RULE.to_owned()),
        other => Some(format!("{RULE}, got {}", kind(other))),
    }
}

fn msg_type(field: &Field<'_>) -> Option<String> {
    let s = match field.text("msg_type") {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    (!MSG_TYPES.contains(&s)).then(|| {
        format!(
            "msg_type {} is not one of: {}",
            quoted(s),
            MSG_TYPES.join(", ")
        )
    })
}

fn timestamp(ts: &Value<'_>, receive_time_ok: bool) -> Option<String> {
    let field = match ts {
        Value::Missing | Value::Null => {
            return (!receive_time_ok).then(|| {
                "message has no ts, and its receive time is outside InfluxDB's range".to_owned()
            })
        }
        v => Field::of(v),
    };
    match field.text("ts") {
        Err(_) if matches!(field, Field::NotString(_)) => {
            Some(format!("ts must be an RFC 3339 string, got {}", kind(ts)))
        }
        Err(e) => Some(e),
        Ok(s) => parse_rfc3339(s).is_none().then(|| {
            format!(
                "ts {} is not an RFC 3339 timestamp within InfluxDB's range (years 1677 to 2262)",
                quoted(s)
            )
        }),
    }
}

/// The first metrics rule the message's (last) `metrics` member breaks: an object, names valid
/// Unicode, at most `MAX_METRICS` names, then each name and value in name order (the last of a
/// duplicated name counts).
fn metrics(raw: &str) -> Option<String> {
    let entries = match metrics_member(raw).ok()? {
        None | Some(Metrics::Null) => return None,
        Some(Metrics::NotObject(kind)) => {
            return Some(format!("metrics must be an object, got {kind}"))
        }
        Some(Metrics::Object(entries)) => entries,
    };
    let mut named = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        match name {
            Some(name) => named.push((name, value)),
            None => return Some(lone("a metric name")),
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
        return Some(format!(
            "metrics holds {} names; at most {MAX_METRICS} are allowed",
            kept.len()
        ));
    }
    kept.iter().find_map(|(name, value)| metric(name, value))
}

fn metric(name: &str, value: &Value<'_>) -> Option<String> {
    if checked_metric_name(name, words::head(name.as_bytes())).is_none() {
        return Some(match valid_id(name) {
            true => format!("metric name {} is reserved", quoted(name)),
            false => format!(
                "metric name {} is not a valid name: {ID_RULE}",
                quoted(name)
            ),
        });
    }
    match value {
        Value::Bool(_) => None,
        Value::Number(n) => Float::of(n)
            .is_none()
            .then(|| format!("metric {} is not a finite number", quoted(name))),
        other => Some(format!(
            "metric {} is {}; metrics must be numbers or booleans",
            quoted(name),
            kind(other)
        )),
    }
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
        metrics(&format!(r#"{{"a":1,"metrics":{json}}}"#))
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
