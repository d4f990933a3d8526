//! Shelly power readings: `{"messages":[{src,timestamp,params}]}` → deduplicated columns.

use std::collections::HashSet;

use crate::encode::Line;
use crate::envelope::{utf8, walk_messages, Elements, Value};
use crate::errors::{BodyError, ShellyReason};
use crate::ids::valid_id;
use crate::json::{self, Reader};

pub const MAX_SHELLY_MESSAGES: usize = 1000;
const CHANNELS: usize = 4;

/// Readings of one Shelly request, one entry per row in each column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShellyBatch {
    pub total_messages: usize,
    pub devices: usize,
    pub duplicates_in_batch: usize,
    pub errors: Vec<(usize, ShellyReason)>,
    pub device_id: Vec<String>,
    pub channel: Vec<u8>,
    pub power: Vec<f64>,
    pub voltage: Vec<Option<f64>>,
    pub current: Vec<Option<f64>>,
    pub timestamp: Vec<i64>,
    pub idempotency_key: Vec<String>,
    /// Every row's line protocol, encoded once at parse time: the shell sizes the readings
    /// before storing them and buffers the stored ones after.
    lines: Vec<u8>,
    /// Where each row's line ends in `lines`.
    line_ends: Vec<usize>,
}

/// Parse and validate a Shelly batch body of 1..=`max_messages` messages.
pub fn parse_shelly(
    body: &[u8],
    now_s: i64,
    max_messages: usize,
) -> Result<ShellyBatch, BodyError> {
    let text = utf8(body)?;
    let mut reader = ShellyReader {
        max_ts: i128::from(now_s) + 86_400,
        ..ShellyReader::default()
    };
    let total = walk_messages(text, max_messages, &mut reader)?;
    let mut out = reader.out;
    out.total_messages = total;
    out.devices = reader.devices.len();
    out.encode_rows();
    Ok(out)
}

#[derive(Default)]
struct ShellyReader {
    max_ts: i128,
    index: usize,
    out: ShellyBatch,
    devices: HashSet<String>,
    keys: HashSet<String>,
}

/// One `switch:N` object's readings; last occurrence of each key wins.
#[derive(Debug, Clone, Copy, Default)]
struct Switch<'a> {
    apower: Value<'a>,
    voltage: Value<'a>,
    current: Value<'a>,
}

/// A message's fields; `params` is `None` when it is missing or not an object, and a channel
/// is `None` when its `switch:N` is missing or not an object.
#[derive(Default)]
struct Message<'a> {
    src: Value<'a>,
    timestamp: Value<'a>,
    params: Option<[Option<Switch<'a>>; CHANNELS]>,
}

impl<'a> Elements<'a> for ShellyReader {
    fn reset(&mut self) {
        let max_ts = self.max_ts;
        *self = ShellyReader {
            max_ts,
            ..ShellyReader::default()
        };
    }

    fn element(&mut self, r: &mut Reader<'a>) -> json::Result<()> {
        let index = self.index;
        self.index += 1;
        if r.peek() != Some(b'{') {
            r.skip_value()?;
            self.out.errors.push((index, ShellyReason::Message));
            return Ok(());
        }
        let msg = read_message(r)?;
        self.judge(index, &msg);
        Ok(())
    }
}

fn read_message<'a>(r: &mut Reader<'a>) -> json::Result<Message<'a>> {
    let mut m = Message::default();
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(first)? {
        first = false;
        if key.is("src") {
            m.src = Value::read(r)?;
        } else if key.is("timestamp") {
            m.timestamp = Value::read(r)?;
        } else if key.is("params") {
            m.params = read_object(r, |r, key, params: &mut [Option<Switch<'a>>; CHANNELS]| {
                match channel_of(key.decode().as_deref()) {
                    Some(ch) => params[ch] = read_object(r, read_switch_entry)?,
                    None => {
                        r.skip_value()?;
                    }
                }
                Ok(())
            })?;
        } else {
            r.skip_value()?;
        }
    }
    Ok(m)
}

/// Reads an object with `entry` for each key into a fresh `T`; `None` for any other value.
fn read_object<'a, T: Default>(
    r: &mut Reader<'a>,
    mut entry: impl FnMut(&mut Reader<'a>, json::Str<'a>, &mut T) -> json::Result<()>,
) -> json::Result<Option<T>> {
    if r.peek() != Some(b'{') {
        r.skip_value()?;
        return Ok(None);
    }
    let mut out = T::default();
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(first)? {
        first = false;
        entry(r, key, &mut out)?;
    }
    Ok(Some(out))
}

fn read_switch_entry<'a>(
    r: &mut Reader<'a>,
    key: json::Str<'a>,
    s: &mut Switch<'a>,
) -> json::Result<()> {
    let slot = if key.is("apower") {
        &mut s.apower
    } else if key.is("voltage") {
        &mut s.voltage
    } else if key.is("current") {
        &mut s.current
    } else {
        r.skip_value()?;
        return Ok(());
    };
    *slot = Value::read(r)?;
    Ok(())
}

fn channel_of(key: Option<&str>) -> Option<usize> {
    match key? {
        "switch:0" => Some(0),
        "switch:1" => Some(1),
        "switch:2" => Some(2),
        "switch:3" => Some(3),
        _ => None,
    }
}

impl ShellyReader {
    fn judge(&mut self, index: usize, msg: &Message<'_>) {
        let mut unescaped = String::new();
        let text = msg.src.text(&mut unescaped);
        let src = text
            .get()
            .map_or("", |s| s.trim_matches([' ', '\t', '\n', '\r']));
        if !valid_id(src) {
            self.out.errors.push((index, ShellyReason::Src));
            return;
        }
        let ts = match msg.timestamp {
            Value::Number(n) if n.is_integer() => integer_token(n.text),
            _ => None,
        }
        .filter(|&t| t > 0 && t <= self.max_ts)
        .and_then(|t| i64::try_from(t).ok());
        let Some(ts) = ts else {
            self.out.errors.push((index, ShellyReason::Timestamp));
            return;
        };
        let Some(params) = &msg.params else {
            self.out.errors.push((index, ShellyReason::Params));
            return;
        };
        self.devices.insert(src.to_owned());
        for (ch, switch) in params.iter().enumerate() {
            let Some(switch) = switch else {
                continue;
            };
            let reading = match reading(switch) {
                Reading::Absent => continue,
                Reading::Invalid => {
                    self.out.errors.push((index, ShellyReason::Reading));
                    continue;
                }
                Reading::Valid(r) => r,
            };
            let key = format!("{src}_{ch}_{}", ts.div_euclid(60));
            if !self.keys.insert(key.clone()) {
                self.out.duplicates_in_batch += 1;
                continue;
            }
            let out = &mut self.out;
            out.device_id.push(src.to_owned());
            out.channel.push(ch as u8);
            out.power.push(reading.0);
            out.voltage.push(reading.1);
            out.current.push(reading.2);
            out.timestamp.push(ts);
            out.idempotency_key.push(key);
        }
    }
}

enum Reading {
    Absent,
    Invalid,
    /// `(apower, voltage, current)`.
    Valid((f64, Option<f64>, Option<f64>)),
}

fn reading(s: &Switch<'_>) -> Reading {
    let optional = |v: Value<'_>| match v {
        Value::Missing | Value::Null => Some(None),
        v => finite_number(v).map(Some),
    };
    if matches!(s.apower, Value::Missing | Value::Null) {
        return Reading::Absent;
    }
    match (
        finite_number(s.apower),
        optional(s.voltage),
        optional(s.current),
    ) {
        (Some(apower), Some(voltage), Some(current)) => Reading::Valid((apower, voltage, current)),
        _ => Reading::Invalid,
    }
}

fn finite_number(v: Value<'_>) -> Option<f64> {
    match v {
        Value::Number(n) => n.text.parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    }
}

/// An integer token as a number; huge ones saturate.
fn integer_token(text: &str) -> Option<i128> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let magnitude = if digits.len() > 30 {
        i128::MAX
    } else {
        digits.parse::<i128>().ok()?
    };
    Some(if text.starts_with('-') {
        -magnitude
    } else {
        magnitude
    })
}

impl ShellyBatch {
    /// Number of readings (rows).
    pub fn len(&self) -> usize {
        self.power.len()
    }

    pub fn is_empty(&self) -> bool {
        self.power.is_empty()
    }

    fn encode_rows(&mut self) {
        let mut out = Vec::with_capacity(self.len() * 96);
        let mut ends = Vec::with_capacity(self.len());
        for row in 0..self.len() {
            let mut line = Line::start(&mut out, "power");
            line.tag("channel", itoa::Buffer::new().format(self.channel[row]));
            line.tag("device_id", self.device_id[row].as_str());
            line.float(b"apower", self.power[row]);
            if let Some(c) = self.current[row] {
                line.float(b"current", c);
            }
            if let Some(v) = self.voltage[row] {
                line.float(b"voltage", v);
            }
            line.finish(i128::from(self.timestamp[row]) * 1_000_000_000);
            ends.push(out.len());
        }
        self.lines = out;
        self.line_ends = ends;
    }

    /// The line of `row`; `Err(row)` when there is no such row.
    fn line(&self, row: i64) -> Result<&[u8], i64> {
        let index = usize::try_from(row)
            .ok()
            .filter(|&i| i < self.line_ends.len())
            .ok_or(row)?;
        let start = index.checked_sub(1).map_or(0, |prev| self.line_ends[prev]);
        Ok(self
            .lines
            .get(start..self.line_ends[index])
            .expect("line_ends are ascending offsets into lines"))
    }

    /// Line protocol (measurement `power`) of the readings at `rows`, and its line count.
    /// `Err(row)` names the first row out of range.
    pub fn encode(&self, rows: &[i64]) -> Result<(Vec<u8>, usize), i64> {
        let mut out = Vec::with_capacity(self.encoded_size(rows)?);
        for &row in rows {
            out.extend_from_slice(self.line(row)?);
        }
        Ok((out, rows.len()))
    }

    /// The length of `encode(rows)`'s bytes, without building them.
    pub fn encoded_size(&self, rows: &[i64]) -> Result<usize, i64> {
        rows.iter().map(|&row| Ok(self.line(row)?.len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn parse(messages: &str) -> ShellyBatch {
        parse_shelly(
            format!("{{\"messages\":[{messages}]}}").as_bytes(),
            NOW,
            1000,
        )
        .unwrap_or_default()
    }

    fn errors(b: &ShellyBatch) -> Vec<(usize, &'static str)> {
        b.errors.iter().map(|&(i, r)| (i, r.code())).collect()
    }

    #[test]
    fn readings_are_columns_deduplicated_on_the_key() {
        let b = parse(concat!(
            r#"{"src":" plug-1\n","timestamp":1699999980,"params":{"switch:0":{"apower":12.5,"voltage":230,"current":null},"switch:1":{"apower":0,"current":0.25}}},"#,
            r#"{"src":"plug-1","timestamp":1699999999,"params":{"switch:0":{"apower":99}}},"#,
            r#"{"src":"plug-2","timestamp":1700000000,"params":{"switch:3":{"apower":-1.5},"switch:4":{"apower":1}}}"#
        ));
        assert_eq!(
            (b.total_messages, b.devices, b.duplicates_in_batch),
            (3, 2, 1)
        );
        assert!(b.errors.is_empty());
        assert_eq!(b.device_id, ["plug-1", "plug-1", "plug-2"]);
        assert_eq!(b.channel, [0, 1, 3]);
        assert_eq!(b.power, [12.5, 0.0, -1.5]);
        assert_eq!(b.voltage, [Some(230.0), None, None]);
        assert_eq!(b.current, [None, Some(0.25), None]);
        assert_eq!(b.timestamp, [1699999980, 1699999980, 1700000000]);
        assert_eq!(
            b.idempotency_key,
            [
                "plug-1_0_28333333",
                "plug-1_1_28333333",
                "plug-2_3_28333333"
            ]
        );
        let (lp, n) = b.encode(&[2, 0, 1]).unwrap_or_default();
        let size = lp.len();
        assert_eq!(n, 3);
        assert_eq!(
            String::from_utf8(lp).unwrap_or_default(),
            concat!(
                "power,channel=3,device_id=plug-2 apower=-1.5 1700000000000000000\n",
                "power,channel=0,device_id=plug-1 apower=12.5,voltage=230.0 1699999980000000000\n",
                "power,channel=1,device_id=plug-1 apower=0.0,current=0.25 1699999980000000000\n",
            )
        );
        assert_eq!(b.encode(&[3]), Err(3));
        assert_eq!(b.encode(&[0, -1]), Err(-1));
        assert_eq!(b.encoded_size(&[2, 0, 1]), Ok(size));
        assert_eq!(
            b.encoded_size(&[1, 1]),
            Ok(2 * b.encode(&[1]).unwrap_or_default().0.len())
        );
        assert_eq!(b.encoded_size(&[]), Ok(0));
        assert_eq!(b.encoded_size(&[0, 3]), Err(3));
    }

    #[test]
    fn message_level_errors_in_order() {
        let b = parse(concat!(
            r#"5,"#,
            r#"{"src":" ","timestamp":1,"params":{}},"#,
            r#"{"src":"a\\b","timestamp":1,"params":{}},"#,
            r#"{"src":"p\ud800","timestamp":1,"params":{}},"#,
            r#"{"src":"p","timestamp":0,"params":{}},"#,
            r#"{"src":"p","timestamp":1.0,"params":{}},"#,
            r#"{"src":"p","timestamp":1700086401,"params":{}},"#,
            r#"{"src":"p","timestamp":"1","params":{}},"#,
            r#"{"src":"p","timestamp":1700086400,"params":[]},"#,
            r#"{"src":"q","timestamp":1700086400,"params":{"switch:0":null}},"#,
            r#"{"src":"p","timestamp":99999999999999999999999999999999999999999,"params":{}}"#
        ));
        assert_eq!(
            errors(&b),
            [
                (0, "INVALID_MESSAGE"),
                (1, "INVALID_SRC"),
                (2, "INVALID_SRC"),
                (3, "INVALID_SRC"),
                (4, "INVALID_TIMESTAMP"),
                (5, "INVALID_TIMESTAMP"),
                (6, "INVALID_TIMESTAMP"),
                (7, "INVALID_TIMESTAMP"),
                (8, "INVALID_PARAMS"),
                (10, "INVALID_TIMESTAMP"),
            ]
        );
        assert_eq!((b.devices, b.power.len()), (1, 0));
    }

    #[test]
    fn readings_are_checked_per_channel() {
        let b = parse(concat!(
            r#"{"src":"p","timestamp":1700000000,"params":{"#,
            r#""switch:0":{"apower":true},"#,
            r#""switch:1":{"apower":1,"voltage":"230"},"#,
            r#""switch:2":{"apower":1e400},"#,
            r#""switch:3":{"voltage":1}}},"#,
            r#"{"src":"p","timestamp":1700000000,"params":{"switch:0":{"apower":null},"switch:1":{"apower":2,"current":[]},"switch:2":{"apower":3}}}"#
        ));
        assert_eq!(
            errors(&b),
            [
                (0, "INVALID_READING"),
                (0, "INVALID_READING"),
                (0, "INVALID_READING"),
                (1, "INVALID_READING")
            ]
        );
        assert_eq!((b.channel.clone(), b.power.clone()), (vec![2], vec![3.0]));
    }

    #[test]
    fn body_errors_name_the_limit() {
        let err = |body: &str, max| {
            parse_shelly(body.as_bytes(), NOW, max)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(err("x", 5).as_deref(), Some("body is not valid JSON"));
        assert_eq!(
            err("{\"messages\":{}}", 5).as_deref(),
            Some("body must be a JSON object with a \"messages\" list")
        );
        assert_eq!(
            err("{\"messages\":[]}", 5).as_deref(),
            Some("batch is empty")
        );
        assert_eq!(
            err("{\"messages\":[1,2,3]}", 2).as_deref(),
            Some("batch has 3 messages; at most 2 are allowed")
        );
        let deep = |d: usize| {
            format!(
                "{{\"messages\":[{{\"x\":{}{}}}]}}",
                "[".repeat(d),
                "]".repeat(d)
            )
        };
        assert_eq!(err(&deep(124), 5), None);
        assert_eq!(
            err(&deep(125), 5).as_deref(),
            Some("body is not valid JSON")
        );
    }
}
