//! Per-tenant line-protocol buffers under a global and a per-tenant byte cap, with in-flight
//! accounting and delivery marks.
//!
//! Lines are stored in chunks of at most `MAX_CHUNK` bytes (a line may span chunks), so a
//! buffer never holds more than its lines plus one partly filled and one partly drained chunk.
//!
//! A mark tags the lines of one append (a request, a WAL record, a NATS message). It is
//! delivered when every line appended under it has been settled, in every tenant; each tenant
//! has at most one drained body in flight, so settlement is always a prefix of that body.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::HashMap;

use crate::batch::{Batch, TenantGroup};
use crate::errors::UsageError;

const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 64 * 1024;

/// Marks of consecutive lines, run-length encoded: `(mark, lines)`, oldest first; mark 0 is
/// "no mark".
type Marks = VecDeque<(u64, usize)>;

fn push_mark(marks: &mut Marks, mark: u64, lines: usize) {
    if lines == 0 {
        return;
    }
    match marks.back_mut() {
        Some((last, n)) if *last == mark => *n += lines,
        _ => marks.push_back((mark, lines)),
    }
}

/// Removes and returns the marks of the oldest `lines` lines.
fn take_marks(marks: &mut Marks, mut lines: usize) -> Marks {
    let mut out = Marks::new();
    while lines > 0 {
        let front = marks
            .front_mut()
            .expect("marks cover every buffered and in-flight line");
        let n = front.1.min(lines);
        push_mark(&mut out, front.0, n);
        front.1 -= n;
        lines -= n;
        if front.1 == 0 {
            marks.pop_front();
        }
    }
    out
}

/// Drained lines as the chunks they were buffered in: a chunk the lines fill whole is moved
/// out of the buffer, not copied (only the caller's copy of a body is then made, not two).
#[derive(Default)]
pub struct Pieces {
    parts: Vec<Vec<u8>>,
    len: usize,
}

impl Pieces {
    fn push(&mut self, part: Vec<u8>) {
        self.len += part.len();
        self.parts.push(part);
    }

    /// Bytes in all parts.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, in order, as slices.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.parts.iter().map(Vec::as_slice)
    }

    /// The bytes from `offset` on, in order, as slices.
    fn parts_from(&self, mut offset: usize) -> impl Iterator<Item = &[u8]> {
        self.parts().filter_map(move |part| {
            let rest = part.get(offset..).unwrap_or_default();
            offset = offset.saturating_sub(part.len());
            (!rest.is_empty()).then_some(rest)
        })
    }

    /// The bytes from `offset` on, in one vector.
    fn to_vec_from(&self, offset: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len - offset);
        for part in self.parts_from(offset) {
            out.extend_from_slice(part);
        }
        out
    }

    /// Byte length of the first `count` newline-terminated lines from `offset`.
    fn lines_len(&self, offset: usize, count: usize) -> usize {
        let mut seen = 0;
        let mut len = 0;
        for part in self.parts_from(offset) {
            if count == 0 {
                break;
            }
            if let Some(pos) = memchr::memchr_iter(b'\n', part).nth(count - seen - 1) {
                return len + pos + 1;
            }
            seen += memchr::memchr_iter(b'\n', part).count();
            len += part.len();
        }
        len
    }
}

fn check_lines(lines: &[u8], line_count: usize) -> Result<(), UsageError> {
    if line_count == 0
        || !lines.ends_with(b"\n")
        || memchr::memchr_iter(b'\n', lines).count() != line_count
    {
        return Err(UsageError::BadLines);
    }
    Ok(())
}

/// A drained body, or a put-back one (the unsettled rest of a drained one), with its marks.
struct Body {
    data: Pieces,
    lines: usize,
    marks: Marks,
}

/// A drained body shared with the caller, and its line count.
pub type Drained = (Arc<Pieces>, usize);

/// The one drained body of a tenant that is not yet settled or put back.
struct InFlight {
    /// Shared with the caller of `drain_shared`: a body is copied once more only when put back.
    data: Arc<Pieces>,
    /// Bytes of `data` already settled.
    done: usize,
    /// Lines not yet settled.
    lines: usize,
    marks: Marks,
}

#[derive(Default)]
struct TenantBuffer {
    /// Order of creation, which is the order of `tenants()` and `ready()`.
    created: u64,
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already drained.
    head: usize,
    lines: usize,
    bytes: usize,
    marks: Marks,
    put_back: Option<Body>,
}

impl TenantBuffer {
    /// Inlined for its common case, a line that fits in the last chunk: one copy.
    #[inline(always)]
    fn push(&mut self, data: &[u8]) {
        if let Some(chunk) = self.chunks.back_mut() {
            if chunk.capacity() - chunk.len() >= data.len() {
                chunk.extend_from_slice(data);
                return;
            }
        }
        self.push_spilling(data);
    }

    /// `push` of data that starts a chunk, or spills over into new ones.
    #[inline(never)]
    fn push_spilling(&mut self, mut data: &[u8]) {
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

    /// Stores lines (`count` of them, in one or more pieces) under `mark`.
    fn store<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>, count: usize, mark: u64) {
        for piece in pieces {
            self.push(piece);
            self.bytes += piece.len();
        }
        self.lines += count;
        push_mark(&mut self.marks, mark, count);
    }

    /// Copies out and forgets the oldest `max_lines` lines (all when fewer).
    fn take_lines(&mut self, max_lines: usize) -> Body {
        let count = max_lines.min(self.lines);
        let nbytes = if count == self.lines {
            self.bytes
        } else {
            self.prefix_len(count)
        };
        let mut out = Pieces::default();
        while out.len() < nbytes {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let avail = front
                .get(self.head..)
                .expect("head is within the front chunk");
            let n = avail.len().min(nbytes - out.len());
            if n == front.len() {
                out.push(self.chunks.pop_front().expect("the front chunk exists"));
                continue;
            }
            out.push(avail[..n].to_vec());
            self.head += n;
            if self.head >= front.len() {
                self.chunks.pop_front();
                self.head = 0;
            }
        }
        self.lines -= count;
        self.bytes -= out.len();
        Body {
            data: out,
            lines: count,
            marks: take_marks(&mut self.marks, count),
        }
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
        let (lines, bytes) = self
            .put_back
            .as_ref()
            .map_or((0, 0), |b| (b.lines, b.data.len()));
        (self.lines + lines, self.bytes + bytes)
    }

    fn is_empty(&self) -> bool {
        self.lines == 0 && self.put_back.is_none()
    }
}

/// Which marks are open (lines not yet settled) and which were delivered.
#[derive(Default)]
struct MarkBook {
    /// The largest mark given so far.
    last: u64,
    /// Unsettled lines per open mark.
    open: BTreeMap<u64, usize>,
    /// Marks delivered since the last `take_delivered`, as disjoint ranges `start -> end`
    /// (inclusive): a caller that never takes them (the WAL) costs one range, not a list.
    delivered: BTreeMap<u64, u64>,
}

impl MarkBook {
    /// Checks that `mark` may tag an append now: not below the last one, and when equal to it,
    /// still open.
    fn check(&self, mark: u64) -> Result<(), UsageError> {
        if mark == 0 || mark > self.last {
            return Ok(());
        }
        if mark < self.last {
            return Err(UsageError::MarkOrder {
                mark,
                last: self.last,
            });
        }
        if self.open.contains_key(&mark) {
            Ok(())
        } else {
            Err(UsageError::MarkDelivered { mark })
        }
    }

    /// Records `lines` appended under a checked `mark`; a mark with none is delivered at once.
    fn add(&mut self, mark: u64, lines: usize) {
        if mark == 0 {
            return;
        }
        self.last = self.last.max(mark);
        if lines > 0 {
            *self.open.entry(mark).or_default() += lines;
        } else if !self.open.contains_key(&mark) {
            self.deliver(mark);
        }
    }

    /// `lines` of `mark` are settled.
    fn settle(&mut self, mark: u64, lines: usize) {
        if mark == 0 || lines == 0 {
            return;
        }
        let left = self
            .open
            .get_mut(&mark)
            .expect("a settled line's mark is open");
        *left -= lines;
        if *left == 0 {
            self.open.remove(&mark);
            self.deliver(mark);
        }
    }

    fn deliver(&mut self, mark: u64) {
        let before = self
            .delivered
            .range(..mark)
            .next_back()
            .filter(|(_, &end)| end + 1 == mark)
            .map(|(&start, _)| start);
        let after = mark
            .checked_add(1)
            .and_then(|next| self.delivered.remove(&next));
        let start = before.unwrap_or(mark);
        self.delivered.insert(start, after.unwrap_or(mark));
    }

    fn take_delivered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.delivered)
            .into_iter()
            .flat_map(|(start, end)| start..=end)
            .collect()
    }

    fn delivered_through(&self) -> u64 {
        self.open
            .keys()
            .next()
            .map_or(self.last, |&first| first - 1)
    }
}

/// The tenant tables use foldhash, seeded at random per process: SipHash cost about 60
/// instructions a message, for tables that hold a few tenants.
#[derive(Default)]
struct State {
    buffers: Vec<TenantBuffer>,
    names: Vec<String>,
    slot_of: HashMap<String, usize>,
    next_created: u64,
    /// Bytes buffered + put back + in flight + reserved, in all tenants.
    total: usize,
    /// The same per tenant (only tenants holding some).
    used: HashMap<String, usize>,
    in_flight: HashMap<String, InFlight>,
    marks: MarkBook,
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

    fn used(&self, tenant: &str) -> usize {
        self.used.get(tenant).copied().unwrap_or(0)
    }

    fn count(&mut self, tenant: &str, nbytes: usize) {
        if nbytes == 0 {
            return;
        }
        self.total += nbytes;
        // The tenant's name is copied only when it starts holding bytes, not every time.
        match self.used.get_mut(tenant) {
            Some(used) => *used += nbytes,
            None => {
                self.used.insert(tenant.to_owned(), nbytes);
            }
        }
    }

    fn uncount(&mut self, tenant: &str, nbytes: usize) {
        self.total -= nbytes;
        let used = self
            .used
            .get_mut(tenant)
            .expect("bytes leaving a tenant were counted for it");
        *used -= nbytes;
        if *used == 0 {
            self.used.remove(tenant);
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

/// Room taken under the caps for a batch's accepted lines before they are stored (the WAL
/// writes them in between); `commit` stores them, `cancel` gives the room back.
#[derive(Debug)]
#[must_use = "a reservation holds room until committed or cancelled"]
pub struct Reservation {
    pub mark: u64,
    /// Bytes reserved per tenant, in order of their first line in the batch.
    tenants: Vec<(String, usize)>,
}

impl Reservation {
    /// Whether nothing fit (or nothing was accepted): there is nothing to log or store.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// Per-tenant line-protocol buffers under a global and a per-tenant byte cap. Thread-safe.
pub struct TenantBuffers {
    batch_size: usize,
    flush_bytes: usize,
    max_bytes: usize,
    tenant_max_bytes: usize,
    state: Mutex<State>,
}

/// What `TenantBuffers::append` stored of one tenant of a batch.
#[derive(Debug, Clone, Copy, Default)]
struct Appended {
    /// The tenant's buffer, once a line is stored.
    slot: Option<usize>,
    /// Bytes counted against the tenant's cap, its lines of this batch included; read at its
    /// first line.
    used: Option<usize>,
    bytes: usize,
    lines: usize,
}

impl TenantBuffers {
    pub fn new(
        batch_size: usize,
        flush_bytes: usize,
        max_bytes: usize,
        tenant_max_bytes: usize,
    ) -> Self {
        TenantBuffers {
            batch_size,
            flush_bytes,
            max_bytes,
            tenant_max_bytes,
            state: Mutex::new(State::default()),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn tenant_max_bytes(&self) -> usize {
        self.tenant_max_bytes
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

    fn fits(&self, state: &State, tenant: &str, nbytes: usize) -> bool {
        state.total + nbytes <= self.max_bytes
            && state.used(tenant) + nbytes <= self.tenant_max_bytes
    }

    /// Whether `n` more bytes fit under both caps, given the bytes counted in all tenants and
    /// in the line's; counts them when they do.
    fn take(&self, total: &mut usize, used: &mut usize, n: usize) -> bool {
        if *total + n > self.max_bytes || *used + n > self.tenant_max_bytes {
            return false;
        }
        *total += n;
        *used += n;
        true
    }

    /// Appends the batch's accepted lines under `mark` (0: none); items that do not fit become
    /// `BUFFER_FULL`. Returns the tenants appended to that are now at a threshold, in order of
    /// first appearance.
    pub fn append(&self, batch: &mut Batch, mark: u64) -> Result<Vec<String>, UsageError> {
        let mut state = self.lock();
        let state = &mut *state;
        state.marks.check(mark)?;
        // Each line is fitted under the caps and stored in one pass over the batch: a pass to
        // take room and one to store cost the walk over the items twice.
        let mut tenants = vec![Appended::default(); batch.tenant_count()];
        let mut total = state.total;
        batch.append_named(|t, tenant, line| {
            let to = &mut tenants[t];
            let used = to.used.get_or_insert_with(|| state.used(tenant));
            if !self.take(&mut total, used, line.len()) {
                return false;
            }
            to.bytes += line.len();
            to.lines += 1;
            // Buffers are created in the order of their first stored line.
            let slot = *to.slot.get_or_insert_with(|| state.slot(tenant));
            // `bytes` is kept current (it sizes the next chunk); `lines` is added per tenant.
            let buf = &mut state.buffers[slot];
            buf.push(line);
            buf.bytes += line.len();
            true
        })?;
        state
            .marks
            .add(mark, tenants.iter().map(|to| to.lines).sum());
        // The tenants due are reported in the order of their first appearance in the batch.
        let mut due = Vec::new();
        for (t, to) in tenants.iter().enumerate() {
            let Some(slot) = to.slot else {
                continue;
            };
            let tenant = batch.tenant(t);
            state.count(tenant, to.bytes);
            // The lock is held: this call's lines of a tenant are contiguous in its buffer.
            let buf = &mut state.buffers[slot];
            buf.lines += to.lines;
            push_mark(&mut buf.marks, mark, to.lines);
            if self.at_threshold(buf) {
                due.push(tenant.to_owned());
            }
        }
        Ok(due)
    }

    /// Takes room for the batch's accepted lines (`BUFFER_FULL` for those that do not fit) under
    /// a new mark, without storing them yet; the lines taken per tenant, grouped in the same
    /// pass over the batch.
    pub fn reserve<'b>(
        &self,
        batch: &'b mut Batch,
    ) -> Result<(Reservation, Vec<TenantGroup<'b>>), UsageError> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut used = vec![None; batch.tenant_count()];
        let mut total = state.total;
        let groups = batch.take_groups(|t, tenant, n| {
            let used = used[t].get_or_insert_with(|| state.used(tenant));
            self.take(&mut total, used, n)
        })?;
        for group in &groups {
            state.count(group.tenant, group.bytes());
        }
        let mark = state.marks.last + 1;
        state
            .marks
            .add(mark, groups.iter().map(TenantGroup::count).sum());
        let tenants = groups
            .iter()
            .map(|g| (g.tenant.to_owned(), g.bytes()))
            .collect();
        Ok((Reservation { mark, tenants }, groups))
    }

    /// Takes room for one tenant's lines, all or nothing, under a new mark; None when they do
    /// not fit (nothing changes).
    pub fn reserve_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<Reservation>, UsageError> {
        check_lines(lines, line_count)?;
        let mut state = self.lock();
        if !self.fits(&state, tenant, lines.len()) {
            return Ok(None);
        }
        state.count(tenant, lines.len());
        let mark = state.marks.last + 1;
        state.marks.add(mark, line_count);
        Ok(Some(Reservation {
            mark,
            tenants: vec![(tenant.to_owned(), lines.len())],
        }))
    }

    /// Stores reserved lines, `(tenant, lines, line_count)` per tenant as the reservation took
    /// them, each tenant's lines in one or more pieces; returns the tenants now at a
    /// threshold, in that order.
    pub fn commit<'a, P: IntoIterator<Item = &'a [u8]>>(
        &self,
        reservation: Reservation,
        lines: impl IntoIterator<Item = (&'a str, P, usize)>,
    ) -> Vec<String> {
        let mut state = self.lock();
        let mut due = Vec::new();
        for (tenant, pieces, count) in lines {
            let slot = state.slot(tenant);
            let buf = &mut state.buffers[slot];
            buf.store(pieces, count, reservation.mark);
            if self.at_threshold(buf) {
                due.push(tenant.to_owned());
            }
        }
        due
    }

    /// Gives a reservation's room back; its mark is delivered (nothing of it was stored).
    pub fn cancel(&self, reservation: Reservation) {
        let mut state = self.lock();
        for (tenant, nbytes) in &reservation.tenants {
            state.uncount(tenant, *nbytes);
        }
        if let Some(lines) = state.marks.open.get(&reservation.mark).copied() {
            state.marks.settle(reservation.mark, lines);
        }
    }

    /// Appends newline-terminated `lines` (`line_count` of them) under `mark`, all or nothing;
    /// false when they do not fit under the caps. `force` ignores the caps (replay of a log
    /// whose lines were accepted under them).
    pub fn append_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
        mark: u64,
        force: bool,
    ) -> Result<bool, UsageError> {
        check_lines(lines, line_count)?;
        let mut state = self.lock();
        let state = &mut *state;
        state.marks.check(mark)?;
        if !(force || self.fits(state, tenant, lines.len())) {
            state.marks.add(mark, 0);
            return Ok(false);
        }
        state.count(tenant, lines.len());
        state.marks.add(mark, line_count);
        let slot = state.slot(tenant);
        state.buffers[slot].store([lines], line_count, mark);
        Ok(true)
    }

    /// The largest mark given so far.
    pub fn last_mark(&self) -> u64 {
        self.lock().marks.last
    }

    /// Raises the last mark given to at least `mark` (marks found in a log being replayed).
    pub fn raise_last_mark(&self, mark: u64) {
        let mut state = self.lock();
        state.marks.last = state.marks.last.max(mark);
    }

    /// Tenants at or over a threshold, or with a put-back body waiting.
    pub fn ready(&self) -> Vec<String> {
        self.lock()
            .sorted_names(|b| b.put_back.is_some() || self.at_threshold(b))
    }

    /// Tenants with anything buffered or put back.
    pub fn tenants(&self) -> Vec<String> {
        self.lock().sorted_names(|_| true)
    }

    /// The tenant's oldest data as one body, now in flight: a put-back body as it was, else up
    /// to `max_lines` buffered lines. A tenant has at most one body in flight.
    pub fn drain(
        &self,
        tenant: &str,
        max_lines: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, UsageError> {
        let drained = self.drain_shared(tenant, max_lines)?;
        Ok(drained.map(|(data, lines)| (data.to_vec_from(0), lines)))
    }

    /// `drain` without a copy of the body: the caller shares the one kept in flight.
    pub fn drain_shared(
        &self,
        tenant: &str,
        max_lines: usize,
    ) -> Result<Option<Drained>, UsageError> {
        if max_lines == 0 {
            return Err(UsageError::BadMaxLines);
        }
        let mut state = self.lock();
        if state.in_flight.contains_key(tenant) {
            return Err(UsageError::InFlight {
                tenant: tenant.to_owned(),
            });
        }
        let Some(&slot) = state.slot_of.get(tenant) else {
            return Ok(None);
        };
        let buf = &mut state.buffers[slot];
        let body = match buf.put_back.take() {
            Some(body) => body,
            None => buf.take_lines(max_lines),
        };
        if buf.is_empty() {
            state.remove(slot);
        }
        let data = Arc::new(body.data);
        let out = (Arc::clone(&data), body.lines);
        state.in_flight.insert(
            tenant.to_owned(),
            InFlight {
                data,
                done: 0,
                lines: body.lines,
                marks: body.marks,
            },
        );
        Ok(Some(out))
    }

    /// The oldest `line_count` lines of the tenant's body in flight are finished with (written,
    /// or dead-lettered); their marks may now be delivered.
    pub fn settle(&self, tenant: &str, line_count: usize) -> Result<(), UsageError> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(flight) = state.in_flight.get_mut(tenant) else {
            return Err(UsageError::NothingInFlight {
                tenant: tenant.to_owned(),
            });
        };
        if line_count > flight.lines {
            return Err(UsageError::SettleTooMany {
                lines: line_count,
                in_flight: flight.lines,
            });
        }
        // Settling all of it (the common case) needs no search for the line ends.
        let nbytes = if line_count == flight.lines {
            flight.data.len() - flight.done
        } else {
            flight.data.lines_len(flight.done, line_count)
        };
        flight.done += nbytes;
        flight.lines -= line_count;
        let settled = take_marks(&mut flight.marks, line_count);
        if flight.lines == 0 {
            state.in_flight.remove(tenant);
        }
        state.uncount(tenant, nbytes);
        for (mark, lines) in settled {
            state.marks.settle(mark, lines);
        }
        Ok(())
    }

    /// Returns the unsettled rest of the tenant's body in flight (its write failed): it is the
    /// tenant's next `drain`, with its marks.
    pub fn put_back(&self, tenant: &str) -> Result<(), UsageError> {
        let mut state = self.lock();
        let Some(flight) = state.in_flight.remove(tenant) else {
            return Err(UsageError::NothingInFlight {
                tenant: tenant.to_owned(),
            });
        };
        let slot = state.slot(tenant);
        let buf = &mut state.buffers[slot];
        let mut data = Pieces::default();
        data.push(flight.data.to_vec_from(flight.done));
        let replaced = buf.put_back.replace(Body {
            data,
            lines: flight.lines,
            marks: flight.marks,
        });
        assert!(
            replaced.is_none(),
            "a put-back body drains before another body can be in flight"
        );
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

    /// Per tenant, the bytes counted against `tenant_max_bytes` (buffered, put back, in flight),
    /// tenants by name.
    pub fn tenant_bytes(&self) -> Vec<(String, usize)> {
        let state = self.lock();
        let mut out: Vec<(String, usize)> =
            state.used.iter().map(|(t, &n)| (t.clone(), n)).collect();
        out.sort_unstable();
        out
    }

    pub fn total_bytes(&self) -> usize {
        self.lock().total
    }

    /// Whether any mark in `low..=high` is open (has unsettled lines).
    pub fn any_open(&self, low: u64, high: u64) -> bool {
        low <= high && self.lock().marks.open.range(low..=high).next().is_some()
    }

    /// Marks delivered since the previous call, ascending.
    pub fn take_delivered(&self) -> Vec<u64> {
        self.lock().marks.take_delivered()
    }

    /// The largest N such that every mark up to N is delivered (0 when none).
    pub fn delivered_through(&self) -> u64 {
        self.lock().marks.delivered_through()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Reason;

    fn buffers(batch_size: usize, flush_bytes: usize, max_bytes: usize) -> TenantBuffers {
        TenantBuffers::new(batch_size, flush_bytes, max_bytes, max_bytes)
    }

    fn add(buffers: &TenantBuffers, tenant: &str, lines: &str, mark: u64) -> bool {
        let n = lines.matches('\n').count();
        buffers
            .append_lines(tenant, lines.as_bytes(), n, mark, false)
            .expect("well-formed lines")
    }

    fn drained(buffers: &TenantBuffers, tenant: &str, max_lines: usize) -> Option<(String, usize)> {
        buffers
            .drain(tenant, max_lines)
            .expect("nothing in flight")
            .map(|(body, n)| (String::from_utf8(body).unwrap_or_default(), n))
    }

    #[test]
    fn append_respects_the_cap_per_item_and_reports_ready_tenants() {
        let buffers = buffers(2, 1 << 20, 10);
        let mut b = Batch::of_lines(&[("a", "1234\n"), ("b", "123456\n"), ("a", "abcd\n")]);
        assert_eq!(buffers.append(&mut b, 0), Ok(vec!["a".to_owned()]));
        let reasons: Vec<_> = b.reasons().collect();
        assert_eq!(reasons, [None, Some(Reason::BufferFull), None]);
        assert_eq!(buffers.total_bytes(), 10);
        assert_eq!(buffers.tenants(), ["a"]);
        assert_eq!(buffers.depth(), [("a".to_owned(), (2, 10))]);
        assert_eq!(buffers.ready(), ["a"]);
        assert_eq!(buffers.append(&mut b, 0), Err(UsageError::AlreadyAppended));

        let buffers = super::tests::buffers(2, 1 << 20, 1 << 20);
        let mut b = Batch::of_lines(&[("a", "x\n"), ("b", "y\n"), ("a", "z\n")]);
        assert_eq!(buffers.append(&mut b, 0), Ok(vec!["a".to_owned()]));
        let mut b = Batch::of_lines(&[("b", "w\n")]);
        assert_eq!(buffers.append(&mut b, 0), Ok(vec!["b".to_owned()]));
        let buffers = super::tests::buffers(100, 4, 1 << 20);
        let mut b = Batch::of_lines(&[("a", "x\n"), ("b", "long\n")]);
        assert_eq!(buffers.append(&mut b, 0), Ok(vec!["b".to_owned()]));
    }

    #[test]
    fn a_tenant_holds_at_most_its_share_and_others_are_unaffected() {
        let buffers = TenantBuffers::new(100, 1 << 20, 20, 8);
        let mut b =
            Batch::of_lines(&[("a", "aaa\n"), ("a", "aaa\n"), ("b", "bbb\n"), ("a", "a\n")]);
        assert_eq!(buffers.append(&mut b, 0), Ok(vec![]));
        let reasons: Vec<_> = b.reasons().collect();
        assert_eq!(reasons, [None, None, None, Some(Reason::BufferFull)]);
        assert!(!add(&buffers, "a", "x\n", 0));
        assert!(add(&buffers, "b", "bbb\n", 0));
        // In flight still counts against the tenant's share until settled.
        assert!(drained(&buffers, "a", 10).is_some());
        assert!(!add(&buffers, "a", "x\n", 0));
        assert_eq!(
            buffers.tenant_bytes(),
            [("a".to_owned(), 8), ("b".to_owned(), 8)]
        );
        assert_eq!(buffers.settle("a", 1), Ok(()));
        assert!(add(&buffers, "a", "x\n", 0));
        assert_eq!(
            buffers.tenant_bytes(),
            [("a".to_owned(), 6), ("b".to_owned(), 8)]
        );
    }

    #[test]
    fn drain_takes_whole_lines_oldest_first_across_chunks() {
        let buffers = buffers(500, 1 << 20, 1 << 30);
        let line = format!("{}\n", "x".repeat(999));
        let mut expected = Vec::new();
        for i in 0..300 {
            let l = format!("{i:04}{}", &line[4..]);
            assert!(add(&buffers, "t", &l, 0));
            expected.push(l);
        }
        assert_eq!(buffers.depth(), [("t".to_owned(), (300, 300_000))]);
        let (first, n) = drained(&buffers, "t", 7).unwrap_or_default();
        assert_eq!((first, n), (expected[..7].concat(), 7));
        assert_eq!(buffers.settle("t", 7), Ok(()));
        let (rest, n) = drained(&buffers, "t", 5000).unwrap_or_default();
        assert_eq!((rest, n), (expected[7..].concat(), 293));
        assert!(buffers.tenants().is_empty());
        assert_eq!(buffers.total_bytes(), 293_000);
        assert_eq!(buffers.settle("t", 293), Ok(()));
        assert_eq!(drained(&buffers, "t", 10), None);
        assert_eq!(buffers.total_bytes(), 0);
    }

    #[test]
    fn a_partly_settled_body_of_many_chunks_puts_back_its_exact_rest() {
        let buffers = buffers(500, 1 << 30, 1 << 30);
        // Lines of 999 bytes across chunks of 4 to 64 KiB: some lines span two chunks.
        let lines: Vec<String> = (0..200)
            .map(|i| format!("{i:04}{}\n", "y".repeat(994)))
            .collect();
        for l in &lines {
            assert!(add(&buffers, "t", l, 0));
        }
        let (body, n) = drained(&buffers, "t", 150).unwrap_or_default();
        assert_eq!((body, n), (lines[..150].concat(), 150));
        assert_eq!(buffers.settle("t", 77), Ok(()));
        assert_eq!(buffers.total_bytes(), 123 * 999);
        assert_eq!(buffers.put_back("t"), Ok(()));
        let (body, n) = drained(&buffers, "t", 500).unwrap_or_default();
        assert_eq!((body, n), (lines[77..150].concat(), 73));
        assert_eq!(buffers.settle("t", 73), Ok(()));
        let (body, n) = drained(&buffers, "t", 500).unwrap_or_default();
        assert_eq!((body, n), (lines[150..].concat(), 50));
    }

    #[test]
    fn put_back_returns_the_unsettled_rest_as_the_next_drain() {
        let buffers = buffers(500, 1 << 20, 12);
        assert!(add(&buffers, "t", "aaa\nbbb\n", 0));
        let (body, n) = drained(&buffers, "t", 1).unwrap_or_default();
        assert_eq!((body.as_str(), n), ("aaa\n", 1));
        assert_eq!(
            buffers.drain("t", 1),
            Err(UsageError::InFlight {
                tenant: "t".to_owned()
            })
        );
        assert!(add(&buffers, "t", "ccc\n", 0));
        assert!(!add(&buffers, "t", "d\n", 0));
        assert_eq!(buffers.put_back("t"), Ok(()));
        assert_eq!(
            buffers.put_back("t"),
            Err(UsageError::NothingInFlight {
                tenant: "t".to_owned()
            })
        );
        assert_eq!(buffers.total_bytes(), 12);
        assert_eq!(buffers.ready(), ["t"]);
        assert_eq!(buffers.depth(), [("t".to_owned(), (3, 12))]);
        assert_eq!(drained(&buffers, "t", 5), Some(("aaa\n".to_owned(), 1)));
        assert_eq!(buffers.settle("t", 1), Ok(()));
        assert_eq!(
            drained(&buffers, "t", 5),
            Some(("bbb\nccc\n".to_owned(), 2))
        );
        assert_eq!(
            buffers.settle("t", 3),
            Err(UsageError::SettleTooMany {
                lines: 3,
                in_flight: 2
            })
        );
        assert_eq!(buffers.settle("t", 1), Ok(()));
        assert_eq!(buffers.total_bytes(), 4);
        assert_eq!(buffers.put_back("t"), Ok(()));
        assert_eq!(drained(&buffers, "t", 5), Some(("ccc\n".to_owned(), 1)));
        assert_eq!(buffers.settle("t", 1), Ok(()));
        assert_eq!(buffers.total_bytes(), 0);
        assert_eq!(
            buffers.settle("t", 0),
            Err(UsageError::NothingInFlight {
                tenant: "t".to_owned()
            })
        );
    }

    #[test]
    fn a_mark_is_delivered_when_all_its_lines_in_all_tenants_are_settled() {
        let buffers = buffers(500, 1 << 20, 1 << 20);
        let mut b = Batch::of_lines(&[("a", "a1\n"), ("b", "b1\n"), ("a", "a2\n")]);
        assert_eq!(buffers.append(&mut b, 3), Ok(vec![]));
        assert!(add(&buffers, "a", "a3\n", 4));
        assert!(add(&buffers, "b", "b2\n", 0));
        assert_eq!(buffers.delivered_through(), 2);
        assert_eq!(drained(&buffers, "a", 10), Some(("a1\na2\na3\n".into(), 3)));
        assert_eq!(buffers.settle("a", 3), Ok(()));
        assert_eq!(buffers.take_delivered(), [4]);
        assert_eq!(buffers.delivered_through(), 2);
        assert_eq!(drained(&buffers, "b", 10), Some(("b1\nb2\n".into(), 2)));
        assert_eq!(buffers.settle("b", 1), Ok(()));
        assert_eq!(buffers.take_delivered(), [3]);
        assert_eq!(buffers.take_delivered(), Vec::<u64>::new());
        assert_eq!(buffers.delivered_through(), 4);
    }

    #[test]
    fn a_split_body_delivers_a_mark_only_when_all_its_lines_are_settled() {
        let buffers = buffers(500, 1 << 20, 1 << 20);
        assert!(add(&buffers, "t", "a\nb\n", 1));
        assert!(add(&buffers, "t", "c\nd\n", 2));
        assert!(drained(&buffers, "t", 10).is_some());
        // The first half (a, b) is written; the second (c, d) fails and goes back.
        assert_eq!(buffers.settle("t", 2), Ok(()));
        assert_eq!(buffers.put_back("t"), Ok(()));
        assert_eq!(buffers.take_delivered(), [1]);
        assert_eq!(drained(&buffers, "t", 10), Some(("c\nd\n".into(), 2)));
        assert_eq!(buffers.settle("t", 1), Ok(()));
        assert_eq!(buffers.put_back("t"), Ok(()));
        assert_eq!(buffers.delivered_through(), 1);
        assert_eq!(drained(&buffers, "t", 10), Some(("d\n".into(), 1)));
        assert_eq!(buffers.settle("t", 1), Ok(()));
        assert_eq!(buffers.take_delivered(), [2]);
        assert_eq!(buffers.delivered_through(), 2);
    }

    #[test]
    fn marks_must_increase_and_one_with_nothing_stored_is_delivered_at_once() {
        let buffers = buffers(500, 1 << 20, 4);
        assert!(add(&buffers, "a", "abc\n", 5));
        assert!(!add(&buffers, "b", "x\n", 6));
        assert_eq!(buffers.take_delivered(), [6]);
        assert_eq!(buffers.delivered_through(), 4);
        assert_eq!(
            buffers.append_lines("a", b"x\n", 1, 5, false),
            Err(UsageError::MarkOrder { mark: 5, last: 6 })
        );
        assert_eq!(
            buffers.append_lines("a", b"x\n", 1, 6, false),
            Err(UsageError::MarkDelivered { mark: 6 })
        );
        let mut b = Batch::of_lines(&[("a", "full\n")]);
        assert_eq!(buffers.append(&mut b, 7), Ok(vec![]));
        assert_eq!(buffers.take_delivered(), [7]);
        // The same mark again is fine while it is open (one mark, several tenants).
        assert_eq!(buffers.append_lines("b", b"y\n", 1, 8, true), Ok(true));
        assert_eq!(buffers.append_lines("c", b"z\n", 1, 8, true), Ok(true));
        assert_eq!(buffers.total_bytes(), 8);
    }

    #[test]
    fn a_reservation_counts_room_until_committed_or_cancelled() {
        let buffers = buffers(2, 1 << 20, 10);
        let mut b = Batch::of_lines(&[("a", "aaa\n"), ("b", "bbb\n"), ("a", "a\n"), ("c", "cc\n")]);
        let (r, groups) = buffers.reserve(&mut b).expect("first use");
        assert_eq!((r.mark, r.is_empty()), (1, false));
        assert_eq!(buffers.total_bytes(), 10);
        assert!(buffers.tenants().is_empty());
        let lines = groups.iter().map(|g| (g.tenant, g.runs(), g.count()));
        assert_eq!(buffers.commit(r, lines), vec!["a".to_owned()]);
        assert_eq!(b.tenant_lines()[0], ("a", b"aaa\na\n".to_vec(), 2));
        assert_eq!(buffers.depth().len(), 2);
        assert_eq!(buffers.delivered_through(), 0);

        let mut b = Batch::of_lines(&[("c", "c\n")]);
        let (r, groups) = buffers.reserve(&mut b).expect("first use");
        assert!(r.is_empty() && groups.is_empty());
        assert_eq!(b.reasons().collect::<Vec<_>>(), [Some(Reason::BufferFull)]);
        assert_eq!(buffers.take_delivered(), [2]);
        buffers.cancel(r);

        let buffers = super::tests::buffers(2, 1 << 20, 8);
        let mut b = Batch::of_lines(&[("a", "aaa\n")]);
        let (r, _) = buffers.reserve(&mut b).expect("first use");
        buffers.cancel(r);
        assert_eq!(buffers.total_bytes(), 0);
        assert_eq!(buffers.take_delivered(), [1]);
        assert_eq!(buffers.delivered_through(), 1);
    }

    #[test]
    fn tenants_keep_creation_order_and_leave_when_empty() {
        let buffers = buffers(1, 1 << 20, 1 << 20);
        for t in ["c", "a", "b"] {
            assert!(add(&buffers, t, "x\n", 0));
        }
        assert_eq!(buffers.tenants(), ["c", "a", "b"]);
        assert!(drained(&buffers, "c", 10).is_some());
        assert_eq!(buffers.tenants(), ["a", "b"]);
        assert_eq!(buffers.ready(), ["a", "b"]);
        assert!(add(&buffers, "c", "x\n", 0));
        assert_eq!(buffers.tenants(), ["a", "b", "c"]);
        assert_eq!(drained(&buffers, "nobody", 10), None);
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let buffers = buffers(1, 1 << 20, 1 << 20);
        for (lines, n) in [(&b"x\n"[..], 2), (b"x", 1), (b"", 0), (b"x\ny\n", 1)] {
            assert_eq!(
                buffers.append_lines("t", lines, n, 0, false),
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
            push_mark(&mut buf.marks, 0, 1);
        }
        let capacity: usize = buf.chunks.iter().map(Vec::capacity).sum();
        assert!(
            capacity <= buf.bytes + MAX_CHUNK,
            "{capacity} for {}",
            buf.bytes
        );
        let body = buf.take_lines(9_999);
        assert_eq!((body.data.len(), body.lines), (999_900, 9_999));
        let capacity: usize = buf.chunks.iter().map(Vec::capacity).sum();
        assert!(capacity <= 2 * MAX_CHUNK);
    }

    #[test]
    fn concurrent_appends_and_drains_lose_nothing() {
        let buffers = buffers(500, 1 << 20, 1 << 30);
        std::thread::scope(|s| {
            for t in 0..4 {
                let buffers = &buffers;
                s.spawn(move || {
                    for _ in 0..1000 {
                        let _ = add(buffers, &format!("t{}", t % 2), "line\n", 0);
                    }
                });
            }
        });
        let mut lines = 0;
        for t in ["t0", "t1"] {
            while let Some((_, n)) = drained(&buffers, t, 333) {
                lines += n;
                assert_eq!(buffers.settle(t, n), Ok(()));
            }
        }
        assert_eq!(lines, 4000);
        assert_eq!(buffers.total_bytes(), 0);
    }
}
