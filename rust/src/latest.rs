//! The last accepted message of every device (`telemetry_latest`), kept current on the ingest
//! path and handed to the registry's `device_state` table in batches.
//!
//! `record` is on the hot path: per device of a batch it copies the last accepted item's line
//! protocol, nothing more. Everything else (msg_type, ts, seq, the metrics as JSON) is read
//! back from that line when asked for, which is rare: once per device per flush interval, and
//! on the read API.

use std::sync::{Mutex, MutexGuard};

use crate::batch::Batch;
use crate::device_key::{DeviceIds, DeviceKey};
use crate::encode::push_json_str;

/// A device's last accepted message, read back from its line protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub msg_type: String,
    /// The point's timestamp: the message's `ts`, or its receive time when it had none.
    pub ts_ns: i64,
    pub seq: i64,
    /// The metrics as a JSON object, values as line protocol stored them.
    pub metrics_json: String,
    pub received_ns: i64,
}

/// `(tenant, device, snapshot)` of `Latest::take_dirty`.
pub type Row = (String, String, Snapshot);

struct Entry {
    line: Vec<u8>,
    received_ns: i64,
    /// Changed since the last `take_dirty`.
    dirty: bool,
    /// The `record` call that wrote it last.
    recorded: u64,
}

/// Bytes a device's kept line may grow by before it is reallocated.
const LINE_SLACK: usize = 32;

/// Device keys are authenticated devices' ids (no flooding), and a lookup per device per
/// request must cost a few nanoseconds, not SipHash's tens.
type Map = foldhash::HashMap<DeviceKey, Entry>;

/// The devices, and the `record` calls so far (each writes under the lock).
#[derive(Default)]
struct Held {
    devices: Map,
    records: u64,
}

/// Per tenant and device, the last accepted message. Thread-safe.
#[derive(Default)]
pub struct Latest {
    held: Mutex<Held>,
}

impl Latest {
    pub fn new() -> Self {
        Latest::default()
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every update is one assignment after the data moved: a poisoned map is consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep each device's last accepted item of an appended batch.
    pub fn record(&self, batch: &Batch) {
        let received_ns = batch.receive_ns();
        let mut held = self.lock();
        held.records += 1;
        let recorded = held.records;
        let devices = &mut held.devices;
        // Newest item first, one per group; a device whose items fall in several groups of
        // the batch (another site or token) keeps the first one seen: its last item.
        for (tenant, device, line) in batch.last_accepted() {
            match devices.get_mut(&(tenant, device) as &dyn DeviceIds) {
                Some(entry) if entry.recorded == recorded => {}
                Some(entry) => {
                    entry.line.clear();
                    entry.line.extend_from_slice(line);
                    entry.received_ns = received_ns;
                    entry.dirty = true;
                    entry.recorded = recorded;
                }
                None => {
                    // Room for the device's next lines, which differ in a few digits: a
                    // slightly longer one is copied in place rather than reallocated.
                    let mut copy = Vec::with_capacity(line.len() + LINE_SLACK);
                    copy.extend_from_slice(line);
                    let entry = Entry {
                        line: copy,
                        received_ns,
                        dirty: true,
                        recorded,
                    };
                    devices.insert(DeviceKey::new(tenant, device), entry);
                }
            }
        }
    }

    /// Number of devices held.
    pub fn len(&self) -> usize {
        self.lock().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The snapshot of each of `devices` of `tenant`, `None` for those without one.
    pub fn get(&self, tenant: &str, devices: &[&str]) -> Vec<Option<Snapshot>> {
        let held = self.lock();
        devices
            .iter()
            .map(|&d| {
                held.devices
                    .get(&(tenant, d) as &dyn DeviceIds)
                    .map(snapshot)
            })
            .collect()
    }

    /// Every device changed since the last call, which it marks clean; sorted by key.
    pub fn take_dirty(&self) -> Vec<Row> {
        let mut held = self.lock();
        let mut rows: Vec<Row> = held
            .devices
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(key, entry)| {
                entry.dirty = false;
                (
                    key.tenant().to_string(),
                    key.device().to_string(),
                    snapshot(entry),
                )
            })
            .collect();
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        rows
    }

    /// Mark devices dirty again (their rows could not be stored); unknown keys are ignored.
    pub fn mark_dirty(&self, keys: &[(&str, &str)]) {
        let mut held = self.lock();
        for &(tenant, device) in keys {
            // Looked up by a key built for it, not by the borrowed ids: `record`'s lookup then
            // has one caller and is inlined there (15 instructions a message). This path is rare.
            if let Some(entry) = held.devices.get_mut(&DeviceKey::new(tenant, device)) {
                entry.dirty = true;
            }
        }
    }
}

fn snapshot(entry: &Entry) -> Snapshot {
    let mut s = read_line(&entry.line);
    s.received_ns = entry.received_ns;
    s
}

/// Reads a line the parser encoded: `msg_type,device_id=…,site_id=… metrics…,seq=Ni ts\n`.
/// Only ever given lines of this core, so a line of another shape is a broken invariant.
fn read_line(line: &[u8]) -> Snapshot {
    let line = line
        .strip_suffix(b"\n")
        .expect("an encoded line ends in a newline");
    let last_space = memchr::memrchr(b' ', line).expect("an encoded line has a timestamp");
    let ts_ns = ascii_int(&line[last_space + 1..]);
    let measurement_end = memchr::memchr(b',', line).expect("an encoded line has tags");
    let msg_type = std::str::from_utf8(&line[..measurement_end])
        .expect("a msg_type is ASCII")
        .to_owned();
    let fields_start = unescaped(line, measurement_end, b' ').expect("a line has fields") + 1;
    let fields = &line[fields_start..last_space];
    let seq_at = memchr::memrchr(b',', fields).map_or(0, |i| i + 1);
    let seq_field = &fields[seq_at..];
    let seq = ascii_int(
        seq_field
            .strip_prefix(b"seq=")
            .and_then(|v| v.strip_suffix(b"i"))
            .expect("a line's last field is seq"),
    );
    let mut metrics_json = String::with_capacity(fields.len() + 2);
    metrics_json.push('{');
    let mut out = Vec::with_capacity(fields.len());
    let mut at = 0;
    while at < seq_at {
        let end = unescaped(fields, at, b',').expect("seq follows every metric");
        let eq = unescaped(fields, at, b'=').expect("a field has a value");
        if !out.is_empty() {
            out.push(b',');
        }
        let name: Vec<u8> = unescape(&fields[at..eq]);
        push_json_str(
            &mut out,
            std::str::from_utf8(&name).expect("a metric name is UTF-8"),
        );
        out.push(b':');
        out.extend_from_slice(&fields[eq + 1..end]);
        at = end + 1;
    }
    metrics_json.push_str(std::str::from_utf8(&out).expect("JSON built from UTF-8 is UTF-8"));
    metrics_json.push('}');
    Snapshot {
        msg_type,
        ts_ns,
        seq,
        metrics_json,
        received_ns: 0,
    }
}

/// The first `byte` at or after `from` that no backslash escapes.
fn unescaped(b: &[u8], from: usize, byte: u8) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == byte => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// A field key as it was before `push_lp_key` escaped `,` `=` and space.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut escaped = false;
    for &c in b {
        if c == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out
}

fn ascii_int(b: &[u8]) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("the core wrote this integer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_batch;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn accepted(body: &str) -> Batch {
        let mut b = parse_batch(body.as_bytes(), NOW, 8192).expect("a valid body");
        let verdicts: Vec<(i64, Option<&str>)> = b.groups().map(|g| (g.4 as i64, None)).collect();
        b.resolve(&verdicts).expect("one verdict per group");
        b.append_with(|_, _| true).expect("appended once");
        b
    }

    fn msg(device: &str, seq: u64, metrics: &str) -> String {
        format!(
            r#"{{"tenant_id":"acme","device_id":"{device}","msg_type":"telemetry","provision_token":"t","site_id":"s","ts":"2024-05-01T12:00:00Z","seq":{seq},"metrics":{metrics}}}"#
        )
    }

    #[test]
    fn keeps_the_last_accepted_message_of_each_device() {
        let body = format!(
            r#"{{"messages":[{},{},{}]}}"#,
            msg("d1", 1, r#"{"a":1.5}"#),
            msg("d2", 2, r#"{"b":true}"#),
            msg("d1", 3, r#"{"a b,c=d":2.5,"x":-1}"#)
        );
        let latest = Latest::new();
        latest.record(&accepted(&body));
        let got = latest.get("acme", &["d1", "d2", "d3"]);
        assert_eq!(
            got[0],
            Some(Snapshot {
                msg_type: "telemetry".into(),
                ts_ns: 1_714_564_800_000_000_000,
                seq: 3,
                metrics_json: r#"{"a b,c=d":2.5,"x":-1.0}"#.into(),
                received_ns: NOW,
            })
        );
        assert_eq!(
            got[1].as_ref().map(|s| s.metrics_json.as_str()),
            Some(r#"{"b":true}"#)
        );
        assert_eq!(got[2], None);
        assert_eq!(latest.get("other", &["d1"]), vec![None]);
    }

    #[test]
    fn a_device_in_two_groups_of_a_batch_keeps_its_last_message() {
        // The same device with another site is another group: the last item still wins.
        let other_site = msg("d1", 9, "{}").replace(r#""site_id":"s""#, r#""site_id":"s2""#);
        let body = format!(
            r#"{{"messages":[{},{},{}]}}"#,
            msg("d1", 1, "{}"),
            other_site,
            msg("d1", 3, "{}")
        );
        let latest = Latest::new();
        latest.record(&accepted(&body));
        let seq = |l: &Latest| l.get("acme", &["d1"])[0].as_ref().map(|s| s.seq);
        assert_eq!(seq(&latest), Some(3));
        let body = format!(r#"{{"messages":[{},{}]}}"#, msg("d1", 4, "{}"), other_site);
        latest.record(&accepted(&body));
        assert_eq!(seq(&latest), Some(9));
    }

    #[test]
    fn take_dirty_returns_each_changed_device_once() {
        let latest = Latest::new();
        let body = format!(r#"{{"messages":[{}]}}"#, msg("d1", 1, "{}"));
        latest.record(&accepted(&body));
        let rows = latest.take_dirty();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("acme", "d1"));
        assert_eq!(rows[0].2.metrics_json, "{}");
        assert!(latest.take_dirty().is_empty());
        latest.mark_dirty(&[("acme", "d1"), ("acme", "nope")]);
        assert_eq!(latest.take_dirty().len(), 1);
    }

    #[test]
    fn rejected_items_are_not_recorded() {
        let body = format!(
            r#"{{"messages":[{},{}]}}"#,
            msg("d1", 1, "{}"),
            msg("d1", 2, "{}")
        );
        let mut b = parse_batch(body.as_bytes(), NOW, 8192).expect("a valid body");
        b.resolve(&[(1, Some("RATE_LIMITED"))])
            .expect("one verdict per group");
        b.append_with(|_, _| true).expect("appended once");
        let latest = Latest::new();
        latest.record(&b);
        assert_eq!(
            latest.get("acme", &["d1"])[0].as_ref().map(|s| s.seq),
            Some(1)
        );
    }
}
