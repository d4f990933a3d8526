//! Per-tenant line-protocol buffers under one global byte cap, with in-flight accounting.
//!
//! Lines are stored in chunks of at most `MAX_CHUNK` bytes (a line may span chunks), so a
//! buffer never holds more than its lines plus one partly filled and one partly drained chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::batch::Batch;
use crate::errors::UsageError;

const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct TenantBuffer {
    /// Order of creation, which is the order of `tenants()` and `ready()`.
    created: u64,
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already drained.
    head: usize,
    lines: usize,
    bytes: usize,
    put_back: VecDeque<(Vec<u8>, usize)>,
    put_back_lines: usize,
    put_back_bytes: usize,
}

impl TenantBuffer {
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.chunks.back().map_or(0, |c| c.capacity() - c.len());
            if room == 0 {
                let size = (self.bytes + data.len())
                    .next_power_of_two()
                    .clamp(MIN_CHUNK, MAX_CHUNK);
                self.chunks.push_back(Vec::with_capacity(size));
                continue;
            }
            let n = room.min(data.len());
            if let Some(chunk) = self.chunks.back_mut() {
                chunk.extend_from_slice(&data[..n]);
            }
            data = &data[n..];
        }
    }

    /// Copies out and forgets the oldest `max_lines` lines (all when fewer).
    fn take_lines(&mut self, max_lines: usize) -> (Vec<u8>, usize) {
        let count = max_lines.min(self.lines);
        let nbytes = if count == self.lines {
            self.bytes
        } else {
            self.prefix_len(count)
        };
        let mut out = Vec::with_capacity(nbytes);
        while out.len() < nbytes {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let avail = front
                .get(self.head..)
                .expect("head is within the front chunk");
            let n = avail.len().min(nbytes - out.len());
            out.extend_from_slice(&avail[..n]);
            self.head += n;
            if self.head >= front.len() {
                self.chunks.pop_front();
                self.head = 0;
            }
        }
        self.lines -= count;
        self.bytes -= out.len();
        (out, count)
    }

    /// Byte length of the oldest `count` lines.
    fn prefix_len(&self, count: usize) -> usize {
        let mut seen = 0;
        let mut offset = 0;
        let mut skip = self.head;
        for chunk in &self.chunks {
            let data = &chunk[skip..];
            skip = 0;
            for pos in memchr::memchr_iter(b'\n', data) {
                seen += 1;
                if seen == count {
                    return offset + pos + 1;
                }
            }
            offset += data.len();
        }
        offset
    }

    fn depth(&self) -> (usize, usize) {
        (
            self.lines + self.put_back_lines,
            self.bytes + self.put_back_bytes,
        )
    }

    fn is_empty(&self) -> bool {
        self.lines == 0 && self.put_back.is_empty()
    }
}

#[derive(Default)]
struct State {
    buffers: Vec<TenantBuffer>,
    names: Vec<String>,
    slot_of: HashMap<String, usize>,
    next_created: u64,
    /// Buffered + put back + in flight.
    total: usize,
    in_flight: usize,
}

impl State {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.slot_of.get(name) {
            return slot;
        }
        self.buffers.push(TenantBuffer {
            created: self.next_created,
            ..TenantBuffer::default()
        });
        self.next_created += 1;
        self.names.push(name.to_owned());
        self.slot_of.insert(name.to_owned(), self.buffers.len() - 1);
        self.buffers.len() - 1
    }

    fn remove(&mut self, slot: usize) {
        let name = self.names.swap_remove(slot);
        self.buffers.swap_remove(slot);
        self.slot_of.remove(&name);
        if let Some(moved) = self.names.get(slot) {
            self.slot_of.insert(moved.clone(), slot);
        }
    }

    /// Slots of the tenants `keep` selects, in creation order.
    fn sorted(&self, keep: impl Fn(&TenantBuffer) -> bool) -> Vec<usize> {
        let mut found: Vec<usize> = (0..self.buffers.len())
            .filter(|&i| keep(&self.buffers[i]))
            .collect();
        found.sort_unstable_by_key(|&i| self.buffers[i].created);
        found
    }

    fn sorted_names(&self, keep: impl Fn(&TenantBuffer) -> bool) -> Vec<String> {
        self.sorted(keep)
            .into_iter()
            .map(|i| self.names[i].clone())
            .collect()
    }
}

/// Per-tenant line-protocol buffers under one global byte cap. Thread-safe.
pub struct TenantBuffers {
    batch_size: usize,
    flush_bytes: usize,
    max_bytes: usize,
    state: Mutex<State>,
}

impl TenantBuffers {
    pub fn new(batch_size: usize, flush_bytes: usize, max_bytes: usize) -> Self {
        TenantBuffers {
            batch_size,
            flush_bytes,
            max_bytes,
            state: Mutex::new(State::default()),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters (each update is one
        // statement after the data moved), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn at_threshold(&self, b: &TenantBuffer) -> bool {
        let (lines, bytes) = b.depth();
        lines >= self.batch_size || bytes >= self.flush_bytes
    }

    /// Appends the batch's accepted lines (items that do not fit become `BUFFER_FULL`); returns
    /// the tenants appended to that are now at a threshold, in order of first appearance.
    pub fn append(&self, batch: &mut Batch) -> Result<Vec<String>, UsageError> {
        let mut state = self.lock();
        let state = &mut *state;
        // A batch tenant: its buffer's slot, or its name until its first line creates one.
        // Slots stay put during one append: only `drain` removes tenants.
        let mut slots: Vec<Result<usize, String>> = (0..batch.tenant_count())
            .map(|t| {
                let name = batch.tenant(t);
                state
                    .slot_of
                    .get(name)
                    .copied()
                    .ok_or_else(|| name.to_owned())
            })
            .collect();
        let mut touched = vec![false; slots.len()];
        let max = self.max_bytes;
        batch.append_with(|t, line| {
            if state.total + line.len() > max {
                return false;
            }
            state.total += line.len();
            let slot = match &slots[t] {
                Ok(slot) => *slot,
                Err(name) => {
                    let slot = state.slot(name);
                    slots[t] = Ok(slot);
                    slot
                }
            };
            let buf = &mut state.buffers[slot];
            buf.push(line);
            buf.lines += 1;
            buf.bytes += line.len();
            touched[t] = true;
            true
        })?;
        Ok(slots
            .into_iter()
            .zip(touched)
            .filter_map(|(slot, touched)| match slot {
                Ok(s) if touched && self.at_threshold(&state.buffers[s]) => {
                    Some(state.names[s].clone())
                }
                _ => None,
            })
            .collect())
    }

    /// Appends newline-terminated `lines` (`line_count` of them) all or nothing; false when
    /// they do not fit under the cap.
    pub fn append_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<bool, UsageError> {
        if line_count == 0
            || !lines.ends_with(b"\n")
            || memchr::memchr_iter(b'\n', lines).count() != line_count
        {
            return Err(UsageError::BadLines);
        }
        let mut state = self.lock();
        if state.total + lines.len() > self.max_bytes {
            return Ok(false);
        }
        state.total += lines.len();
        let slot = state.slot(tenant);
        let buf = &mut state.buffers[slot];
        buf.push(lines);
        buf.lines += line_count;
        buf.bytes += lines.len();
        Ok(true)
    }

    /// Tenants at or over a threshold, or with a put-back body waiting.
    pub fn ready(&self) -> Vec<String> {
        self.lock()
            .sorted_names(|b| !b.put_back.is_empty() || self.at_threshold(b))
    }

    /// Tenants with anything buffered or put back.
    pub fn tenants(&self) -> Vec<String> {
        self.lock().sorted_names(|_| true)
    }

    /// The tenant's oldest data as one body, now in flight: a put-back body as it was, else up
    /// to `max_lines` buffered lines.
    pub fn drain(
        &self,
        tenant: &str,
        max_lines: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, UsageError> {
        if max_lines == 0 {
            return Err(UsageError::BadMaxLines);
        }
        let mut state = self.lock();
        let Some(&slot) = state.slot_of.get(tenant) else {
            return Ok(None);
        };
        let buf = &mut state.buffers[slot];
        let taken = match buf.put_back.pop_front() {
            Some((body, count)) => {
                buf.put_back_lines -= count;
                buf.put_back_bytes -= body.len();
                (body, count)
            }
            None => buf.take_lines(max_lines),
        };
        if buf.is_empty() {
            state.remove(slot);
        }
        state.in_flight += taken.0.len();
        Ok(Some(taken))
    }

    /// A drained body of `nbytes` is finished with.
    pub fn settle(&self, nbytes: usize) -> Result<(), UsageError> {
        let mut state = self.lock();
        if nbytes > state.in_flight {
            return Err(UsageError::NotInFlight {
                nbytes,
                in_flight: state.in_flight,
            });
        }
        state.in_flight -= nbytes;
        state.total -= nbytes;
        Ok(())
    }

    /// Returns a drained body whose write failed; put-back bodies drain first, oldest first.
    pub fn put_back(
        &self,
        tenant: &str,
        body: Vec<u8>,
        line_count: usize,
    ) -> Result<(), UsageError> {
        let mut state = self.lock();
        if body.len() > state.in_flight {
            return Err(UsageError::NotInFlight {
                nbytes: body.len(),
                in_flight: state.in_flight,
            });
        }
        state.in_flight -= body.len();
        let slot = state.slot(tenant);
        let buf = &mut state.buffers[slot];
        buf.put_back_lines += line_count;
        buf.put_back_bytes += body.len();
        buf.put_back.push_back((body, line_count));
        Ok(())
    }

    /// Per tenant, `(lines, bytes)` buffered or put back, tenants in creation order.
    pub fn depth(&self) -> Vec<(String, (usize, usize))> {
        let state = self.lock();
        state
            .sorted(|_| true)
            .into_iter()
            .map(|i| (state.names[i].clone(), state.buffers[i].depth()))
            .collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Identity;
    use crate::errors::Reason;

    fn batch_of(items: &[(&str, &str)]) -> Batch {
        let mut b = Batch::with_capacity(items.len(), 256);
        for &(tenant, line) in items {
            let id = Identity {
                tenant,
                device: "d",
                site: "s",
                token: "k",
            };
            b.push_accepted(&id, |out| out.extend_from_slice(line.as_bytes()));
        }
        b
    }

    fn drained(buffers: &TenantBuffers, tenant: &str, max_lines: usize) -> Option<(String, usize)> {
        buffers
            .drain(tenant, max_lines)
            .ok()
            .flatten()
            .map(|(body, n)| (String::from_utf8(body).unwrap_or_default(), n))
    }

    #[test]
    fn append_respects_the_cap_per_item_and_reports_ready_tenants() {
        let buffers = TenantBuffers::new(2, 1 << 20, 10);
        let mut b = batch_of(&[("a", "1234\n"), ("b", "123456\n"), ("a", "abcd\n")]);
        assert_eq!(buffers.append(&mut b), Ok(vec!["a".to_owned()]));
        let reasons: Vec<_> = b.reasons().collect();
        assert_eq!(reasons, [None, Some(Reason::BufferFull), None]);
        assert_eq!(buffers.total_bytes(), 10);
        assert_eq!(buffers.tenants(), ["a"]);
        assert_eq!(buffers.depth(), [("a".to_owned(), (2, 10))]);
        assert_eq!(buffers.ready(), ["a"]);
        assert_eq!(buffers.append(&mut b), Err(UsageError::AlreadyAppended));

        let buffers = TenantBuffers::new(2, 1 << 20, 1 << 20);
        let mut b = batch_of(&[("a", "x\n"), ("b", "y\n"), ("a", "z\n")]);
        assert_eq!(buffers.append(&mut b), Ok(vec!["a".to_owned()]));
        let mut b = batch_of(&[("b", "w\n")]);
        assert_eq!(buffers.append(&mut b), Ok(vec!["b".to_owned()]));
        let buffers = TenantBuffers::new(100, 4, 1 << 20);
        let mut b = batch_of(&[("a", "x\n"), ("b", "long\n")]);
        assert_eq!(buffers.append(&mut b), Ok(vec!["b".to_owned()]));
    }

    #[test]
    fn drain_takes_whole_lines_oldest_first_across_chunks() {
        let buffers = TenantBuffers::new(500, 1 << 20, 1 << 30);
        let line = format!("{}\n", "x".repeat(999));
        let mut expected = Vec::new();
        for i in 0..300 {
            let l = format!("{i:04}{}", &line[4..]);
            assert_eq!(buffers.append_lines("t", l.as_bytes(), 1), Ok(true));
            expected.push(l);
        }
        assert_eq!(buffers.depth(), [("t".to_owned(), (300, 300_000))]);
        let (first, n) = drained(&buffers, "t", 7).unwrap_or_default();
        assert_eq!((first, n), (expected[..7].concat(), 7));
        let (rest, n) = drained(&buffers, "t", 5000).unwrap_or_default();
        assert_eq!((rest, n), (expected[7..].concat(), 293));
        assert_eq!(drained(&buffers, "t", 10), None);
        assert!(buffers.tenants().is_empty());
        assert_eq!(buffers.total_bytes(), 300_000);
        assert_eq!(buffers.settle(300_000), Ok(()));
        assert_eq!(buffers.total_bytes(), 0);
    }

    #[test]
    fn put_back_is_the_next_drain_and_always_fits() {
        let buffers = TenantBuffers::new(500, 1 << 20, 12);
        assert_eq!(buffers.append_lines("t", b"aaa\nbbb\n", 2), Ok(true));
        let (body, n) = drained(&buffers, "t", 1).unwrap_or_default();
        assert_eq!((body.as_str(), n), ("aaa\n", 1));
        assert_eq!(buffers.append_lines("t", b"ccc\n", 1), Ok(true));
        assert_eq!(buffers.append_lines("t", b"d\n", 1), Ok(false));
        assert_eq!(buffers.total_bytes(), 12);
        assert_eq!(buffers.put_back("t", body.into_bytes(), n), Ok(()));
        assert_eq!(buffers.total_bytes(), 12);
        assert_eq!(buffers.ready(), ["t"]);
        assert_eq!(buffers.depth(), [("t".to_owned(), (3, 12))]);
        assert_eq!(drained(&buffers, "t", 5), Some(("aaa\n".to_owned(), 1)));
        assert_eq!(
            drained(&buffers, "t", 5),
            Some(("bbb\nccc\n".to_owned(), 2))
        );
        assert_eq!(
            buffers.settle(13),
            Err(UsageError::NotInFlight {
                nbytes: 13,
                in_flight: 12
            })
        );
        assert_eq!(
            buffers.put_back("t", vec![b'x'; 13], 1),
            Err(UsageError::NotInFlight {
                nbytes: 13,
                in_flight: 12
            })
        );
        assert_eq!(buffers.settle(12), Ok(()));
        assert_eq!(buffers.total_bytes(), 0);
    }

    #[test]
    fn tenants_keep_creation_order_and_leave_when_empty() {
        let buffers = TenantBuffers::new(1, 1 << 20, 1 << 20);
        for t in ["c", "a", "b"] {
            assert_eq!(buffers.append_lines(t, b"x\n", 1), Ok(true));
        }
        assert_eq!(buffers.tenants(), ["c", "a", "b"]);
        assert!(drained(&buffers, "c", 10).is_some());
        assert_eq!(buffers.tenants(), ["a", "b"]);
        assert_eq!(buffers.ready(), ["a", "b"]);
        assert_eq!(buffers.append_lines("c", b"x\n", 1), Ok(true));
        assert_eq!(buffers.tenants(), ["a", "b", "c"]);
        assert_eq!(drained(&buffers, "nobody", 10), None);
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let buffers = TenantBuffers::new(1, 1 << 20, 1 << 20);
        for (lines, n) in [(&b"x\n"[..], 2), (b"x", 1), (b"", 0), (b"x\ny\n", 1)] {
            assert_eq!(
                buffers.append_lines("t", lines, n),
                Err(UsageError::BadLines)
            );
        }
        assert_eq!(buffers.drain("t", 0), Err(UsageError::BadMaxLines));
        assert_eq!(buffers.total_bytes(), 0);
    }

    #[test]
    fn chunks_bound_memory_overhead() {
        let mut buf = TenantBuffer::default();
        let line = [b'x'; 99];
        for _ in 0..10_000 {
            buf.push(&line);
            buf.push(b"\n");
            buf.lines += 1;
            buf.bytes += 100;
        }
        let capacity: usize = buf.chunks.iter().map(Vec::capacity).sum();
        assert!(
            capacity <= buf.bytes + MAX_CHUNK,
            "{capacity} for {}",
            buf.bytes
        );
        let (out, n) = buf.take_lines(9_999);
        assert_eq!((out.len(), n), (999_900, 9_999));
        let capacity: usize = buf.chunks.iter().map(Vec::capacity).sum();
        assert!(capacity <= 2 * MAX_CHUNK);
    }

    #[test]
    fn concurrent_appends_and_drains_lose_nothing() {
        let buffers = TenantBuffers::new(500, 1 << 20, 1 << 30);
        std::thread::scope(|s| {
            for t in 0..4 {
                let buffers = &buffers;
                s.spawn(move || {
                    for _ in 0..1000 {
                        let _ = buffers.append_lines(&format!("t{}", t % 2), b"line\n", 1);
                    }
                });
            }
        });
        let mut lines = 0;
        for t in ["t0", "t1"] {
            while let Some((_, n)) = drained(&buffers, t, 333) {
                lines += n;
            }
        }
        assert_eq!(lines, 4000);
        assert_eq!(buffers.total_bytes(), 20_000);
    }
}
