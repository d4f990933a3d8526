//! The outcome of one request: per-item reasons, the encoded lines of valid items, the groups
//! Python decides on, and the JSON response.

use crate::encode::{push_bytes, push_json_member, push_uint, Room};
use crate::errors::{Reason, UsageError};
use crate::schema::NO_SHAPE;
use crate::words;

/// Byte range into one of the batch's own buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// A range of `Batch::strings` holding one whole `str` that `push_str` appended (or none):
/// only `push_str` makes a non-empty one, which is what lets `str_at` skip UTF-8 checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StrSpan(Span);

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl StrSpan {
    /// The span's text in `strings`, a batch's.
    fn of(self, strings: &str) -> &str {
        // SAFETY: a `StrSpan` is the range of one whole `str` that `push_str` appended (or
        // empty), so its bytes are UTF-8. Checking char boundaries instead cost ~10
        // instructions a call, and ids are read back several times per item (groups,
        // response).
        unsafe { std::str::from_utf8_unchecked(self.bytes_of(strings)) }
    }

    fn bytes_of(self, strings: &str) -> &[u8] {
        strings
            .as_bytes()
            .get(self.0.range())
            .expect("a span is a range of this batch's strings")
    }
}

#[derive(Debug, Clone)]
struct Item {
    reason: Option<Reason>,
    /// Echoed in the response when the message's `device_id` was a valid Unicode string.
    device: Option<StrSpan>,
    /// The encoded line; empty for items that failed validation.
    line: Span,
    group: u32,
    /// Its group's `tenant_index` (`NO_GROUP` without one), kept beside the item: the passes
    /// over accepted items then read no group.
    tenant: u32,
    /// The line's `schema::Shape`, or `NO_SHAPE`.
    shape: u64,
}

#[derive(Debug, Clone)]
struct Group {
    tenant: StrSpan,
    device: StrSpan,
    site: StrSpan,
    token: StrSpan,
    count: u32,
    tenant_index: u32,
    /// Whether line protocol escapes some of the device id, the site id (as `checked_id`).
    escapes: (bool, bool),
}

/// Where `Batch::find_group` found an identity: its group, or the free slot it would take.
/// Valid until the next item is pushed.
#[derive(Debug, Clone, Copy)]
pub struct GroupSlot {
    slot: usize,
    tenant_hash: u64,
    /// The group an earlier item of the identity is in.
    pub found: Option<u32>,
}

/// One `(tenant, device, site, provision_token, count)` of `Batch::groups`.
pub type GroupKey<'b> = (&'b str, &'b str, &'b str, &'b str, usize);

/// One tenant's accepted lines of a batch (`Batch::tenant_groups`, `Batch::take_groups`),
/// borrowed from it, in request order.
#[derive(Debug)]
pub struct TenantGroup<'b> {
    pub tenant: &'b str,
    /// The batch's line buffer, which the runs are ranges of.
    all: &'b [u8],
    lines: TenantRuns,
}

impl<'b> TenantGroup<'b> {
    /// How many lines.
    pub fn count(&self) -> usize {
        self.lines.count
    }

    /// Bytes of the lines.
    pub fn bytes(&self) -> usize {
        self.lines.bytes
    }

    /// The lines, in request order, as runs of lines adjacent in the batch: one slice when the
    /// tenant's lines are not interleaved with another's or a rejected item's.
    pub fn runs(&self) -> impl Iterator<Item = &'b [u8]> + Clone + '_ {
        let all = self.all;
        self.lines.runs.iter().map(move |run| {
            all.get(run.range())
                .expect("a line's span is a range of its batch's lines")
        })
    }

    /// Appends the lines to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for run in self.runs() {
            out.extend_from_slice(run);
        }
    }
}

/// Lines gathered per tenant in one pass over a batch's items, before they borrow the batch
/// as `TenantGroup`s: tenants in order of their first line.
struct Grouping {
    /// Per batch tenant, its index in `groups` (`usize::MAX`: none yet).
    slot_of: Vec<usize>,
    groups: Vec<TenantRuns>,
}

/// One tenant's lines in a `Grouping`, and in the `TenantGroup` it becomes.
#[derive(Debug)]
struct TenantRuns {
    /// The tenant's index among the batch's.
    tenant: usize,
    runs: Vec<Span>,
    count: usize,
    bytes: usize,
}

impl Grouping {
    fn new(tenants: usize) -> Self {
        Grouping {
            slot_of: vec![usize::MAX; tenants],
            groups: Vec::new(),
        }
    }

    #[inline(always)]
    fn add(&mut self, tenant: usize, line: Span) {
        let slot = &mut self.slot_of[tenant];
        if *slot == usize::MAX {
            *slot = self.groups.len();
            self.groups.push(TenantRuns {
                tenant,
                runs: Vec::new(),
                count: 0,
                bytes: 0,
            });
        }
        let group = &mut self.groups[*slot];
        match group.runs.last_mut() {
            Some(run) if run.end == line.start => run.end = line.end,
            _ => group.runs.push(line),
        }
        group.count += 1;
        group.bytes += line.range().len();
    }

    fn borrow(self, batch: &Batch) -> Vec<TenantGroup<'_>> {
        self.groups
            .into_iter()
            .map(|lines| TenantGroup {
                tenant: batch.tenant(lines.tenant),
                all: &batch.buf.lines,
                lines,
            })
            .collect()
    }
}

/// An accepted item `Batch::reject_with` hands to its judge. Its tenant's id and its line
/// are sliced only when asked for: a judge that knows the item's shape needs neither.
pub struct Judged<'b> {
    batch: &'b Batch,
    item: &'b Item,
    /// The index of its tenant among the batch's (`Batch::tenant`).
    pub tenant_index: usize,
}

impl<'b> Judged<'b> {
    pub fn tenant(&self) -> &'b str {
        self.batch.tenant(self.tenant_index)
    }

    pub fn line(&self) -> &'b [u8] {
        self.batch.line(self.item)
    }

    /// The line's `schema::Shape`, or `NO_SHAPE`.
    pub fn shape(&self) -> u64 {
        self.item.shape
    }
}

/// The identity of a valid item, which decides its group.
pub struct Identity<'s> {
    pub tenant: &'s str,
    pub device: &'s str,
    pub site: &'s str,
    pub token: &'s str,
}

const NO_GROUP: u32 = u32::MAX;

/// Rejected items a batch makes room for at its first: a sixth of a full batch.
const REJECTED_ROOM: usize = 16;

/// The detail of an item its tenant's buffer (or the write-ahead log) had no room for.
pub const BUFFER_FULL_DETAIL: &str = "the tenant's ingest buffer is full; retry later";

/// Parsed, validated and encoded messages of one request.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// What a dropped batch hands to the next one (`Drop` below).
    buf: Buffers,
    /// Per item, its 1-based line number in a line-protocol body (empty for JSON bodies).
    line_numbers: Vec<u32>,
    /// Written with a tenant key: its groups carry no device token (`admission` checks the
    /// device is active, not a token).
    tenant_key: bool,
    resolved: bool,
    appended: bool,
    admitted: bool,
    /// When the request arrived (ns since the epoch).
    receive_ns: i64,
}

/// A batch's buffers. A dropped batch's, emptied, are kept for the next batch made on the
/// same thread: a request's batch otherwise costs an allocation and a free per buffer (the
/// lines' as large as its body), and fresh memory to fault in and pull into the cache.
#[derive(Debug, Clone, Default)]
struct Buffers {
    items: Vec<Item>,
    /// Ids of groups and device ids of rejected items, back to back.
    strings: String,
    lines: Vec<u8>,
    groups: Vec<Group>,
    /// Distinct tenants of the groups, in order of first appearance.
    tenants: Vec<StrSpan>,
    /// `tenant_hash` of each of `tenants`: most tenants are told apart without a memcmp call.
    tenant_hashes: Vec<u64>,
    /// By the top bits of a tenant's hash, 1 + the index in `tenants` of the last tenant found
    /// there (0: none): a new group's tenant is mostly found at once, not by a scan of the
    /// tenants whose length varies at random.
    recent_tenants: [u8; RECENT_TENANTS],
    /// Open-addressing index of `groups` by identity hash (`NO_GROUP` = free slot).
    group_index: Vec<u32>,
    /// `(item index, detail)` of the items rejected with a detail of their own (rare).
    details: Vec<(u32, StrSpan)>,
    /// `(item index, tenant)` of items rejected before they had a group, whose message named a
    /// valid tenant (for `rejections`).
    rejected_tenants: Vec<(u32, StrSpan)>,
}

/// Slots of `Buffers::recent_tenants`: few tenants of a batch share one.
const RECENT_TENANTS: usize = 32;

/// Line bytes a kept batch may have room for: a rare huge body's buffers are given back.
const MAX_SPARE_LINES: usize = 1 << 20;

thread_local! {
    /// One set: a thread mostly makes a batch, finishes it, then makes the next.
    static SPARE: std::cell::Cell<Option<Buffers>> = const { std::cell::Cell::new(None) };
}

impl Buffers {
    /// This thread's kept buffers, or new ones, with room for `items` and `line_bytes`.
    fn take(items: usize, line_bytes: usize) -> Buffers {
        let mut b: Buffers = SPARE
            .try_with(std::cell::Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default();
        b.items.reserve(items);
        b.strings.reserve(items * 48);
        b.lines.reserve(line_bytes);
        b.groups.reserve(items);
        b.tenants.reserve(items.min(16));
        b.tenant_hashes.reserve(items.min(16));
        b.group_index
            .resize((items * 2).next_power_of_two().max(4), NO_GROUP);
        b
    }

    /// Emptied, kept for this thread's next batch.
    fn keep(mut self) {
        if self.lines.capacity() == 0 || self.lines.capacity() > MAX_SPARE_LINES {
            return;
        }
        self.items.clear();
        self.strings.clear();
        self.lines.clear();
        self.groups.clear();
        self.tenants.clear();
        self.tenant_hashes.clear();
        self.recent_tenants = [0; RECENT_TENANTS];
        self.group_index.clear();
        self.details.clear();
        self.rejected_tenants.clear();
        // Gone at the thread's exit: the buffers are freed with the batch instead.
        let _ = SPARE.try_with(|s| s.set(Some(self)));
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        std::mem::take(&mut self.buf).keep();
    }
}

impl Batch {
    pub fn with_capacity(items: usize, line_bytes: usize) -> Self {
        Batch {
            buf: Buffers::take(items, line_bytes),
            line_numbers: Vec::new(),
            tenant_key: false,
            resolved: false,
            appended: false,
            admitted: false,
            receive_ns: 0,
        }
    }

    /// The same batch, received at `receive_ns`.
    pub fn received_at(mut self, receive_ns: i64) -> Self {
        self.receive_ns = receive_ns;
        self
    }

    pub fn receive_ns(&self) -> i64 {
        self.receive_ns
    }

    /// The same batch, marked as written with a tenant key.
    pub fn by_tenant_key(mut self) -> Self {
        self.tenant_key = true;
        self
    }

    pub fn tenant_key(&self) -> bool {
        self.tenant_key
    }

    /// Numbers the item pushed next: its line in a line-protocol body.
    pub fn number_next(&mut self, line: u32) {
        self.line_numbers.push(line);
    }

    /// Per item, its 1-based line number (line-protocol bodies; empty otherwise).
    pub fn line_numbers(&self) -> &[u32] {
        &self.line_numbers
    }

    /// `push_rejected` with a detail of the item's own, as `details` returns it, and the
    /// valid tenant its message named, if any.
    pub fn push_rejected_with(
        &mut self,
        reason: Reason,
        tenant: Option<&str>,
        device: Option<&str>,
        detail: &str,
    ) {
        self.push_rejected_writing(reason, tenant, device, |out| out.push_str(detail));
    }

    /// `push_rejected_with`, the detail written by `write_detail` straight into the batch's
    /// strings: a detail built for one rejected item needs no string of its own.
    pub fn push_rejected_writing(
        &mut self,
        reason: Reason,
        tenant: Option<&str>,
        device: Option<&str>,
        write_detail: impl FnOnce(&mut String),
    ) {
        let index = self.buf.items.len() as u32;
        if self.buf.details.is_empty() {
            self.make_rejected_room();
        }
        self.push_rejected(reason, device);
        let start = self.buf.strings.len() as u32;
        write_detail(&mut self.buf.strings);
        let span = StrSpan(Span {
            start,
            end: self.buf.strings.len() as u32,
        });
        self.buf.details.push((index, span));
        if let Some(tenant) = tenant {
            let span = self.push_str(tenant);
            self.buf.rejected_tenants.push((index, span));
        }
    }

    /// Room for the details and tenants of rejected items at the first of them: a batch with
    /// one mostly has several, which then cost one allocation each list, not three of a
    /// growing `Vec`. Out of line: the parser's hot path inlines its caller.
    #[cold]
    #[inline(never)]
    fn make_rejected_room(&mut self) {
        self.buf.details.reserve(REJECTED_ROOM);
        self.buf.rejected_tenants.reserve(REJECTED_ROOM);
    }

    fn push_str(&mut self, s: &str) -> StrSpan {
        let start = self.buf.strings.len() as u32;
        // `push_bytes` copies ids inline rather than through a libc `memcpy` call.
        // SAFETY: a whole `str` appended keeps the string UTF-8.
        push_bytes(unsafe { self.buf.strings.as_mut_vec() }, s.as_bytes());
        StrSpan(Span {
            start,
            end: self.buf.strings.len() as u32,
        })
    }

    fn str_at(&self, span: StrSpan) -> &str {
        span.of(&self.buf.strings)
    }

    /// The bytes of a span, for comparisons.
    fn bytes_at(&self, span: StrSpan) -> &[u8] {
        span.bytes_of(&self.buf.strings)
    }

    /// Records an item that failed validation.
    pub fn push_rejected(&mut self, reason: Reason, device: Option<&str>) {
        let device = device.map(|d| self.push_str(d));
        self.buf.items.push(Item {
            reason: Some(reason),
            device,
            line: Span::default(),
            group: NO_GROUP,
            tenant: NO_GROUP,
            shape: NO_SHAPE,
        });
    }

    /// A batch of accepted `(tenant, line)` items of one device, for tests of what takes lines.
    #[cfg(test)]
    pub(crate) fn of_lines(items: &[(&str, &str)]) -> Batch {
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

    /// Records a valid item; `encode` appends its line to the given buffer.
    pub fn push_accepted(&mut self, id: &Identity<'_>, encode: impl FnOnce(&mut Vec<u8>)) {
        let at = self.find_group(id);
        self.push_shaped(id, at, (true, true), NO_SHAPE, encode);
    }

    /// `push_accepted` of an identity `find_group` just looked up, with `escapes` (device,
    /// site) as `checked_id` gave them, and the line's `schema::Shape`, which lets
    /// `FieldTypes` skip reading the line back when it has seen that shape.
    pub fn push_shaped(
        &mut self,
        id: &Identity<'_>,
        at: GroupSlot,
        escapes: (bool, bool),
        shape: u64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.buf.lines.len() as u32;
        encode(&mut self.buf.lines);
        let line = Span {
            start,
            end: self.buf.lines.len() as u32,
        };
        let group = match at.found {
            Some(g) => {
                self.buf.groups[g as usize].count += 1;
                g
            }
            None => self.insert_group(id, at, escapes),
        };
        let grp = &self.buf.groups[group as usize];
        self.buf.items.push(Item {
            reason: None,
            device: Some(grp.device),
            line,
            group,
            tenant: grp.tenant_index,
            shape,
        });
    }

    /// The group of an identity, if an earlier item has it, and where a new one would go.
    pub fn find_group(&mut self, id: &Identity<'_>) -> GroupSlot {
        if self.buf.groups.len() * 2 >= self.buf.group_index.len() {
            self.grow_index();
        }
        let mask = self.buf.group_index.len() - 1;
        let tenant_hash = tenant_hash(id.tenant);
        let mut slot = identity_hash(tenant_hash, id) as usize & mask;
        loop {
            let g = self.buf.group_index[slot];
            if g == NO_GROUP {
                break;
            }
            if self.is_group(g, id) {
                return GroupSlot {
                    slot,
                    tenant_hash,
                    found: Some(g),
                };
            }
            slot = (slot + 1) & mask;
        }
        GroupSlot {
            slot,
            tenant_hash,
            found: None,
        }
    }

    /// `find_group`, trying first the group of `hint` (an earlier `find_group`'s answer):
    /// consecutive items mostly share an identity, and a compare costs less than a hash.
    pub fn find_group_after(&mut self, hint: Option<GroupSlot>, id: &Identity<'_>) -> GroupSlot {
        match hint {
            Some(h) if h.found.is_some_and(|g| self.is_group(g, id)) => h,
            _ => self.find_group(id),
        }
    }

    #[inline(always)]
    fn is_group(&self, g: u32, id: &Identity<'_>) -> bool {
        let grp = &self.buf.groups[g as usize];
        words::same_bytes(self.bytes_at(grp.tenant), id.tenant.as_bytes())
            && words::same_bytes(self.bytes_at(grp.device), id.device.as_bytes())
            && words::same_bytes(self.bytes_at(grp.site), id.site.as_bytes())
            && words::same_bytes(self.bytes_at(grp.token), id.token.as_bytes())
    }

    /// The `(device, site)` escapes the group's first item was pushed with.
    pub fn group_escapes(&self, group: u32) -> (bool, bool) {
        self.buf.groups[group as usize].escapes
    }

    fn insert_group(&mut self, id: &Identity<'_>, at: GroupSlot, escapes: (bool, bool)) -> u32 {
        let tenant_index = self.tenant_index(id.tenant, at.tenant_hash);
        let tenant = self.buf.tenants[tenant_index as usize];
        let group = Group {
            tenant,
            device: self.push_str(id.device),
            site: self.push_str(id.site),
            token: self.push_str(id.token),
            count: 1,
            tenant_index,
            escapes,
        };
        let g = self.buf.groups.len() as u32;
        self.buf.groups.push(group);
        self.buf.group_index[at.slot] = g;
        g
    }

    /// The index of `tenant` (whose `tenant_hash` is `hash`) among the batch's tenants; a new
    /// one is added.
    fn tenant_index(&mut self, tenant: &str, hash: u64) -> u32 {
        // The hash's top 5 bits: `RECENT_TENANTS` slots.
        let slot = (hash >> 59) as usize;
        if let Some(i) = usize::from(self.buf.recent_tenants[slot]).checked_sub(1) {
            if self.is_tenant(i, tenant, hash) {
                return i as u32;
            }
        }
        let i = self.scan_tenants(tenant, hash);
        // Indexes past a byte's range are left to the scan.
        if let Ok(recent) = u8::try_from(i + 1) {
            self.buf.recent_tenants[slot] = recent;
        }
        i
    }

    /// `tenant_index` by a scan of the tenants.
    fn scan_tenants(&mut self, tenant: &str, hash: u64) -> u32 {
        let known = (0..self.buf.tenants.len()).position(|i| self.is_tenant(i, tenant, hash));
        if let Some(i) = known {
            return i as u32;
        }
        let span = self.push_str(tenant);
        self.buf.tenants.push(span);
        self.buf.tenant_hashes.push(hash);
        (self.buf.tenants.len() - 1) as u32
    }

    /// Whether the batch's tenant `i` is `tenant`, whose `tenant_hash` is `hash`: most
    /// tenants are told apart by the hash, without a memcmp call.
    #[inline(always)]
    fn is_tenant(&self, i: usize, tenant: &str, hash: u64) -> bool {
        self.buf.tenant_hashes[i] == hash
            && words::same_bytes(self.bytes_at(self.buf.tenants[i]), tenant.as_bytes())
    }

    fn grow_index(&mut self) {
        let size = (self.buf.group_index.len() * 2).max(4);
        self.buf.group_index = vec![NO_GROUP; size];
        let mask = size - 1;
        for (g, grp) in self.buf.groups.iter().enumerate() {
            let id = Identity {
                tenant: self.str_at(grp.tenant),
                device: self.str_at(grp.device),
                site: self.str_at(grp.site),
                token: self.str_at(grp.token),
            };
            let mut slot = identity_hash(tenant_hash(id.tenant), &id) as usize & mask;
            while self.buf.group_index[slot] != NO_GROUP {
                slot = (slot + 1) & mask;
            }
            self.buf.group_index[slot] = g as u32;
        }
    }

    pub fn len(&self) -> usize {
        self.buf.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.items.is_empty()
    }

    pub fn line_capacity(&self) -> usize {
        self.buf.lines.capacity()
    }

    /// Distinct identities of valid items, in order of first appearance, with their item count.
    pub fn groups(&self) -> impl Iterator<Item = GroupKey<'_>> {
        self.buf.groups.iter().map(|g| {
            (
                self.str_at(g.tenant),
                self.str_at(g.device),
                self.str_at(g.site),
                self.str_at(g.token),
                g.count as usize,
            )
        })
    }

    /// Applies one `(allowed, reason code)` per group; all or nothing.
    pub fn resolve<S: AsRef<str>>(
        &mut self,
        verdicts: &[(i64, Option<S>)],
    ) -> Result<(), UsageError> {
        self.check_resolvable(verdicts.len())?;
        let reasons = verdicts
            .iter()
            .map(|(_, r)| {
                r.as_ref()
                    .map(|r| Reason::from_code(r.as_ref()))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut checked = Vec::with_capacity(verdicts.len());
        for (group, ((&(allowed, _), reason), g)) in verdicts
            .iter()
            .zip(reasons)
            .zip(&self.buf.groups)
            .enumerate()
        {
            if allowed < 0 {
                return Err(UsageError::NegativeAllowed { group });
            }
            if reason.is_none() && (allowed as u64) < u64::from(g.count) {
                return Err(UsageError::MissingReason { group });
            }
            checked.push((allowed as usize, reason));
        }
        self.apply(&checked);
        Ok(())
    }

    /// `resolve` with reasons already parsed.
    pub fn resolve_reasons(
        &mut self,
        verdicts: &[(usize, Option<Reason>)],
    ) -> Result<(), UsageError> {
        self.check_resolvable(verdicts.len())?;
        for (group, (&(allowed, reason), g)) in verdicts.iter().zip(&self.buf.groups).enumerate() {
            if reason.is_none() && (allowed as u64) < u64::from(g.count) {
                return Err(UsageError::MissingReason { group });
            }
        }
        self.apply(verdicts);
        Ok(())
    }

    /// `resolve_reasons` with, per group, the detail of its rejected items (admission's).
    pub fn resolve_explained(
        &mut self,
        verdicts: &[(usize, Option<Reason>)],
        details: &[Option<&str>],
    ) -> Result<(), UsageError> {
        self.resolve_reasons(verdicts)?;
        let spans: Vec<Option<StrSpan>> = details
            .iter()
            .map(|d| d.map(|d| self.push_str(d)))
            .collect();
        for (index, item) in self.buf.items.iter().enumerate() {
            if item.reason.is_some() && item.group != NO_GROUP {
                if let Some(span) = spans.get(item.group as usize).copied().flatten() {
                    self.buf.details.push((index as u32, span));
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, verdicts: &[(usize, Option<Reason>)]) {
        self.resolved = true;
        // A group without a reason allows all its items (`resolve*` checked it), so a batch
        // whose groups have none, the common case, has nothing to mark.
        if verdicts.iter().all(|(_, reason)| reason.is_none()) {
            return;
        }
        let mut seen = vec![0usize; self.buf.groups.len()];
        for item in &mut self.buf.items {
            if item.group == NO_GROUP {
                continue;
            }
            let g = item.group as usize;
            if seen[g] >= verdicts[g].0 {
                item.reason = verdicts[g].1;
            }
            seen[g] += 1;
        }
    }

    fn check_resolvable(&self, verdicts: usize) -> Result<(), UsageError> {
        if self.resolved {
            return Err(UsageError::AlreadyResolved);
        }
        if self.appended {
            return Err(UsageError::AlreadyAppended);
        }
        if self.admitted {
            return Err(UsageError::AlreadyAdmitted);
        }
        if verdicts != self.buf.groups.len() {
            return Err(UsageError::VerdictCount {
                expected: self.buf.groups.len(),
                got: verdicts,
            });
        }
        Ok(())
    }

    pub fn reasons(&self) -> impl Iterator<Item = Option<Reason>> + '_ {
        self.buf.items.iter().map(|i| i.reason)
    }

    /// Rejected items per reason, in `Reason::ALL` order, zero counts omitted.
    pub fn reason_counts(&self) -> Vec<(Reason, usize)> {
        let mut counts = [0usize; Reason::ALL.len()];
        for item in &self.buf.items {
            if let Some(r) = item.reason {
                counts[r as usize] += 1;
            }
        }
        Reason::ALL
            .into_iter()
            .zip(counts)
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The accepted lines per tenant, tenants in order of first appearance among accepted
    /// items: one pass over the items, the lines borrowed from the batch.
    pub fn tenant_groups(&self) -> Vec<TenantGroup<'_>> {
        let mut grouping = Grouping::new(self.buf.tenants.len());
        for item in self.buf.items.iter().filter(|i| i.reason.is_none()) {
            grouping.add(item.tenant as usize, item.line);
        }
        grouping.borrow(self)
    }

    /// `tenant_groups` with each tenant's lines copied into one buffer (tests compare them).
    #[cfg(test)]
    pub(crate) fn tenant_lines(&self) -> Vec<(&str, Vec<u8>, usize)> {
        self.tenant_groups()
            .into_iter()
            .map(|g| {
                let mut lines = Vec::with_capacity(g.bytes());
                g.write_to(&mut lines);
                (g.tenant, lines, g.count())
            })
            .collect()
    }

    /// Per tenant of the valid items, in order of first appearance: `(tenant, accepted,
    /// refused)`, refused counting items rejected after validation (items that failed it have
    /// no tenant).
    pub fn tenant_counts(&self) -> Vec<(&str, usize, usize)> {
        let mut out: Vec<(&str, usize, usize)> = self
            .buf
            .tenants
            .iter()
            .map(|&t| (self.str_at(t), 0, 0))
            .collect();
        for item in &self.buf.items {
            if item.group == NO_GROUP {
                continue;
            }
            let counts = &mut out[item.tenant as usize];
            if item.reason.is_some() {
                counts.2 += 1;
            } else {
                counts.1 += 1;
            }
        }
        out
    }

    /// Per group with items rejected for `reason`: `(tenant, device, how many)`, groups in
    /// order of first appearance.
    pub fn refusals(&self, reason: Reason) -> Vec<(&str, &str, usize)> {
        let mut counts = vec![0usize; self.buf.groups.len()];
        for item in &self.buf.items {
            if item.reason == Some(reason) && item.group != NO_GROUP {
                counts[item.group as usize] += 1;
            }
        }
        self.buf
            .groups
            .iter()
            .zip(counts)
            .filter(|&(_, n)| n > 0)
            .map(|(g, n)| (self.str_at(g.tenant), self.str_at(g.device), n))
            .collect()
    }

    /// Per group with an accepted item, `(tenant, device, line)` of its last one.
    pub fn last_accepted(&self) -> impl Iterator<Item = (&str, &str, &[u8])> {
        let mut seen = vec![false; self.buf.groups.len()];
        self.buf.items.iter().rev().filter_map(move |item| {
            if item.reason.is_some() || std::mem::replace(&mut seen[item.group as usize], true) {
                return None;
            }
            let g = &self.buf.groups[item.group as usize];
            Some((
                self.str_at(g.tenant),
                self.str_at(g.device),
                self.line(item),
            ))
        })
    }

    fn accepted(&self) -> impl Iterator<Item = (&Item, &[u8])> {
        self.buf
            .items
            .iter()
            .filter(|i| i.reason.is_none())
            .map(|i| (i, self.line(i)))
    }

    /// Accepted items' lines in request order, each with its tenant's index.
    pub fn accepted_lines(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.accepted()
            .map(|(item, line)| (item.tenant as usize, line))
    }

    /// Accepted items' `(tenant index, line, shape)` in request order (`fields.rs` reads
    /// them).
    pub fn accepted_shapes(&self) -> impl Iterator<Item = (usize, &[u8], u64)> {
        self.accepted().map(|(item, line)| {
            let tenant = item.tenant as usize;
            (tenant, line, item.shape)
        })
    }

    pub fn tenant_count(&self) -> usize {
        self.buf.tenants.len()
    }

    pub fn tenant(&self, index: usize) -> &str {
        let span = self
            .buf
            .tenants
            .get(index)
            .expect("a tenant index comes from this batch");
        self.str_at(*span)
    }

    fn line(&self, item: &Item) -> &[u8] {
        self.buf
            .lines
            .get(item.line.range())
            .expect("an item's span is a range of this batch's lines")
    }

    /// `append_named` without the tenant's id (tests).
    #[cfg(test)]
    pub(crate) fn append_with(
        &mut self,
        mut store: impl FnMut(usize, &[u8]) -> bool,
    ) -> Result<(), UsageError> {
        self.append_named(|t, _, line| store(t, line))
    }

    /// Hands each still-accepted item's `(tenant index, tenant, line)` to `store`, in request
    /// order; an item `store` refuses becomes `BUFFER_FULL`. Only once per batch.
    pub fn append_named(
        &mut self,
        mut store: impl FnMut(usize, &str, &[u8]) -> bool,
    ) -> Result<(), UsageError> {
        self.append_spans(|t, tenant, _, line| store(t, tenant, line))
    }

    /// Hands each still-accepted item's `(tenant index, tenant, line length)` to `take`, in
    /// request order (an item it refuses becomes `BUFFER_FULL`), and groups the lines taken
    /// as `tenant_groups` would afterwards, in the same pass. Only once per batch, as
    /// `append_named`.
    pub fn take_groups(
        &mut self,
        mut take: impl FnMut(usize, &str, usize) -> bool,
    ) -> Result<Vec<TenantGroup<'_>>, UsageError> {
        let mut grouping = Grouping::new(self.buf.tenants.len());
        self.append_spans(|t, tenant, span, line| {
            let taken = take(t, tenant, line.len());
            if taken {
                grouping.add(t, span);
            }
            taken
        })?;
        Ok(grouping.borrow(self))
    }

    /// `append_named`, each line's span handed along.
    fn append_spans(
        &mut self,
        mut store: impl FnMut(usize, &str, Span, &[u8]) -> bool,
    ) -> Result<(), UsageError> {
        if self.appended {
            return Err(UsageError::AlreadyAppended);
        }
        self.appended = true;
        let mut full = None;
        for (index, item) in self.buf.items.iter_mut().enumerate() {
            if item.reason.is_some() {
                continue;
            }
            let tenant = item.tenant as usize;
            let line = self
                .buf
                .lines
                .get(item.line.range())
                .expect("an item's span is a range of this batch's lines");
            let name = self.buf.tenants[tenant].of(&self.buf.strings);
            if !store(tenant, name, item.line, line) {
                item.reason = Some(Reason::BufferFull);
                full.get_or_insert_with(Vec::new).push(index as u32);
            }
        }
        if let Some(full) = full {
            self.explain_all(&full, BUFFER_FULL_DETAIL);
        }
        Ok(())
    }

    /// Gives the items at `indexes` the one detail `detail`.
    fn explain_all(&mut self, indexes: &[u32], detail: &str) {
        let span = self.push_str(detail);
        self.buf.details.extend(indexes.iter().map(|&i| (i, span)));
    }

    /// For lines handed elsewhere instead of appended (NATS mode publishes `tenant_lines`):
    /// every still-accepted item of one of `tenants` becomes `reason`; returns how many. Like
    /// `append_named`, only once per batch, and the batch cannot be appended afterwards.
    pub fn withdraw<S: AsRef<str>>(
        &mut self,
        tenants: &[S],
        reason: Reason,
        detail: &str,
    ) -> Result<usize, UsageError> {
        if self.appended {
            return Err(UsageError::AlreadyAppended);
        }
        self.appended = true;
        let hit: Vec<bool> = self
            .buf
            .tenants
            .iter()
            .map(|&t| tenants.iter().any(|w| w.as_ref() == self.str_at(t)))
            .collect();
        let mut withdrawn = Vec::new();
        for (index, item) in self.buf.items.iter_mut().enumerate() {
            if item.reason.is_none() && hit[item.tenant as usize] {
                item.reason = Some(reason);
                withdrawn.push(index as u32);
            }
        }
        if !withdrawn.is_empty() {
            self.explain_all(&withdrawn, detail);
        }
        Ok(withdrawn.len())
    }

    /// Hands each still-accepted item to `judge`, in request order; an item it returns a
    /// detail for becomes `INVALID_METRICS` with that detail. Before `append`, only once per
    /// batch (`fields.rs` is the judge).
    pub fn reject_with(
        &mut self,
        mut judge: impl FnMut(Judged<'_>) -> Option<String>,
    ) -> Result<(), UsageError> {
        if self.appended {
            return Err(UsageError::AlreadyAppended);
        }
        if self.admitted {
            return Err(UsageError::AlreadyAdmitted);
        }
        self.admitted = true;
        let mut rejected = Vec::new();
        for (index, item) in self.buf.items.iter().enumerate() {
            if item.reason.is_some() {
                continue;
            }
            let judged = Judged {
                batch: self,
                item,
                tenant_index: item.tenant as usize,
            };
            if let Some(detail) = judge(judged) {
                rejected.push((index, detail));
            }
        }
        for (index, detail) in rejected {
            self.buf.items[index].reason = Some(Reason::InvalidMetrics);
            let span = self.push_str(&detail);
            self.buf.details.push((index as u32, span));
        }
        Ok(())
    }

    /// `(item index, detail)` of the items rejected with a detail of their own, in item order.
    pub fn details(&self) -> impl Iterator<Item = (usize, &str)> {
        self.detail_spans()
            .into_iter()
            .enumerate()
            .filter_map(|(i, span)| span.map(|s| (i, self.str_at(s))))
    }

    /// Per item, the span of its detail: built when asked, so that the details of rejected
    /// items cost nothing to the others.
    fn detail_spans(&self) -> Vec<Option<StrSpan>> {
        let mut spans = vec![
            None;
            if self.buf.details.is_empty() {
                0
            } else {
                self.buf.items.len()
            }
        ];
        for &(i, span) in &self.buf.details {
            spans[i as usize] = Some(span);
        }
        spans
    }

    /// `(reason, tenant, device, detail)` of each rejected item, in item order; the tenant is
    /// empty and the device `None` when the message named no valid one.
    pub fn rejections(&self) -> Vec<(Reason, &str, Option<&str>, &str)> {
        let spans = self.detail_spans();
        let tenants: std::collections::HashMap<u32, StrSpan> =
            self.buf.rejected_tenants.iter().copied().collect();
        self.buf
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let reason = item.reason?;
                let tenant = match self.buf.groups.get(item.group as usize) {
                    Some(g) => Some(g.tenant),
                    None => tenants.get(&(i as u32)).copied(),
                };
                Some((
                    reason,
                    tenant.map_or("", |t| self.str_at(t)),
                    item.device.map(|d| self.str_at(d)),
                    spans
                        .get(i)
                        .copied()
                        .flatten()
                        .map_or("", |s| self.str_at(s)),
                ))
            })
            .collect()
    }

    /// `(accepted, rejected, body)` of the batch endpoint's JSON response.
    pub fn response_json(&self) -> (usize, usize, Vec<u8>) {
        let accepted = self.buf.items.iter().filter(|i| i.reason.is_none()).count();
        let rejected = self.buf.items.len() - accepted;
        let mut out = Vec::with_capacity(48 + self.buf.items.len() * 96);
        let spans = self.detail_spans();
        out.extend_from_slice(b"{\"accepted\":");
        push_uint(&mut out, accepted as u64);
        out.extend_from_slice(b",\"rejected\":");
        push_uint(&mut out, rejected as u64);
        out.extend_from_slice(b",\"results\":[");
        for (index, item) in self.buf.items.iter().enumerate() {
            push_result_head(&mut out, index, item.reason);
            if let Some(&Some(detail)) = spans.get(index) {
                push_json_member(&mut out, b",\"detail\":", self.str_at(detail));
            }
            if let Some(d) = item.device {
                push_json_member(&mut out, b",\"device_id\":", self.str_at(d));
            }
        }
        // The last item's `}` (each item's is written by the next one's head).
        if !self.buf.items.is_empty() {
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        (accepted, rejected, out)
    }
}

/// `00` to `99`, back to back.
const DIGIT_PAIRS: &[u8; 200] = b"\
    00010203040506070809101112131415161718192021222324252627282930313233343536373839\
    40414243444546474849505152535455565758596061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The start of the response's item `index`, up to its reason: `{"index":N,"status":…`,
/// after the `},` that ends the item before. One reservation for the pieces, written inline:
/// a checked `extend_from_slice` each cost more than the copies.
#[inline(always)]
fn push_result_head(out: &mut Vec<u8>, index: usize, reason: Option<Reason>) {
    const NEXT: &[u8] = b"},{\"index\":";
    const ACCEPTED: &[u8] = b",\"status\":\"accepted\"";
    const REJECTED: &[u8] = b",\"status\":\"rejected\",\"reason\":\"";
    let code = reason.map_or("", Reason::code).as_bytes();
    // The index's 20 digits at most, the closing quote of a reason.
    let mut room = Room::reserve(out, NEXT.len() + 20 + REJECTED.len() + code.len() + 1);
    room.put(&NEXT[if index == 0 { 2 } else { 0 }..]);
    // A JSON body's batch holds at most 100 messages: two digits from a table, not the
    // word-wide split of `decimal` (about 30 instructions).
    match DIGIT_PAIRS.get(2 * index..2 * index + 2) {
        Some(pair) if index >= 10 => room.put(pair),
        Some(pair) => room.put(&pair[1..]),
        None => room.decimal(index as u64),
    }
    if reason.is_none() {
        room.put(ACCEPTED);
    } else {
        room.put(REJECTED);
        room.put(code);
        room.byte(b'"');
    }
}

/// The identity's slot in `group_index`, from `tenant_hash(id.tenant)`. The token is left
/// out: a device sends one (tokens are long, and foldhash takes a slower path past 16 bytes),
/// and a slot's group is compared in full.
fn identity_hash(tenant_hash: u64, id: &Identity<'_>) -> u64 {
    words::hash(tenant_hash, &[id.device.as_bytes(), id.site.as_bytes()])
}

fn tenant_hash(tenant: &str) -> u64 {
    words::hash(0, &[tenant.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'s>(tenant: &'s str, device: &'s str) -> Identity<'s> {
        Identity {
            tenant,
            device,
            site: "s",
            token: "k",
        }
    }

    fn sample() -> Batch {
        let mut b = Batch::with_capacity(4, 64);
        b.push_accepted(&id("t1", "d1"), |o| o.extend_from_slice(b"a\n"));
        b.push_rejected(Reason::InvalidSchema, Some("bad\"id"));
        b.push_accepted(&id("t2", "d2"), |o| o.extend_from_slice(b"b\n"));
        b.push_accepted(&id("t1", "d1"), |o| o.extend_from_slice(b"c\n"));
        b.push_rejected(Reason::PayloadTooLarge, None);
        b
    }

    #[test]
    fn groups_count_items_in_order_of_first_appearance() {
        let b = sample();
        let groups: Vec<_> = b.groups().collect();
        assert_eq!(
            groups,
            [("t1", "d1", "s", "k", 2), ("t2", "d2", "s", "k", 1)]
        );
    }

    #[test]
    fn refusals_and_last_accepted_follow_the_verdicts() {
        let mut b = sample();
        b.resolve(&[(1, Some("RATE_LIMITED")), (1, None)])
            .expect("valid verdicts");
        assert_eq!(b.refusals(Reason::RateLimited), [("t1", "d1", 1)]);
        assert_eq!(b.refusals(Reason::Unauthorized), []);
        let last: Vec<_> = b.last_accepted().collect();
        assert_eq!(last, [("t2", "d2", &b"b\n"[..]), ("t1", "d1", &b"a\n"[..])]);
    }

    #[test]
    fn digit_pairs_are_the_numbers_below_100() {
        for i in 0..100 {
            assert_eq!(&DIGIT_PAIRS[2 * i..2 * i + 2], format!("{i:02}").as_bytes());
        }
    }

    #[test]
    fn many_groups_survive_index_growth() {
        let mut b = Batch::with_capacity(1, 0);
        let names: Vec<String> = (0..300).map(|i| format!("device-{i}")).collect();
        for n in names.iter().chain(&names) {
            b.push_accepted(&id("t", n), |_| {});
        }
        assert_eq!(b.groups().count(), 300);
        assert!(b.groups().all(|g| g.4 == 2));
    }

    #[test]
    fn resolve_rejects_beyond_allowed_in_request_order() {
        let mut b = sample();
        b.resolve(&[(1, Some("RATE_LIMITED")), (0, Some("UNAUTHORIZED"))])
            .expect("valid verdicts");
        let reasons: Vec<_> = b.reasons().collect();
        assert_eq!(
            reasons,
            [
                None,
                Some(Reason::InvalidSchema),
                Some(Reason::Unauthorized),
                Some(Reason::RateLimited),
                Some(Reason::PayloadTooLarge)
            ]
        );
        assert_eq!(
            b.reason_counts(),
            [
                (Reason::InvalidSchema, 1),
                (Reason::PayloadTooLarge, 1),
                (Reason::Unauthorized, 1),
                (Reason::RateLimited, 1)
            ]
        );
        assert_eq!(
            b.resolve::<&str>(&[(9, None), (9, None)]),
            Err(UsageError::AlreadyResolved)
        );
    }

    #[test]
    fn bad_verdicts_change_nothing() {
        let mut b = sample();
        assert_eq!(
            b.resolve::<&str>(&[(1, None)]),
            Err(UsageError::VerdictCount {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            b.resolve::<&str>(&[(1, None), (1, None)]),
            Err(UsageError::MissingReason { group: 0 })
        );
        assert_eq!(
            b.resolve(&[(2, None), (-1, Some("RATE_LIMITED"))]),
            Err(UsageError::NegativeAllowed { group: 1 })
        );
        assert_eq!(
            b.resolve(&[(-1, None), (1, Some("rate_limited"))]),
            Err(UsageError::UnknownReason("rate_limited".into()))
        );
        assert!(b.reasons().filter(Option::is_none).count() == 3);
        b.resolve(&[(2, None), (5, Some("RATE_LIMITED"))])
            .expect("valid verdicts");
        assert!(b.reasons().filter(Option::is_none).count() == 3);
    }

    #[test]
    fn tenant_lines_follow_accepted_items() {
        let mut b = sample();
        b.resolve(&[(2, None), (0, Some("SITE_MISMATCH"))])
            .expect("valid verdicts");
        let lines = b.tenant_lines();
        assert_eq!(lines, [("t1", b"a\nc\n".to_vec(), 2)]);
    }

    #[test]
    fn tenant_groups_borrow_each_tenants_accepted_lines_in_request_order() {
        let mut b = sample();
        b.push_accepted(&id("t3", "d3"), |o| o.extend_from_slice(b"d\n"));
        b.push_accepted(&id("t1", "d1"), |o| o.extend_from_slice(b"e\n"));
        b.resolve(&[(3, None), (1, None), (0, Some("SITE_MISMATCH"))])
            .expect("valid verdicts");
        let groups: Vec<_> = b
            .tenant_groups()
            .iter()
            .map(|g| (g.tenant, g.runs().collect::<Vec<_>>(), g.bytes(), g.count()))
            .collect();
        // `b` (another tenant's) lies between `a` and `c`, `d` (rejected) between `c` and `e`.
        assert_eq!(
            groups,
            [
                ("t1", vec![&b"a\n"[..], b"c\n", b"e\n"], 6, 3),
                ("t2", vec![&b"b\n"[..]], 2, 1)
            ]
        );
    }

    #[test]
    fn take_groups_merges_adjacent_lines_and_refuses_what_take_refuses() {
        let mut b = Batch::of_lines(&[
            ("t1", "a\n"),
            ("t1", "bb\n"),
            ("t2", "c\n"),
            ("t1", "refused\n"),
            ("t1", "d\n"),
            ("t2", "e\n"),
        ]);
        let mut seen = Vec::new();
        let groups: Vec<_> = b
            .take_groups(|t, tenant, len| {
                seen.push((t, tenant.to_owned(), len));
                len != 8
            })
            .expect("first use")
            .iter()
            .map(|g| (g.tenant, g.runs().collect::<Vec<_>>(), g.bytes(), g.count()))
            .collect();
        assert_eq!(
            groups,
            [
                ("t1", vec![&b"a\nbb\n"[..], b"d\n"], 7, 3),
                ("t2", vec![&b"c\n"[..], b"e\n"], 4, 2)
            ]
        );
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[3], (0, "t1".to_owned(), 8));
        assert_eq!(
            b.reasons().collect::<Vec<_>>(),
            [None, None, None, Some(Reason::BufferFull), None, None]
        );
        assert_eq!(
            b.tenant_lines(),
            [
                ("t1", b"a\nbb\nd\n".to_vec(), 3),
                ("t2", b"c\ne\n".to_vec(), 2)
            ]
        );
        assert!(matches!(
            b.take_groups(|_, _, _| true),
            Err(UsageError::AlreadyAppended)
        ));
    }

    #[test]
    fn response_json_lists_every_item() {
        let (a, r, body) = sample().response_json();
        assert_eq!((a, r), (3, 2));
        assert_eq!(
            String::from_utf8(body).unwrap_or_default(),
            concat!(
                r#"{"accepted":3,"rejected":2,"results":["#,
                r#"{"index":0,"status":"accepted","device_id":"d1"},"#,
                r#"{"index":1,"status":"rejected","reason":"INVALID_SCHEMA","device_id":"bad\"id"},"#,
                r#"{"index":2,"status":"accepted","device_id":"d2"},"#,
                r#"{"index":3,"status":"accepted","device_id":"d1"},"#,
                r#"{"index":4,"status":"rejected","reason":"PAYLOAD_TOO_LARGE"}]}"#
            )
        );
    }

    #[test]
    fn append_marks_refused_items_and_happens_once() {
        let mut b = sample();
        let mut stored = Vec::new();
        b.append_with(|t, line| {
            stored.push((t, line.to_vec()));
            t == 0
        })
        .expect("first append");
        assert_eq!(
            stored,
            [
                (0, b"a\n".to_vec()),
                (1, b"b\n".to_vec()),
                (0, b"c\n".to_vec())
            ]
        );
        assert_eq!(b.reasons().nth(2), Some(Some(Reason::BufferFull)));
        assert_eq!(b.append_with(|_, _| true), Err(UsageError::AlreadyAppended));
        assert_eq!(b.resolve::<&str>(&[]), Err(UsageError::AlreadyAppended));
    }

    #[test]
    fn withdraw_rejects_the_accepted_items_of_the_given_tenants_once() {
        let mut b = sample();
        b.resolve(&[(1, Some("RATE_LIMITED")), (1, None)])
            .expect("valid verdicts");
        assert_eq!(
            b.withdraw(&["t1", "t9"], Reason::Unavailable, "gone"),
            Ok(1)
        );
        assert_eq!(b.details().collect::<Vec<_>>(), [(0, "gone")]);
        let reasons: Vec<_> = b.reasons().collect();
        assert_eq!(
            reasons,
            [
                Some(Reason::Unavailable),
                Some(Reason::InvalidSchema),
                None,
                Some(Reason::RateLimited),
                Some(Reason::PayloadTooLarge)
            ]
        );
        assert_eq!(
            b.withdraw(&["t2"], Reason::Unavailable, "gone"),
            Err(UsageError::AlreadyAppended)
        );
        assert_eq!(b.append_with(|_, _| true), Err(UsageError::AlreadyAppended));
    }
}
