//! Telemetry bodies → validated, encoded items of a `Batch`, in one pass over the body: the
//! telemetry rules (ids, msg_type, ts, seq, metrics) and their order.
//!
//! The `json` reader validates the whole body while `envelope` walks the `messages` list and
//! this module reads each message's fields and metrics. Every other value is skipped (and
//! validated). Each message's raw size comes from the reader's position, field values are
//! classified without conversion, so an overflowing number or a wrong type is an item error,
//! never a body error. Strings without escapes are borrowed from the body.

mod explain;
mod name_sets;

use std::borrow::Cow;

use crate::batch::{Batch, Identity};
use crate::encode::{Float, Key, Line, PlainNumber};
use crate::envelope::{utf8, walk_messages, Elements, Text, Value};
use crate::errors::{BodyError, Reason};
use crate::ids::{checked_id, checked_id_headed, valid_id, valid_tenant};
use crate::json::{self, KeyWords, Number, Reader};
use crate::schema::{FieldType, Shape, MSG_TYPES};
use crate::timestamp::{Dates, MAX_NS, MIN_NS};
use crate::words;

/// Messages a batch body may hold.
pub const MAX_BATCH_MESSAGES: usize = 100;

/// Distinct metric names a message may hold.
pub const MAX_METRICS: usize = 256;
/// `max_payload_bytes` when the caller gives none.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 8192;

/// Parse a `{"messages": [...]}` body of 1 to 100 messages. A message without `ts` gets
/// `receive_ns` plus its index in the batch.
pub fn parse_batch(body: &[u8], receive_ns: i64, max_payload: usize) -> Result<Batch, BodyError> {
    let text = utf8(body)?;
    let mut parser = MessageParser::new(MAX_BATCH_MESSAGES, body.len(), receive_ns, max_payload);
    walk_messages(text, MAX_BATCH_MESSAGES, &mut parser)?;
    Ok(parser.batch)
}

/// The identity of a single-message request, taken from the URL and a header. `None` stands for
/// a string that holds a lone surrogate.
pub struct UrlIdentity<'s> {
    pub tenant: Option<&'s str>,
    pub device: Option<&'s str>,
    pub msg_type: Option<&'s str>,
    pub token: Option<&'s str>,
}

/// Parse the single-message form: the body is the message, its identity comes from `id`.
pub fn parse_single(
    body: &[u8],
    id: &UrlIdentity<'_>,
    receive_ns: i64,
    max_payload: usize,
) -> Result<Batch, BodyError> {
    let text = utf8(body)?;
    let mut r = Reader::new(text);
    if r.peek() != Some(b'{') {
        r.skip_value().map_err(|_| BodyError::NotJson)?;
        r.end().map_err(|_| BodyError::NotJson)?;
        return Err(BodyError::NotObject);
    }
    let mut parser = MessageParser::new(1, body.len(), receive_ns, max_payload);
    parser
        .message(&mut r, Some(id))
        .and_then(|()| r.end())
        .map_err(|_| BodyError::NotJson)?;
    Ok(parser.batch)
}

/// What a message's last `metrics` key holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum MetricsField {
    /// Missing or null.
    #[default]
    Absent,
    NotObject,
    /// An object, its entries in `MessageParser::metrics`.
    Object,
}

impl<'a> Elements<'a> for MessageParser<'a> {
    fn reset(&mut self) {
        // Only a duplicate `messages` key finds items here.
        if !self.batch.is_empty() {
            self.batch = Batch::with_capacity(MAX_BATCH_MESSAGES, self.batch.line_capacity())
                .received_at(self.receive_ns);
        }
    }

    fn element(&mut self, r: &mut Reader<'a>) -> json::Result<()> {
        self.message(r, None)
    }
}

/// The fields of a message this module reads, by `FieldKey` (`metrics` apart); last occurrence
/// wins. Stored by index, not through a `match` on the key: that was a jump through a table for
/// every key, mispredicted wherever a message's key order differs from the message before.
#[derive(Default)]
struct Fields<'a> {
    /// One per key before `Metrics`, the last.
    values: [Value<'a>; FieldKey::Metrics as usize],
    metrics: MetricsField,
}

impl<'a> Fields<'a> {
    fn get(&self, key: FieldKey) -> Value<'a> {
        self.values[key as usize]
    }
}

/// What `judge` decodes the string fields written with escapes into (see `Value::text`):
/// empty, never allocated, mostly.
#[derive(Default)]
struct Unescaped {
    tenant: String,
    device: String,
    msg_type: String,
    token: String,
    site: String,
    ts: String,
}

/// The keys of a message this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKey {
    TenantId,
    DeviceId,
    MsgType,
    ProvisionToken,
    SiteId,
    Ts,
    Seq,
    Metrics,
}

impl FieldKey {
    fn of(name: &str) -> Option<FieldKey> {
        Some(match name {
            "tenant_id" => FieldKey::TenantId,
            "device_id" => FieldKey::DeviceId,
            "msg_type" => FieldKey::MsgType,
            "provision_token" => FieldKey::ProvisionToken,
            "site_id" => FieldKey::SiteId,
            "ts" => FieldKey::Ts,
            "seq" => FieldKey::Seq,
            "metrics" => FieldKey::Metrics,
            _ => return None,
        })
    }
}

/// Each `FieldKey`'s name as `KeyWords`, in the enum's order.
const FIELD_KEYS: [KeyWords; 8] = [
    KeyWords::plain(b"tenant_id"),
    KeyWords::plain(b"device_id"),
    KeyWords::plain(b"msg_type"),
    KeyWords::plain(b"provision_token"),
    KeyWords::plain(b"site_id"),
    KeyWords::plain(b"ts"),
    KeyWords::plain(b"seq"),
    KeyWords::plain(b"metrics"),
];

/// Keys of a message whose places `MessageParser::key_order` remembers.
const ORDERED_KEYS: usize = 12;

/// A metric value as written, and its field type. A bool is written as its literal, as a
/// `Float::Plain` without `.0`: writing then takes one path whatever the type, which varies at
/// random from metric to metric. `value` is `None` for a value that is not a number or bool,
/// or not a finite number (its `ty` then means nothing).
#[derive(Clone, Copy)]
struct MetricValue<'a> {
    value: Option<Float<'a>>,
    ty: FieldType,
}

impl<'a> MetricValue<'a> {
    /// Reads the value at the cursor, validating it. Told apart by its first byte once, not
    /// read as a `Value` and then matched again.
    #[inline(always)]
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let (value, ty) = match r.peek().ok_or(json::Invalid)? {
            b't' | b'f' | b'n' => {
                let text = LITERAL_VALUES[r.literal()? as usize];
                let literal = |text| {
                    Float::Plain(PlainNumber {
                        text,
                        dot_zero: false,
                    })
                };
                (text.map(literal), FieldType::Boolean)
            }
            b'"' | b'[' | b'{' => {
                r.skip_value()?;
                (None, FieldType::Float)
            }
            _ => {
                let (n, nonzero) = r.number_digits()?;
                let value = match nonzero.and_then(|bits| plain_in_block(&n, bits)) {
                    Some(p) => Some(Float::Plain(p)),
                    None => Float::of(&n),
                };
                (value, FieldType::Float)
            }
        };
        Ok(MetricValue { value, ty })
    }
}

/// Each `json::Literal`'s text as a metric value (null: none), in the enum's order: a table
/// rather than a `match`, which compiles to a jump that the random mix of true and false
/// mispredicts.
const LITERAL_VALUES: [Option<&str>; 3] = [Some("true"), Some("false"), None];

/// `PlainNumber::of` for a token `Reader::number_digits` read from one block, from the bits of
/// its digits other than `0`: the fraction's last such digit is a bit count, not a scan back,
/// and the cases (integer, fraction, all-zero fraction) are told apart without a branch each,
/// which the random mix of values would often mispredict. Such a token has at most 15 bytes,
/// so at most 15 significant digits.
#[inline(always)]
fn plain_in_block<'a>(n: &Number<'a>, nonzero: u32) -> Option<PlainNumber<'a>> {
    let sign = usize::from(n.text.starts_with('-'));
    let after_dot = n.int_end + 1;
    let dot = n.frac_end > n.int_end;
    // The fraction's bits (none without one: `after_dot` is then past the token's bits).
    let frac = nonzero & (u32::MAX << after_dot);
    // An integer part `0`: the first significant digit at most 4 places after the point.
    let zero_int = n.int_end == sign + 1 && nonzero & (1 << sign) == 0;
    if zero_int && frac != 0 && frac.trailing_zeros() as usize > after_dot + 3 {
        return None;
    }
    // After the fraction's last non-zero digit; an all-zero fraction keeps its first zero;
    // an integer (`frac` 0) ends at `int_end`, 2 before that zero.
    let last = 32 - frac.leading_zeros() as usize;
    let end = last.max(after_dot + 1) - 2 * usize::from(!dot);
    Some(PlainNumber {
        text: n.text.get(..end)?,
        dot_zero: !dot,
    })
}

struct Metric<'a> {
    name: Cow<'a, str>,
    /// The name's first 8 bytes, big-endian: sorts like the name, mostly without a memcmp.
    prefix: u64,
    /// The name's last 8 bytes, little-endian (its first, zero-padded, when shorter).
    tail: u64,
    /// The name is written in the body without escapes and is 1 to 16 bytes long: `prefix`,
    /// `tail` and its length are then the key's words. Kept apart rather than as a
    /// `KeyWords`: each entry written is 32 bytes smaller.
    plain: bool,
    /// `None`: not a number or bool, or not a finite number.
    value: Option<Float<'a>>,
    ty: FieldType,
}

/// An entry of `metrics` that is written, as `order` holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Written {
    index: u32,
    /// Whether line protocol escapes some of the entry's name.
    escape: bool,
}

impl Metric<'_> {
    /// `prefix` and `tail` of `name`.
    fn words_of(name: &str) -> (u64, u64) {
        let prefix = words::head(name.as_bytes());
        (
            prefix,
            words::last(name.as_bytes()).unwrap_or(prefix.swap_bytes()),
        )
    }

    /// The name as written in the body, when `plain`.
    fn words(&self) -> Option<KeyWords> {
        self.plain
            .then(|| KeyWords::new(self.prefix.swap_bytes(), self.tail, self.name.len()))
    }

    fn same_name(&self, other: &Self) -> bool {
        if self.plain && other.plain {
            // Both written plainly: the same words are the same text, the same name.
            self.prefix == other.prefix
                && self.tail == other.tail
                && self.name.len() == other.name.len()
        } else {
            self.prefix == other.prefix && self.name == other.name
        }
    }
}

struct MessageParser<'a> {
    batch: Batch,
    receive_ns: i64,
    max_payload: usize,
    /// The last `metrics` object's entries, in body order: the first `metric_count`. The
    /// slots past them keep older entries, so that an entry is written over a slot, not pushed
    /// or truncated depending on how many the message before held, a count that varies at
    /// random from message to message.
    metrics: Vec<Metric<'a>>,
    metric_count: usize,
    /// The last `metrics` object's text, for the detail of a rejected message.
    metrics_text: &'a str,
    /// The entries of `metrics` that are written, in name order, the last of duplicate names
    /// kept.
    order: Vec<Written>,
    /// `order` and `names_ok` hold for the names now in `metrics`. A message that sends the
    /// names of the one before, in the same order, reads only values.
    order_known: bool,
    /// Some entry of `metrics` has no usable value. Told while the values are read, so that a
    /// message whose values are all usable skips a pass over `order`.
    missing_value: bool,
    /// The names of `order` are valid metric names, and at most `MAX_METRICS`.
    names_ok: bool,
    /// One of those names holds a lone surrogate.
    lone_metric_name: bool,
    /// The known key (if any) at each place of the last message that had one there.
    key_order: [Option<FieldKey>; ORDERED_KEYS],
    dates: Dates,
}

impl<'a> MessageParser<'a> {
    fn new(items: usize, body_len: usize, receive_ns: i64, max_payload: usize) -> Self {
        MessageParser {
            // Line protocol is a half to two thirds of the JSON it comes from (tokens and
            // keys go, tag keys come): growing costs a copy of it, room never written nothing.
            batch: Batch::with_capacity(items, body_len + 256).received_at(receive_ns),
            receive_ns,
            max_payload,
            metrics: Vec::with_capacity(16),
            metric_count: 0,
            metrics_text: "",
            order: Vec::with_capacity(16),
            order_known: false,
            missing_value: false,
            names_ok: false,
            lone_metric_name: false,
            key_order: [None; ORDERED_KEYS],
            dates: Dates::default(),
        }
    }

    /// Reads, validates and encodes the message at the cursor.
    fn message(&mut self, r: &mut Reader<'a>, url: Option<&UrlIdentity<'a>>) -> json::Result<()> {
        // After any whitespace: the raw size is the element's own.
        let is_object = r.peek() == Some(b'{');
        let start = r.pos();
        if is_object {
            // Filled in place and lent out: moving the fields around costs a memcpy call.
            let mut f = Fields::default();
            self.fields(r, &mut f)?;
            self.judge(&f, r.since(start), url);
        } else {
            r.skip_value()?;
            let raw = r.since(start);
            let reason = if raw.len() > self.max_payload {
                Reason::PayloadTooLarge
            } else {
                Reason::InvalidSchema
            };
            let max_payload = self.max_payload;
            self.batch.push_rejected_writing(reason, None, None, |out| {
                explain::not_object(raw, max_payload, out)
            });
        }
        Ok(())
    }

    /// The message's known fields, its metrics in `metrics`; other values are skipped.
    fn fields(&mut self, r: &mut Reader<'a>, f: &mut Fields<'a>) -> json::Result<()> {
        r.begin_object()?;
        let mut first = true;
        let mut k = 0;
        while r.key_follows(first)? {
            first = false;
            // Messages of a batch mostly send their keys in one order: the key seen at this
            // place last time is checked first, in a few word compares.
            let predicted = self.key_order.get(k).copied().flatten();
            let key = match predicted {
                Some(key) if r.key_is(&FIELD_KEYS[key as usize]) => Some(key),
                _ => {
                    let key = r.key()?.decode().and_then(|name| FieldKey::of(&name));
                    if let Some(slot) = self.key_order.get_mut(k) {
                        *slot = key;
                    }
                    key
                }
            };
            k += 1;
            match key {
                Some(FieldKey::Metrics) => f.metrics = self.metrics_field(r)?,
                Some(key) => f.values[key as usize].read_over(r)?,
                None => {
                    r.skip_value()?;
                }
            }
        }
        Ok(())
    }

    fn metrics_field(&mut self, r: &mut Reader<'a>) -> json::Result<MetricsField> {
        self.lone_metric_name = false;
        if r.peek() != Some(b'{') {
            self.metric_count = 0;
            self.order_known = false;
            return Ok(match Value::read(r)? {
                Value::Null => MetricsField::Absent,
                _ => MetricsField::NotObject,
            });
        }
        let start = r.pos();
        r.begin_object()?;
        // Entries are overwritten in place: an entry whose name is the one at its place last
        // time keeps that name, matched in a few word compares rather than read again. After
        // the first name that differs, the message mostly holds other names or another order:
        // the rest are read without the test, which would mostly fail.
        let mut n = 0;
        let mut first = true;
        let mut same_names = true;
        let mut missing_value = false;
        while r.key_follows(first)? {
            first = false;
            let same_name = same_names
                && self
                    .metrics()
                    .get(n)
                    .and_then(Metric::words)
                    .is_some_and(|w| r.key_is(&w));
            // Where the name starts, for its words.
            let at = r.pos() + 1;
            let key = if same_name { None } else { Some(r.key()?) };
            let MetricValue { value, ty } = MetricValue::read(r)?;
            missing_value |= value.is_none();
            let Some(key) = key else {
                let m = &mut self.metrics[n];
                (m.value, m.ty) = (value, ty);
                n += 1;
                continue;
            };
            same_names = false;
            let Some(name) = key.decode() else {
                self.lone_metric_name = true;
                continue;
            };
            let (prefix, tail) = match (key.escaped, r.words_at(at, name.len())) {
                (false, Some(words)) => words,
                _ => Metric::words_of(&name),
            };
            let plain = !key.escaped && (1..=16).contains(&name.len());
            let m = Metric {
                prefix,
                tail,
                plain,
                name,
                value,
                ty,
            };
            if n == self.metrics.len() {
                self.metrics.push(m);
            } else {
                self.metrics[n] = m;
            }
            n += 1;
        }
        if !same_names || n != self.metric_count {
            self.order_known = false;
        }
        self.metric_count = n;
        self.missing_value = missing_value;
        self.metrics_text = r.since(start);
        Ok(MetricsField::Object)
    }

    /// Applies the per-item rules in order and records the item; `raw` is the message's text.
    fn judge(&mut self, f: &Fields<'a>, raw: &'a str, url: Option<&UrlIdentity<'a>>) {
        let too_large = raw.len() > self.max_payload;
        let mut unescaped = Unescaped::default();
        let from_url = |s: Option<&'a str>| s.map_or(Text::LoneSurrogate, Text::Valid);
        let (tenant, device, msg_type, token) = match url {
            Some(u) => (
                from_url(u.tenant),
                from_url(u.device),
                from_url(u.msg_type),
                from_url(u.token),
            ),
            None => (
                f.get(FieldKey::TenantId).text(&mut unescaped.tenant),
                f.get(FieldKey::DeviceId).text(&mut unescaped.device),
                f.get(FieldKey::MsgType).text(&mut unescaped.msg_type),
                f.get(FieldKey::ProvisionToken).text(&mut unescaped.token),
            ),
        };
        let site = f.get(FieldKey::SiteId).text(&mut unescaped.site);
        let identity = match (tenant.get(), device.get(), site.get(), token.get()) {
            (Some(tenant), Some(device), Some(site), Some(token)) if !too_large => {
                let id = Identity {
                    tenant,
                    device,
                    site,
                    token,
                };
                let at = self.batch.find_group(&id);
                Some((id, at))
            }
            _ => None,
        };
        // An identity an earlier item of the batch has passed the id rules: most items of a
        // batch come from a few devices, so most skip them.
        let known = identity
            .as_ref()
            .and_then(|(_, at)| at.found)
            .map(|g| self.batch.group_escapes(g));
        let (device_escape, site_escape) = match known {
            Some((device, site)) => (Some(device), Some(site)),
            None => (
                device.get().and_then(checked_id),
                site.get().and_then(checked_id),
            ),
        };
        let checked: Result<(usize, u64, i64), Reason> = 'check: {
            if too_large {
                break 'check Err(Reason::PayloadTooLarge);
            }
            let ids_ok = known.is_some()
                || (tenant.get().is_some_and(valid_tenant)
                    && device_escape.is_some()
                    && site_escape.is_some()
                    && token.get().is_some_and(valid_id));
            let seq = match f.get(FieldKey::Seq) {
                Value::Missing | Value::Null => Some(0),
                Value::Number(n) if n.is_integer() => parse_seq(n.text),
                _ => None,
            };
            let (true, Some(seq), true) = (ids_ok, seq, msg_type.is_string()) else {
                break 'check Err(Reason::InvalidSchema);
            };
            let Some(measurement) = msg_type
                .get()
                .and_then(|t| MSG_TYPES.into_iter().position(|m| m == t))
            else {
                break 'check Err(Reason::InvalidMsgType);
            };
            let ts = match f.get(FieldKey::Ts) {
                Value::Missing | Value::Null => self.receive_time(),
                v => v
                    .text(&mut unescaped.ts)
                    .get()
                    .and_then(|s| self.dates.parse_rfc3339(s)),
            };
            let Some(ts) = ts else {
                break 'check Err(Reason::InvalidTimestamp);
            };
            if !self.read_metrics(f.metrics) {
                break 'check Err(Reason::InvalidMetrics);
            }
            Ok((measurement, seq, ts))
        };
        let (measurement, seq, ts) = match checked {
            Ok(v) => v,
            Err(reason) => {
                let message = self.explained(reason, f, raw, url);
                let tenant = tenant.get().filter(|t| valid_tenant(t));
                self.batch
                    .push_rejected_writing(reason, tenant, device.get(), |out| {
                        explain::message(reason, &message, out)
                    });
                return;
            }
        };
        let Some((id, at)) = identity else {
            let reason = Reason::InvalidSchema;
            let message = self.explained(reason, f, raw, url);
            self.batch.push_rejected_writing(reason, None, None, |out| {
                explain::message(reason, &message, out)
            });
            return;
        };
        let (metrics, order) = (&self.metrics[..self.metric_count], &self.order);
        // The fields of the line below, in its order.
        let mut shape = Shape::new(measurement);
        for (m, _) in in_order(metrics, order) {
            shape.field(m.name.as_bytes(), m.prefix, m.ty);
        }
        shape.field(b"seq", words::head(b"seq"), FieldType::Integer);
        // From `checked_id` (`None`, which the rules above exclude: scan it again).
        let escapes = (device_escape.unwrap_or(true), site_escape.unwrap_or(true));
        self.batch
            .push_shaped(&id, at, escapes, shape.finish(), |out| {
                let mut line = Line::start(out, MSG_TYPES[measurement]);
                line.tag("device_id", Key::scanned(id.device.as_bytes(), escapes.0));
                line.tag("site_id", Key::scanned(id.site.as_bytes(), escapes.1));
                for (m, escape) in in_order(metrics, order) {
                    let name = Key::scanned(m.name.as_bytes(), escape);
                    if let Some(value) = &m.value {
                        line.number(name, value);
                    }
                }
                // A fixed name, known to need no escapes.
                line.uint(Key::scanned(b"seq", false), seq);
                line.finish(ts);
            });
    }

    /// What the detail of a message `judge` rejected for `reason` is written from (the rejected
    /// path only).
    fn explained(
        &self,
        reason: Reason,
        f: &Fields<'a>,
        raw: &'a str,
        url: Option<&UrlIdentity<'a>>,
    ) -> explain::Message<'a> {
        use explain::Field;
        let (tenant, device, msg_type, token) = match url {
            Some(u) => (
                Field::url(u.tenant),
                Field::url(u.device),
                Field::url(u.msg_type),
                Field::url(u.token),
            ),
            None => (
                Field::of(&f.get(FieldKey::TenantId)),
                Field::of(&f.get(FieldKey::DeviceId)),
                Field::of(&f.get(FieldKey::MsgType)),
                Field::of(&f.get(FieldKey::ProvisionToken)),
            ),
        };
        explain::Message {
            tenant,
            device,
            msg_type,
            token,
            site: Field::of(&f.get(FieldKey::SiteId)),
            seq: f.get(FieldKey::Seq),
            ts: f.get(FieldKey::Ts),
            raw,
            max_payload: self.max_payload,
            metrics: match reason {
                Reason::InvalidMetrics => self.metrics_read(f.metrics),
                _ => explain::MetricsRead::Unknown,
            },
            receive_time_ok: self.receive_time().is_some(),
        }
    }

    /// What this read of the metrics knows of their first broken rule: with valid names, in
    /// `order`, it is the first entry without a usable value, and only that entry is read again.
    fn metrics_read(&self, field: MetricsField) -> explain::MetricsRead<'a> {
        let known = field == MetricsField::Object
            && !self.lone_metric_name
            && self.order_known
            && self.names_ok;
        if !known {
            return explain::MetricsRead::Unknown;
        }
        let bad = self
            .order
            .iter()
            .map(|w| w.index as usize)
            .find(|&i| self.metrics[i].value.is_none());
        match bad {
            Some(index) => explain::MetricsRead::BadValue {
                object: self.metrics_text,
                index,
            },
            _ => explain::MetricsRead::Unknown,
        }
    }

    /// The last `metrics` object's entries (where another field is borrowed beside them, they
    /// are sliced in place instead: a method would borrow the whole parser).
    fn metrics(&self) -> &[Metric<'a>] {
        &self.metrics[..self.metric_count]
    }

    /// The timestamp of a message without `ts`: `receive_ns` plus the item's index, so that no
    /// two of them in one batch are the same InfluxDB point; `None` outside InfluxDB's range.
    fn receive_time(&self) -> Option<i64> {
        let index = i64::try_from(self.batch.len()).expect("a batch holds at most 100 items");
        self.receive_ns
            .checked_add(index)
            .filter(|ns| (MIN_NS..=MAX_NS).contains(ns))
    }

    /// Puts the message's metrics in name order (`order`), keeping the last of duplicate
    /// names. False when they are not valid metrics.
    fn read_metrics(&mut self, field: MetricsField) -> bool {
        match field {
            MetricsField::Absent => {
                self.order.clear();
                // `metrics` still holds an earlier object's entries, which `order` no longer
                // describes.
                self.order_known = false;
                return true;
            }
            MetricsField::NotObject => return false,
            MetricsField::Object if self.lone_metric_name => return false,
            MetricsField::Object => {}
        }
        if !self.order_known {
            let metrics = &self.metrics[..self.metric_count];
            self.names_ok = name_sets::sort_names(metrics, &mut self.order);
            self.order_known = true;
        }
        self.names_ok
            && (!self.missing_value
                || in_order(self.metrics(), &self.order).all(|(m, _)| m.value.is_some()))
    }
}

/// Fills `order` from `metrics` and checks the names it keeps, setting their `escape`.
fn sort_names(metrics: &[Metric<'_>], order: &mut Vec<Written>) -> bool {
    order.clear();
    order.extend((0..metrics.len()).map(|i| Written {
        index: u32::try_from(i).expect("under 2^32 metrics"),
        escape: true,
    }));
    sort_by_name(order, metrics);
    order.dedup_by(|next, kept| {
        let same = metrics[next.index as usize].same_name(&metrics[kept.index as usize]);
        if same {
            *kept = *next;
        }
        same
    });
    order.len() <= MAX_METRICS
        && order.iter_mut().all(|w| {
            let m = &metrics[w.index as usize];
            let escape = checked_metric_name(&m.name, m.prefix);
            w.escape = escape.unwrap_or(true);
            escape.is_some()
        })
}

/// Sorts `order` by the names of the entries it points at, stably: duplicates stay in body
/// order, so the last of each run is the one kept. A message holds a handful of names, where an
/// insertion sort on the prefixes beats the general sort's set-up; more go to `sort_by`.
fn sort_by_name(order: &mut [Written], metrics: &[Metric<'_>]) {
    let cmp = |a: &Written, b: &Written| {
        let (a, b) = (&metrics[a.index as usize], &metrics[b.index as usize]);
        a.prefix.cmp(&b.prefix).then_with(|| a.name.cmp(&b.name))
    };
    if order.len() > 16 {
        order.sort_by(cmp);
        return;
    }
    for i in 1..order.len() {
        let x = order[i];
        let mut j = i;
        while j > 0 && cmp(&x, &order[j - 1]).is_lt() {
            order[j] = order[j - 1];
            j -= 1;
        }
        order[j] = x;
    }
}

/// The entries of `metrics` that `order` names, in its order, and whether each name escapes.
fn in_order<'m, 'a>(
    metrics: &'m [Metric<'a>],
    order: &'m [Written],
) -> impl Iterator<Item = (&'m Metric<'a>, bool)> {
    order.iter().map(|w| (&metrics[w.index as usize], w.escape))
}

/// `Some(escape)` for a valid metric name, as `checked_id`; `prefix` is its `words::head`.
#[inline]
fn checked_metric_name(name: &str, prefix: u64) -> Option<bool> {
    checked_id_headed(name, prefix)
        .filter(|_| !matches!(name, "seq" | "time" | "device_id" | "site_id"))
}

/// `seq`: an integer token in `0..=i64::MAX`; `-0` is 0.
fn parse_seq(token: &str) -> Option<u64> {
    let (negative, digits) = match token.strip_prefix('-') {
        Some(rest) => (true, rest.as_bytes()),
        None => (false, token.as_bytes()),
    };
    // A JSON integer has no leading zero: 20 digits or more exceed `i64::MAX`, and 19 fit a
    // `u64` without overflow checks per digit.
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let n = digits.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then_some(n * 10 + u64::from(d))
    })?;
    match (negative, n) {
        (true, 0) => Some(0),
        (true, _) => None,
        (false, n) if n <= i64::MAX as u64 => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn good() -> Value {
        json!({
            "tenant_id": "acme",
            "device_id": "dev-1",
            "msg_type": "telemetry",
            "provision_token": "tok",
            "site_id": "site-1",
            "ts": "2024-05-01T12:00:00Z",
            "seq": 7,
            "metrics": {"temp": 22.5, "on": true}
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut m = good();
        m[key] = value;
        m
    }

    fn without(key: &str) -> Value {
        let mut m = good();
        if let Some(o) = m.as_object_mut() {
            o.remove(key);
        }
        m
    }

    fn body_of(messages: &[Value]) -> String {
        json!({ "messages": messages }).to_string()
    }

    fn batch(body: &str) -> Result<Batch, BodyError> {
        parse_batch(body.as_bytes(), NOW, 8192)
    }

    fn reasons(body: &str) -> Vec<Option<&'static str>> {
        match batch(body) {
            Ok(b) => b.reasons().map(|r| r.map(Reason::code)).collect(),
            Err(e) => panic!("body error {e}"),
        }
    }

    fn reason_of(message: Value) -> Option<&'static str> {
        reasons(&body_of(&[message]))[0]
    }

    fn body_error(body: &str) -> String {
        match batch(body) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    fn lines(body: &str) -> String {
        let b = batch(body).unwrap_or_default();
        let all: Vec<u8> = b.tenant_lines().into_iter().flat_map(|t| t.1).collect();
        String::from_utf8(all).unwrap_or_default()
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    const NOT_JSON: &str = "body is not valid JSON";
    const NO_LIST: &str = "body must be a JSON object with a \"messages\" list";

    #[test]
    fn metric_names_are_ids_but_not_reserved_keys() {
        let check = |name: &str| checked_metric_name(name, words::head(name.as_bytes()));
        assert_eq!(check("seq"), None);
        assert_eq!(check("a b"), Some(true));
        assert_eq!(check("a\\b"), None);
    }

    #[test]
    fn repeated_metric_names_are_sorted_and_checked_like_new_ones() {
        // Raw text: the body order of the names matters here.
        let message = |metrics: &str| {
            format!(
                r#"{{"tenant_id":"t","device_id":"d","msg_type":"telemetry","provision_token":"k","site_id":"s","ts":"2024-05-01T12:00:00Z","metrics":{metrics}}}"#
            )
        };
        let all = [
            r#"{"b":1,"a b":true}"#,
            r#"{"b":2.5,"a b":false}"#,
            r#"{"b":"x","a b":true}"#,
            r#"{"b":3,"a b":true}"#,
            r#"{"a b":4,"b":5}"#,
            r#"{"b":6,"b":7}"#,
            r#"{"b":8,"b":9}"#,
            r#"{"b":1,"seq":1}"#,
            r#"{"b":1,"seq":1}"#,
            r#"{"b":1,"a b":true}"#,
        ];
        let messages: Vec<String> = all.iter().map(|m| message(m)).collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let bad = Some("INVALID_METRICS");
        assert_eq!(
            reasons(&body),
            [None, None, bad, None, None, None, None, bad, bad, None]
        );
        let fields: Vec<String> = lines(&body)
            .lines()
            .filter_map(|l| Some(l.split_once("site_id=s ")?.1.rsplit_once(' ')?.0.to_owned()))
            .collect();
        assert_eq!(
            fields,
            [
                "a\\ b=true,b=1.0,seq=0i",
                "a\\ b=false,b=2.5,seq=0i",
                "a\\ b=true,b=3.0,seq=0i",
                "a\\ b=4.0,b=5.0,seq=0i",
                "b=7.0,seq=0i",
                "b=9.0,seq=0i",
                "a\\ b=true,b=1.0,seq=0i",
            ]
        );
    }

    #[test]
    fn name_sets_remembered_from_earlier_batches_read_as_new_ones() {
        let body = |metrics: &str| {
            format!(
                r#"{{"messages":[{{"tenant_id":"t","device_id":"d","msg_type":"telemetry","provision_token":"k","site_id":"s","ts":"2024-05-01T12:00:00Z","metrics":{metrics}}}]}}"#
            )
        };
        let all = [
            r#"{"b":1,"a b":true}"#,
            r#"{"b":"x","a b":true}"#,
            r#"{"b":6,"b":7}"#,
            r#"{"b":1,"seq":1}"#,
            r#"{"seq":1,"b":1}"#,
            r#"{"a=":1,"a,":2,"a":3}"#,
        ];
        let first: Vec<_> = all
            .iter()
            .map(|m| (reasons(&body(m)), lines(&body(m))))
            .collect();
        for _ in 0..2 {
            for (m, want) in all.iter().zip(&first) {
                assert_eq!(&(reasons(&body(m)), lines(&body(m))), want, "{m}");
            }
        }
        assert!(first[0].1.contains(" a\\ b=true,b=1.0,seq=0i "));
        assert!(first[2].1.contains(" b=7.0,seq=0i "));
        assert_eq!(first[3].0, [Some("INVALID_METRICS")]);
    }

    #[test]
    fn a_valid_message_is_encoded() {
        let body = body_of(&[good()]);
        assert_eq!(reasons(&body), [None]);
        assert_eq!(
            lines(&body),
            "telemetry,device_id=dev-1,site_id=site-1 on=true,temp=22.5,seq=7i 1714564800000000000\n"
        );
        let (_, _, json) = batch(&body).unwrap_or_default().response_json();
        assert_eq!(
            String::from_utf8(json).unwrap_or_default(),
            r#"{"accepted":1,"rejected":0,"results":[{"index":0,"status":"accepted","device_id":"dev-1"}]}"#
        );
    }

    #[test]
    fn whole_body_errors_in_order() {
        assert_eq!(body_error("{"), NOT_JSON);
        assert_eq!(body_error(""), NOT_JSON);
        assert_eq!(body_error("{\"messages\":[NaN]}"), NOT_JSON);
        assert_eq!(body_error("{\"messages\":[Infinity]}"), NOT_JSON);
        assert_eq!(body_error("{\"messages\":[]} x"), NOT_JSON);
        assert_eq!(body_error("\u{feff}{\"messages\":[]}"), NOT_JSON);
        assert_eq!(body_error("{\"a\u{1}\":1,\"messages\":[]}"), NOT_JSON);
        assert_eq!(body_error("{\"messages\":[{\"a\":\"\u{1}\"}]}"), NOT_JSON);
        assert!(matches!(
            parse_batch(b"{\"messages\":[\"\xff\"]}", 0, 8192),
            Err(BodyError::NotJson)
        ));
        assert!(matches!(
            parse_batch(b"{\"messages\":[\"\xed\xa0\x80\"]}", 0, 8192),
            Err(BodyError::NotJson)
        ));
        assert_eq!(body_error("[]"), NO_LIST);
        assert_eq!(body_error("1e400"), NO_LIST);
        assert_eq!(body_error("{}"), NO_LIST);
        assert_eq!(body_error("{\"messages\":{}}"), NO_LIST);
        assert_eq!(body_error("{\"messages\":null}"), NO_LIST);
        assert_eq!(body_error("{\"Messages\":[1]}"), NO_LIST);
        assert_eq!(body_error("{\"messages\\ud800\":[1]}"), NO_LIST);
        assert_eq!(body_error(" {\"messages\" : [ ] } "), "batch is empty");
        let many = body_of(&vec![good(); 101]);
        assert_eq!(
            body_error(&many),
            "batch has 101 messages; at most 100 are allowed"
        );
        assert_eq!(reasons(&body_of(&vec![good(); 100])).len(), 100);
        assert_eq!(reasons(&body_of(&[good()])).len(), 1);
    }

    #[test]
    fn duplicate_body_keys_last_wins() {
        assert_eq!(
            body_error("{\"messages\":[1],\"messages\":[]}"),
            "batch is empty"
        );
        assert_eq!(body_error("{\"messages\":[],\"messages\":5}"), NO_LIST);
        assert_eq!(
            body_error("{\"messages\":5,\"messages\":[]}"),
            "batch is empty"
        );
        assert_eq!(body_error("{\"mess\\u0061ges\":[]}"), "batch is empty");
        assert_eq!(
            body_error("{\"x\":\"\\ud800\",\"messages\":[]}"),
            "batch is empty"
        );
    }

    #[test]
    fn depth_127_is_accepted_and_128_is_not_json_wherever_it_is() {
        // Body object (1) + unknown value.
        assert_eq!(
            body_error(&format!("{{\"x\":{},\"messages\":[]}}", nested(126))),
            "batch is empty"
        );
        assert_eq!(
            body_error(&format!("{{\"x\":{},\"messages\":[]}}", nested(127))),
            NOT_JSON
        );
        assert_eq!(
            body_error(&format!("{{\"messages\":[],\"x\":{}}}", nested(127))),
            NOT_JSON
        );
        assert_eq!(body_error(&nested(127)), NO_LIST);
        assert_eq!(body_error(&nested(128)), NOT_JSON);
        // Element of the list: 2 open.
        let element = |d| format!("{{\"messages\":[{}]}}", nested(d));
        assert_eq!(reasons(&element(125)), [Some("INVALID_SCHEMA")]);
        assert_eq!(body_error(&element(126)), NOT_JSON);
        // Inside a message: 3 open.
        let inner = |d: usize| {
            with(
                "extra",
                serde_json::from_str(&nested(d)).unwrap_or_default(),
            )
        };
        assert_eq!(reason_of(inner(124)), None);
        assert_eq!(body_error(&body_of(&[inner(125)])), NOT_JSON);
        // A known field of the wrong type, and a metric value: 3 and 4 open.
        let as_field = |d: usize| {
            with(
                "site_id",
                serde_json::from_str(&nested(d)).unwrap_or_default(),
            )
        };
        assert_eq!(reason_of(as_field(124)), Some("INVALID_SCHEMA"));
        assert_eq!(body_error(&body_of(&[as_field(125)])), NOT_JSON);
        let metric = |d: usize| {
            with(
                "metrics",
                json!({"a": serde_json::from_str::<Value>(&nested(d)).unwrap_or_default()}),
            )
        };
        assert_eq!(reason_of(metric(123)), Some("INVALID_METRICS"));
        assert_eq!(body_error(&body_of(&[metric(124)])), NOT_JSON);
        // Metrics not read because an earlier rule failed, an earlier duplicate, 101 messages.
        let mut m = metric(124);
        m["msg_type"] = json!("nope");
        assert_eq!(body_error(&body_of(&[m])), NOT_JSON);
        let dup = format!(
            "{{\"messages\":[{{\"metrics\":{{\"a\":{}}},\"metrics\":null}}]}}",
            nested(124)
        );
        assert_eq!(body_error(&dup), NOT_JSON);
        let mut many = vec![good(); 100];
        many.push(inner(125));
        assert_eq!(body_error(&body_of(&many)), NOT_JSON);
        many.pop();
        many.push(inner(124));
        assert_eq!(
            body_error(&body_of(&many)),
            "batch has 101 messages; at most 100 are allowed"
        );
        // An earlier `messages` list and a too-large message are still checked.
        let earlier = format!("{{\"messages\":[{}],\"messages\":[]}}", nested(126));
        assert_eq!(body_error(&earlier), NOT_JSON);
        let big = with("pad", json!("x".repeat(9000)));
        let mut big_deep = big.clone();
        big_deep["extra"] = serde_json::from_str(&nested(125)).unwrap_or_default();
        assert_eq!(reason_of(big), Some("PAYLOAD_TOO_LARGE"));
        assert_eq!(body_error(&body_of(&[big_deep])), NOT_JSON);
        // Strings never count.
        let brackets = with("extra", json!("[[[[{{{{".repeat(100)));
        assert_eq!(reason_of(brackets), None);
    }

    #[test]
    fn payload_size_is_the_raw_element() {
        let base = good().to_string();
        let pad = 8192 - base.len() - ",\"pad\":\"\"".len();
        let exact = format!(
            "{},\"pad\":\"{}\"}}",
            &base[..base.len() - 1],
            "x".repeat(pad)
        );
        assert_eq!(exact.len(), 8192);
        let over = format!(
            "{},\"pad\":\"{}\"}}",
            &base[..base.len() - 1],
            "x".repeat(pad + 1)
        );
        let body = format!("{{\"messages\":[ \n{exact}\n , {over} ]}}");
        assert_eq!(reasons(&body), [None, Some("PAYLOAD_TOO_LARGE")]);
        let spaced = format!("{{\"messages\":[\n{exact} ,\t{exact}\r]}}");
        assert_eq!(reasons(&spaced), [None, None]);
        let (_, _, json) = batch(&body).unwrap_or_default().response_json();
        assert!(String::from_utf8(json).unwrap_or_default().ends_with(
            r#"{"index":1,"status":"rejected","reason":"PAYLOAD_TOO_LARGE","detail":"message is 8193 bytes; the limit is 8192 bytes","device_id":"dev-1"}]}"#
        ));
        let long_string = format!("{{\"messages\":[\"{}\"]}}", "x".repeat(9000));
        assert_eq!(reasons(&long_string), [Some("PAYLOAD_TOO_LARGE")]);
        assert_eq!(reasons("{\"messages\":[1]}"), [Some("INVALID_SCHEMA")]);
    }

    #[test]
    fn schema_rules() {
        for key in [
            "tenant_id",
            "device_id",
            "site_id",
            "provision_token",
            "msg_type",
        ] {
            assert_eq!(
                reason_of(without(key)),
                Some("INVALID_SCHEMA"),
                "{key} missing"
            );
            assert_eq!(
                reason_of(with(key, json!(5))),
                Some("INVALID_SCHEMA"),
                "{key} number"
            );
            assert_eq!(
                reason_of(with(key, Value::Null)),
                Some("INVALID_SCHEMA"),
                "{key} null"
            );
        }
        for key in ["device_id", "site_id", "provision_token"] {
            for bad in [
                "",
                "a\u{0}b",
                "a\nb",
                "tab\t",
                "del\u{7f}",
                "c1\u{85}",
                "c1\u{9f}",
                "back\\slash",
                "trailing\\",
            ] {
                assert_eq!(
                    reason_of(with(key, json!(bad))),
                    Some("INVALID_SCHEMA"),
                    "{key}={bad:?}"
                );
            }
            for ok in ["a", "Dev 1,=\"x\"", "é", "\u{a0}", "😀", "\u{2028}"] {
                assert_eq!(reason_of(with(key, json!(ok))), None, "{key}={ok:?}");
            }
            assert_eq!(reason_of(with(key, json!("x".repeat(128)))), None);
            assert_eq!(
                reason_of(with(key, json!("x".repeat(129)))),
                Some("INVALID_SCHEMA")
            );
            assert_eq!(
                reason_of(with(key, json!(format!("{}é", "x".repeat(126))))),
                None
            );
            assert_eq!(
                reason_of(with(key, json!(format!("{}é", "x".repeat(127))))),
                Some("INVALID_SCHEMA")
            );
        }
        for bad in ["", "Acme", "a.b", "a b", "é"] {
            assert_eq!(
                reason_of(with("tenant_id", json!(bad))),
                Some("INVALID_SCHEMA"),
                "{bad:?}"
            );
        }
        assert_eq!(reason_of(with("tenant_id", json!("a-z_0-9"))), None);
        assert_eq!(reason_of(with("tenant_id", json!("t".repeat(64)))), None);
        assert_eq!(
            reason_of(with("tenant_id", json!("t".repeat(65)))),
            Some("INVALID_SCHEMA")
        );
        assert_eq!(reason_of(json!([good()])), Some("INVALID_SCHEMA"));
        assert_eq!(reason_of(json!("x")), Some("INVALID_SCHEMA"));
        assert_eq!(reason_of(Value::Null), Some("INVALID_SCHEMA"));
    }

    #[test]
    fn seq_rules() {
        let seq = |raw: &str| {
            let b = format!(
                "{{\"messages\":[{}]}}",
                good()
                    .to_string()
                    .replace("\"seq\":7", &format!("\"seq\":{raw}"))
            );
            (reasons(&b)[0], lines(&b))
        };
        assert_eq!(seq("0").0, None);
        assert!(seq("-0").1.contains(",seq=0i "));
        assert!(seq("null").1.contains(",seq=0i "));
        assert!(seq("9223372036854775807")
            .1
            .contains(",seq=9223372036854775807i "));
        for bad in [
            "9223372036854775808",
            "-1",
            "1.0",
            "1e2",
            "1E2",
            "\"1\"",
            "true",
            "[]",
            "{}",
            "99999999999999999999999",
            "10000000000000000000",
            "18446744073709551615",
            "-9223372036854775808",
        ] {
            assert_eq!(seq(bad).0, Some("INVALID_SCHEMA"), "{bad}");
        }
        assert!(lines(&body_of(&[without("seq")])).contains(" on=true,temp=22.5,seq=0i "));
    }

    #[test]
    fn msg_type_and_timestamp_rules() {
        assert_eq!(reason_of(with("msg_type", json!("heartbeat"))), None);
        for bad in ["Telemetry", "telemetry ", "", "log"] {
            assert_eq!(
                reason_of(with("msg_type", json!(bad))),
                Some("INVALID_MSG_TYPE")
            );
        }
        assert!(lines(&body_of(&[with("msg_type", json!("heartbeat"))])).starts_with("heartbeat,"));
        assert_eq!(
            reason_of(with("ts", json!("2024-05-01T12:00:00"))),
            Some("INVALID_TIMESTAMP")
        );
        assert_eq!(
            reason_of(with("ts", json!(1714564800))),
            Some("INVALID_TIMESTAMP")
        );
        assert_eq!(
            reason_of(with("ts", json!("2300-01-01T00:00:00Z"))),
            Some("INVALID_TIMESTAMP")
        );
        assert!(lines(&body_of(&[with("ts", Value::Null)])).ends_with(&format!(" {NOW}\n")));
        assert!(lines(&body_of(&[without("ts")])).ends_with(&format!(" {NOW}\n")));
        let escaped = good().to_string().replace("00:00Z", "00:00\\u005a");
        assert_eq!(reasons(&format!("{{\"messages\":[{escaped}]}}")), [None]);
        // Order: schema before msg_type before ts before metrics.
        let mut m = with("msg_type", json!("x"));
        m["ts"] = json!("bad");
        m["metrics"] = json!([]);
        assert_eq!(reason_of(m.clone()), Some("INVALID_MSG_TYPE"));
        m["seq"] = json!(-1);
        assert_eq!(reason_of(m.clone()), Some("INVALID_SCHEMA"));
        m["seq"] = json!(1);
        m["msg_type"] = json!("telemetry");
        assert_eq!(reason_of(m.clone()), Some("INVALID_TIMESTAMP"));
        m["ts"] = Value::Null;
        assert_eq!(reason_of(m), Some("INVALID_METRICS"));
    }

    #[test]
    fn a_message_without_ts_gets_the_receive_time_plus_its_index() {
        // Per item: its reason, and for an accepted one its line's timestamp.
        let outcome = |b: Batch| -> Vec<(Option<&str>, Option<i64>)> {
            let text: Vec<u8> = b.tenant_lines().into_iter().flat_map(|t| t.1).collect();
            let text = String::from_utf8(text).unwrap_or_default();
            let mut stamps = text.lines().map(|l| l.rsplit(' ').next()?.parse().ok());
            b.reasons()
                .map(|r| match r {
                    None => (None, stamps.next().flatten()),
                    Some(r) => (Some(r.code()), None),
                })
                .collect()
        };
        let at = |receive_ns: i64, messages: &[Value]| {
            outcome(parse_batch(body_of(messages).as_bytes(), receive_ns, 8192).unwrap_or_default())
        };
        let bad = with("seq", json!(-1));
        assert_eq!(
            at(NOW, &[without("ts"), good(), bad, with("ts", Value::Null)]),
            [
                (None, Some(NOW)),
                (None, Some(1_714_564_800_000_000_000)),
                (Some("INVALID_SCHEMA"), None),
                (None, Some(NOW + 3)),
            ]
        );
        // Only the last `messages` list holds items: it counts from 0.
        let twice = format!(
            "{{\"messages\":[{},{}],\"messages\":[{}]}}",
            good(),
            good(),
            without("ts")
        );
        assert_eq!(
            outcome(batch(&twice).unwrap_or_default()),
            [(None, Some(NOW))]
        );
        // Outside InfluxDB's range (or i64's) it is an invalid timestamp.
        let mut last_of_100 = vec![good(); 99];
        last_of_100.push(without("ts"));
        assert_eq!(at(MAX_NS - 99, &last_of_100)[99], (None, Some(MAX_NS)));
        assert_eq!(
            at(MAX_NS - 98, &last_of_100)[99],
            (Some("INVALID_TIMESTAMP"), None)
        );
        let two = [without("ts"), without("ts")];
        assert_eq!(at(i64::MAX, &two), [(Some("INVALID_TIMESTAMP"), None); 2]);
        assert_eq!(
            at(MIN_NS - 1, &two),
            [(Some("INVALID_TIMESTAMP"), None), (None, Some(MIN_NS))]
        );
        let url = UrlIdentity {
            tenant: Some("acme"),
            device: Some("dev-1"),
            msg_type: Some("telemetry"),
            token: Some("tok"),
        };
        let single = |receive_ns| {
            outcome(parse_single(br#"{"site_id":"s"}"#, &url, receive_ns, 8192).unwrap_or_default())
        };
        assert_eq!(single(MAX_NS), [(None, Some(MAX_NS))]);
        assert_eq!(single(MIN_NS - 1), [(Some("INVALID_TIMESTAMP"), None)]);
    }

    #[test]
    fn metrics_rules() {
        let metrics = |m: Value| reason_of(with("metrics", m));
        assert_eq!(metrics(Value::Null), None);
        assert_eq!(metrics(json!({})), None);
        assert!(lines(&body_of(&[with("metrics", Value::Null)])).contains(" seq=7i "));
        for bad in [json!([]), json!("x"), json!(1), json!(true)] {
            assert_eq!(metrics(bad.clone()), Some("INVALID_METRICS"), "{bad}");
        }
        for bad in [
            json!({"a": null}),
            json!({"a": "1"}),
            json!({"a": [1]}),
            json!({"a": {}}),
        ] {
            assert_eq!(metrics(bad.clone()), Some("INVALID_METRICS"), "{bad}");
        }
        for name in [
            "",
            "seq",
            "time",
            "device_id",
            "site_id",
            "a\u{1}",
            "a\u{7f}",
            "a\u{80}",
            "a\\b",
        ] {
            assert_eq!(
                metrics(json!({ name: 1 })),
                Some("INVALID_METRICS"),
                "{name:?}"
            );
        }
        for name in [
            "Seq",
            "timestamp",
            "tenant_id",
            "msg_type",
            "a b",
            "a,b=c",
            "é",
            "\u{a0}",
        ] {
            assert_eq!(metrics(json!({ name: 1 })), None, "{name:?}");
        }
        assert_eq!(metrics(json!({ "n".repeat(128): 1 })), None);
        assert_eq!(
            metrics(json!({ "n".repeat(129): 1 })),
            Some("INVALID_METRICS")
        );
        let many = |n: usize| {
            let m: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("m{i}"), json!(i))).collect();
            Value::Object(m)
        };
        assert_eq!(metrics(many(256)), None);
        assert_eq!(metrics(many(257)), Some("INVALID_METRICS"));
        // 257 keys, 256 distinct after last-wins dedup.
        let dup = good().to_string().replace(
            "\"metrics\":{\"on\":true,\"temp\":22.5}",
            &format!(
                "\"metrics\":{},\"x\":0",
                many(256).to_string().replacen('{', "{\"m0\":false,", 1)
            ),
        );
        assert_eq!(reasons(&format!("{{\"messages\":[{dup}]}}")), [None]);
        // Only the last of duplicate names is judged.
        let last_wins = good().to_string().replace(
            "\"metrics\":{\"on\":true,\"temp\":22.5}",
            "\"metrics\":{\"a\":null,\"b\":\"x\",\"a\":1,\"b\":false}",
        );
        let body = format!("{{\"messages\":[{last_wins}]}}");
        assert_eq!(reasons(&body), [None]);
        assert!(lines(&body).contains(" a=1.0,b=false,seq=7i "));
        // Values serde_json cannot read as a whole `metrics` value.
        for raw in ["1e400", "\"\\ud800\"", &"9".repeat(400)] {
            let m = good()
                .to_string()
                .replace("{\"on\":true,\"temp\":22.5}", raw);
            assert_eq!(
                reasons(&format!("{{\"messages\":[{m}]}}")),
                [Some("INVALID_METRICS")],
                "{raw}"
            );
            let deep = m.replacen('{', &format!("{{\"x\":{},", nested(125)), 1);
            assert_eq!(
                body_error(&format!("{{\"messages\":[{deep}]}}")),
                NOT_JSON,
                "{raw}"
            );
        }
    }

    #[test]
    fn numbers_read_from_a_block_print_as_plain_numbers_do() {
        let ints = [
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "100",
            "123456789012345",
            "-12345678901234",
        ];
        let fracs = [
            "0", "00", "5", "50", "05", "0001", "00001", "000012", "1230", "10101",
        ];
        let mut tokens: Vec<String> = ints.iter().map(|i| i.to_string()).collect();
        for int in ints {
            tokens.extend(fracs.iter().map(|f| format!("{int}.{f}")));
        }
        let mut in_block = 0;
        for token in &tokens {
            for tail in ["", ",\"a\":12345678901234567", "}", "0e5", " 9"] {
                let text = format!("{token}{tail}                ");
                let mut r = Reader::new(&text);
                let Ok((n, Some(bits))) = r.number_digits() else {
                    continue;
                };
                in_block += 1;
                assert_eq!(plain_in_block(&n, bits), PlainNumber::of(&n), "{text:?}");
            }
        }
        assert!(in_block > 250, "{in_block}");
    }

    #[test]
    fn numbers_are_correctly_rounded_f64() {
        let b = |raw: &str| {
            let m = good().to_string().replace("22.5", raw);
            format!("{{\"messages\":[{m}]}}")
        };
        for (raw, want) in [
            ("22", "22.0"),
            ("-0", "-0.0"),
            ("-0.0", "-0.0"),
            ("1e-5", "1e-05"),
            ("1E+16", "1e+16"),
            ("0.1", "0.1"),
            ("9007199254740993", "9007199254740992.0"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("1e-400", "0.0"),
            ("123456789012345678901234567890", "1.2345678901234568e+29"),
        ] {
            assert!(
                lines(&b(raw)).contains(&format!(",temp={want},")),
                "{raw}: {}",
                lines(&b(raw))
            );
        }
        for raw in ["1e400", "-1e400", "1.8e308", &"9".repeat(400)] {
            assert_eq!(reasons(&b(raw)), [Some("INVALID_METRICS")], "{raw}");
        }
    }

    #[test]
    fn a_message_reads_the_same_whatever_message_came_before_it() {
        // Keys and metric names are first compared with those at the same place in the message
        // before: each pair of these must read exactly as the two messages do alone.
        let head = r#""tenant_id":"t1","device_id":"d1","msg_type":"telemetry","provision_token":"tok","site_id":"s1","ts":"2024-05-01T12:00:00Z""#;
        let metrics = [
            r#"{"temperature":1,"rssi":2.5}"#,
            r#"{"temperature":1,"rssI":2}"#,
            r#"{"temperaturf":1,"rssi":2}"#,
            r#"{"temperatur":1,"rssi":2}"#,
            r#"{"temperature2":1,"rssi":2}"#,
            r#"{"tempe\u0072ature":1,"rssi":2}"#,
            r#"{"temperature" :1,"rssi":true}"#,
            r#"{"rssi":2,"temperature":1}"#,
            r#"{"rssi":2,"rssi":3}"#,
            r#"{"abcdefghijklmnopq":1,"a":2}"#,
            r#"{"abcdefghijklmnop":1,"a":2}"#,
            r#"{"abcdefgh":1,"a":"x"}"#,
            r#"{"seq":1}"#,
            r#"{"r\ud800":1}"#,
            r#"{}"#,
            r#"null"#,
        ];
        let mut messages: Vec<String> = metrics
            .iter()
            .map(|m| format!(r#"{{{head},"metrics":{m}}}"#))
            .collect();
        messages.extend([
            format!(r#"{{"metrics":{{"a":1}},{head},"seq":5}}"#),
            format!(r#"{{{head},"se\u0071":5,"metrics":{{"a":1}}}}"#),
            format!(r#"{{{head},"seq" :5,"metrics":{{"a":1}}}}"#),
            format!(r#"{{{head},"seq":5,"tenant_idx":1,"metrics":{{"a":1}}}}"#),
            r#"{"tenant_id":"t1","device_iD":"d1","msg_type":"telemetry","provision_token":"tok","site_id":"s1","metrics":{}}"#.into(),
            r#"{"tenant_id":"t1","device_id":"d2","msg_type":"heartbeat","provision_token":"tok","site_id":"s1","ts":"2024-05-01T12:00:00Z","metrics":{"a":1},"metrics":{"b":2}}"#.into(),
        ]);
        let alone = |m: &str| {
            let body = format!(r#"{{"messages":[{m}]}}"#);
            (reasons(&body), lines(&body))
        };
        for a in &messages {
            let (reasons_a, lines_a) = alone(a);
            for b in &messages {
                let (reasons_b, lines_b) = alone(b);
                let body = format!(r#"{{"messages":[{a},{b}]}}"#);
                let both = [reasons_a.clone(), reasons_b].concat();
                assert_eq!(reasons(&body), both, "{body}");
                assert_eq!(lines(&body), lines_a.clone() + &lines_b, "{body}");
            }
        }
    }

    #[test]
    fn duplicate_message_keys_last_wins() {
        let m = r#"{"tenant_id":"acme","device_id":"x","device_id":"dev-1","msg_type":"telemetry","provision_token":"tok","site_id":"s","metrics":{"a":1,"a":true},"metrics":{"b":2,"b":3,"a":1}}"#;
        let body = format!("{{\"messages\":[{m}]}}");
        assert_eq!(reasons(&body), [None]);
        assert_eq!(
            lines(&body),
            format!("telemetry,device_id=dev-1,site_id=s a=1.0,b=3.0,seq=0i {NOW}\n")
        );
        let escaped_key = m.replace("\"site_id\"", "\"site\\u005fid\"");
        assert_eq!(
            reasons(&format!("{{\"messages\":[{escaped_key}]}}")),
            [None]
        );
    }

    #[test]
    fn lone_surrogates_are_never_valid_values_nor_body_errors() {
        let sub = |from: &str, to: &str| {
            let m = good().to_string().replace(from, to);
            batch(&format!("{{\"messages\":[{m}]}}")).unwrap_or_default()
        };
        let reason = |b: &Batch| b.reasons().next().flatten().map(Reason::code);
        let b = sub("\"dev-1\"", "\"dev\\ud800\"");
        assert_eq!(reason(&b), Some("INVALID_SCHEMA"));
        let (_, _, json) = b.response_json();
        assert!(String::from_utf8(json).unwrap_or_default().ends_with(
            r#""detail":"device_id is not valid Unicode (it holds a lone surrogate)"}]}"#
        ));
        for (from, to) in [
            ("\"acme\"", "\"a\\udc00\""),
            ("\"site-1\"", "\"\\ud800\\u0041\""),
            ("\"tok\"", "\"\\udbff\""),
        ] {
            assert_eq!(reason(&sub(from, to)), Some("INVALID_SCHEMA"), "{to}");
        }
        assert_eq!(
            reason(&sub("\"telemetry\"", "\"telemetry\\ud800\"")),
            Some("INVALID_MSG_TYPE")
        );
        assert_eq!(
            reason(&sub("00Z\"", "00Z\\ud800\"")),
            Some("INVALID_TIMESTAMP")
        );
        assert_eq!(
            reason(&sub("\"temp\"", "\"te\\ud800mp\"")),
            Some("INVALID_METRICS")
        );
        assert_eq!(reason(&sub("\"seq\"", "\"seq\\ud800\"")), None);
        assert_eq!(
            reason(&sub("\"site_id\"", "\"site_id\\udfff\"")),
            Some("INVALID_SCHEMA")
        );
        let b = sub("\"dev-1\"", "\"dev-\\ud83d\\ude00\"");
        assert_eq!(reason(&b), None);
        assert_eq!(b.groups().next().map(|g| g.1), Some("dev-😀"));
    }

    #[test]
    fn device_id_is_echoed_when_it_is_a_string() {
        let json_of = |m: Value| {
            let (_, _, j) = batch(&body_of(&[m])).unwrap_or_default().response_json();
            String::from_utf8(j).unwrap_or_default()
        };
        let mut m = with("device_id", json!("bad\nid\"\\"));
        assert!(
            json_of(m.clone()).contains(r#""reason":"INVALID_SCHEMA","detail":"device_id 'bad\\u000aid\"\\' is not a valid id: 1 to 128 bytes of UTF-8 without control characters or backslashes","device_id":"bad\nid\"\\"}"#)
        );
        m["device_id"] = json!(5);
        assert!(!json_of(m).contains("\"device_id\":"));
        assert!(json_of(with("ts", json!("x")))
            .contains(r#""reason":"INVALID_TIMESTAMP","detail":"ts 'x' is not an RFC 3339 timestamp within InfluxDB's range (years 1677 to 2262)","device_id":"dev-1"}"#));
    }

    #[test]
    fn client_text_cannot_add_lines_tags_or_fields() {
        let mut m = with("device_id", json!("d,evil=1 x=2"));
        m["site_id"] = json!("s p=a");
        m["metrics"] = json!({"a b,c=d": 1.5, "z\u{2028}": false});
        assert_eq!(
            lines(&body_of(&[m])),
            format!("telemetry,device_id=d\\,evil\\=1\\ x\\=2,site_id=s\\ p\\=a a\\ b\\,c\\=d=1.5,z\u{2028}=false,seq=7i 1714564800000000000\n")
        );
    }

    #[test]
    fn groups_and_tenants_follow_first_appearance() {
        let mut second = with("tenant_id", json!("beta"));
        second["device_id"] = json!("dev-2");
        let body = body_of(&[good(), second, with("metrics", json!([])), good()]);
        let b = batch(&body).unwrap_or_default();
        let groups: Vec<_> = b.groups().collect();
        assert_eq!(
            groups,
            [
                ("acme", "dev-1", "site-1", "tok", 2),
                ("beta", "dev-2", "site-1", "tok", 1)
            ]
        );
        let tenants: Vec<_> = b
            .tenant_lines()
            .into_iter()
            .map(|t| (t.0.to_owned(), t.2))
            .collect();
        assert_eq!(tenants, [("acme".to_owned(), 2), ("beta".to_owned(), 1)]);
    }

    #[test]
    fn single_message_form_takes_identity_from_arguments() {
        let url = UrlIdentity {
            tenant: Some("acme"),
            device: Some("dev-9"),
            msg_type: Some("heartbeat"),
            token: Some("tok"),
        };
        let body = r#" {"tenant_id":"other","device_id":"x","msg_type":"nope","site_id":"s","seq":1,"metrics":{"v":1}} "#;
        let b = parse_single(body.as_bytes(), &url, NOW, 8192).unwrap_or_default();
        assert_eq!(b.groups().next(), Some(("acme", "dev-9", "s", "tok", 1)));
        let text: Vec<u8> = b.tenant_lines().into_iter().flat_map(|t| t.1).collect();
        assert_eq!(
            text,
            format!("heartbeat,device_id=dev-9,site_id=s v=1.0,seq=1i {NOW}\n").into_bytes()
        );
        let size = body.trim().len();
        let b = parse_single(body.as_bytes(), &url, NOW, size - 1).unwrap_or_default();
        assert_eq!(b.reasons().next(), Some(Some(Reason::PayloadTooLarge)));
        let b = parse_single(body.as_bytes(), &url, NOW, size).unwrap_or_default();
        assert_eq!(b.reasons().next(), Some(None));
        let lone = UrlIdentity {
            device: None,
            ..url
        };
        let b = parse_single(body.as_bytes(), &lone, NOW, 8192).unwrap_or_default();
        assert_eq!(b.reasons().next(), Some(Some(Reason::InvalidSchema)));
        assert!(!String::from_utf8(b.response_json().2)
            .unwrap_or_default()
            .contains("\"device_id\":"));
        let err = |body: &str| {
            parse_single(body.as_bytes(), &url, NOW, 8192)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(err("[1]").as_deref(), Some("body must be a JSON object"));
        assert_eq!(err("\"x\"").as_deref(), Some("body must be a JSON object"));
        assert_eq!(err("{").as_deref(), Some(NOT_JSON));
        assert_eq!(err(&nested(128)).as_deref(), Some(NOT_JSON));
        assert_eq!(
            err(&nested(127)).as_deref(),
            Some("body must be a JSON object")
        );
        assert_eq!(err(&format!("{{\"x\":{}}}", nested(126))), None);
        assert_eq!(
            err(&format!("{{\"x\":{}}}", nested(127))).as_deref(),
            Some(NOT_JSON)
        );
        let m = |d: usize| format!("{{\"site_id\":\"s\",\"metrics\":{{\"a\":{}}}}}", nested(d));
        assert_eq!(err(&m(125)), None);
        assert_eq!(err(&m(126)).as_deref(), Some(NOT_JSON));
    }
}
