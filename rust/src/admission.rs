//! Admission of a batch's device groups: the auth cache (registry records by tenant and device),
//! the token and site checks, per-device token buckets, and a per-tenant budget of registry
//! lookups for devices the cache does not know. Time is passed in (seconds, monotonic).
//!
//! A request admits its batch once, or twice when devices must be looked up:
//! `admit` either resolves the batch (every group decided from the cache) or returns the keys to
//! look up and leaves the batch unresolved; the caller runs ONE registry query, `install`s what it
//! found, and calls `admit` again, which resolves the batch without asking for more. A key asked
//! for and still not cached then (the query failed, or the entry was evicted before use) is
//! `UNAVAILABLE`: retryable, never a 401 for a device that may exist.

use std::collections::HashSet;
use std::hash::Hash;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::batch::Batch;
use crate::device_key::{DeviceIds, DeviceKey, InlineStr};
use crate::errors::{quoted, short_number, Reason, UsageError};
use crate::words;

/// `(tenant_id, device_id)` of a device to look up.
pub type Key = (String, String);

/// A device's registry record: what admission needs of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub site: String,
    pub token_hash: [u8; 32],
    pub rps: Option<f64>,
    pub burst: Option<u32>,
    pub active: bool,
}

impl Record {
    /// A record from registry values; `rps` must be a positive number.
    pub fn new(
        site: String,
        token_hash: &[u8],
        rps: Option<f64>,
        burst: Option<u32>,
        active: bool,
    ) -> Result<Record, UsageError> {
        let token_hash = token_hash.try_into().map_err(|_| UsageError::BadSetting {
            name: "token_hash",
            rule: "32 bytes (a SHA-256 digest)",
        })?;
        if rps.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(UsageError::BadSetting {
                name: "rps",
                rule: "a positive number",
            });
        }
        Ok(Record {
            site,
            token_hash,
            rps,
            burst,
            active,
        })
    }
}

/// Settings of an `Admission`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long a found device (active or revoked) is cached.
    pub ttl_s: f64,
    /// How long an unknown device is cached, in its own table.
    pub negative_ttl_s: f64,
    /// Bound of the found-device table (buckets live in its entries).
    pub max_entries: usize,
    /// Bound of the unknown-device table and of the per-tenant lookup budgets.
    pub max_negative_entries: usize,
    /// Rate limit of devices without their own.
    pub default_rps: f64,
    pub default_burst: u32,
    /// Registry lookups per second per tenant for uncached devices (also the burst).
    pub lookups_per_s: u32,
}

impl Settings {
    fn check(&self) -> Result<(), UsageError> {
        let non_negative = |name, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(UsageError::BadSetting {
                    name,
                    rule: "a number >= 0",
                })
            }
        };
        let at_least_one = |name, v: u64| {
            if v >= 1 {
                Ok(())
            } else {
                Err(UsageError::BadSetting { name, rule: ">= 1" })
            }
        };
        non_negative("ttl_s", self.ttl_s)?;
        non_negative("negative_ttl_s", self.negative_ttl_s)?;
        at_least_one("max_entries", self.max_entries as u64)?;
        at_least_one("max_negative_entries", self.max_negative_entries as u64)?;
        if !(self.default_rps > 0.0 && self.default_rps.is_finite()) {
            return Err(UsageError::BadSetting {
                name: "default_rps",
                rule: "a positive number",
            });
        }
        at_least_one("lookups_per_s", u64::from(self.lookups_per_s))
    }
}

/// Counters since start (table sizes are `Admission::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Groups decided from the cache without a lookup (found or unknown devices).
    pub hits: u64,
    /// Keys asked for (one lookup each).
    pub misses: u64,
    /// Keys refused a lookup because their tenant's budget was spent: UNAUTHORIZED.
    pub budget_refusals: u64,
    /// Groups decided UNAVAILABLE (a lookup asked for and not installed).
    pub unavailable: u64,
}

/// A batch's admission so far; kept with the batch between the two `admit` calls.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The sequence number from which installs count as this batch's lookup; None until asked.
    asked: Option<u64>,
    /// Per group, `(allowed, reason of the others)` as the batch takes them (a pending group's
    /// is a placeholder until the second call): not a verdict per group to convert afterwards.
    verdicts: Vec<(usize, Option<Reason>)>,
    /// Groups whose device is being looked up, ascending.
    pending: Vec<usize>,
    /// `(group, detail)` of the groups with refused items, the rare case.
    details: Vec<(usize, String)>,
    retry_after: f64,
    done: bool,
}

/// `(allowed, (reason, detail) of the others)` of one group; the detail is built only for
/// groups with refused items.
type Verdict = (usize, Option<(Reason, String)>);

const UNKNOWN_OR_WRONG_TOKEN: &str = "unknown device or wrong provision token";
const NOT_REGISTERED: &str = "the device is not registered for this tenant";
const REVOKED: &str = "the device is revoked";
const REGISTRY_SILENT: &str = "the device registry did not answer; retry later";

/// UNAUTHORIZED for a device without a usable record: its detail names no token, and does not
/// tell a device id from a token (only a tenant key's writes learn the device is unknown).
fn unknown(token: Option<&str>) -> Verdict {
    let detail = if token.is_some() {
        UNKNOWN_OR_WRONG_TOKEN
    } else {
        NOT_REGISTERED
    };
    (0, Some((Reason::Unauthorized, detail.to_owned())))
}

impl Progress {
    /// The longest wait, in seconds, until a rate-limited group's next token; 0.0 when none.
    pub fn retry_after(&self) -> f64 {
        self.retry_after
    }

    /// `group`'s verdict as the batch takes it, its detail kept aside.
    fn split(&mut self, group: usize, (allowed, refused): Verdict) -> (usize, Option<Reason>) {
        let reason = refused.map(|(reason, detail)| {
            self.details.push((group, detail));
            reason
        });
        (allowed, reason)
    }

    /// Per group, the detail of its refused items.
    fn group_details(&self) -> Vec<Option<&str>> {
        let mut details = vec![None; self.verdicts.len()];
        for (group, detail) in &self.details {
            details[*group] = Some(detail.as_str());
        }
        details
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: f64,
}

#[derive(Debug)]
struct Entry {
    /// The record, its `site` moved to `site`.
    record: Record,
    /// The record's site, held in the entry (as `verified`): a warm device's checks read the
    /// entry the lookup found, not two more allocations.
    site: InlineStr<22>,
    /// The last token that matched `record.token_hash`: a warm device costs a constant-time
    /// compare, not a SHA-256.
    verified: Option<InlineStr<38>>,
    /// The device's rate-limit bucket, created by its first admitted message.
    bucket: Option<Bucket>,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    expires: f64,
    /// Insertion order: the oldest are evicted first, and an entry installed after a batch asked
    /// for its key serves that batch even when its TTL is zero.
    seq: u64,
}

/// A bounded map: when full, expired slots go first, else the oldest tenth. Hashed with
/// foldhash, seeded at random per table: SipHash cost ~250 instructions a message (2.4% of the
/// core's whole path), and the random seed still keeps clients from aiming ids at one bucket.
#[derive(Debug)]
struct Table<K, V> {
    map: foldhash::HashMap<K, Slot<V>>,
    max: usize,
}

impl<K: Hash + Eq, V> Table<K, V> {
    fn new(max: usize) -> Self {
        Table {
            map: foldhash::HashMap::default(),
            max,
        }
    }

    /// Insert or replace; returns the replaced value.
    fn insert(&mut self, key: K, slot: Slot<V>, now: f64) -> Option<V> {
        let old = self.map.remove(&key);
        if old.is_none() && self.map.len() >= self.max {
            self.evict(now);
        }
        self.map.insert(key, slot);
        old.map(|s| s.value)
    }

    fn evict(&mut self, now: f64) {
        self.map.retain(|_, s| s.expires > now);
        if self.map.len() < self.max {
            return;
        }
        let n = (self.max / 10).max(1);
        let mut seqs: Vec<u64> = self.map.values().map(|s| s.seq).collect();
        if n >= seqs.len() {
            self.map.clear();
            return;
        }
        let (_, &mut cut, _) = seqs.select_nth_unstable(n);
        self.map.retain(|_, s| s.seq >= cut);
    }
}

/// The auth cache, token buckets and lookup budgets of one gateway process.
#[derive(Debug)]
pub struct Admission {
    settings: Settings,
    /// The part of every device's limit this process enforces: 1/N of rps and burst (burst at
    /// least one message) when N processes share the device's traffic.
    share: f64,
    found: Table<DeviceKey, Entry>,
    unknown: Table<DeviceKey, ()>,
    budgets: Table<Box<str>, Bucket>,
    seq: u64,
    counters: Counters,
}

fn usable<V>(slot: Option<&Slot<V>>, now: f64, asked: Option<u64>) -> bool {
    slot.is_some_and(|s| s.expires > now || asked.is_some_and(|a| s.seq >= a))
}

/// Takes up to `n` tokens at `now`; `(allowed, seconds until the next token)`.
fn take(bucket: &mut Bucket, n: usize, now: f64, rate: f64, cap: f64) -> (usize, f64) {
    let elapsed = now - bucket.last;
    if elapsed > 0.0 {
        bucket.tokens = cap.min(bucket.tokens + elapsed * rate);
        bucket.last = now;
    }
    let allowed = if bucket.tokens >= n as f64 {
        n
    } else {
        // Never negative: tokens only shrink by whole tokens they hold.
        bucket.tokens.floor() as usize
    };
    bucket.tokens -= allowed as f64;
    if allowed == n {
        (n, 0.0)
    } else {
        (allowed, (1.0 - bucket.tokens) / rate)
    }
}

/// The verdict for `count` messages of a cached device, and the wait for its next token when it
/// is RATE_LIMITED (else 0.0).
fn judge(
    settings: &Settings,
    share: f64,
    entry: &mut Entry,
    site: &str,
    token: Option<&str>,
    count: usize,
    now: f64,
) -> (Verdict, f64) {
    if !entry.record.active || token.is_some_and(|t| !token_ok(entry, t)) {
        // Revoked is said only to who proves the device's token (or writes with a tenant key).
        let revoked = !entry.record.active && token.is_none_or(|t| token_ok(entry, t));
        if !revoked {
            return (unknown(token), 0.0);
        }
        return ((0, Some((Reason::Unauthorized, REVOKED.to_owned()))), 0.0);
    }
    if !same_id(site, entry.site.as_str()) {
        let detail = format!(
            "site_id {} is not the device's registered site",
            quoted(site)
        );
        return ((0, Some((Reason::SiteMismatch, detail))), 0.0);
    }
    let rate = entry.record.rps.unwrap_or(settings.default_rps) * share;
    let cap = (f64::from(entry.record.burst.unwrap_or(settings.default_burst)) * share).max(1.0);
    let bucket = entry.bucket.get_or_insert(Bucket {
        tokens: cap,
        last: now,
    });
    let (allowed, wait) = take(bucket, count, now, rate, cap);
    let refused = (allowed < count).then(|| {
        let detail = format!(
            "rate limit exceeded: the device may send {} messages/s with bursts of {}",
            short_number(rate),
            short_number(cap)
        );
        (Reason::RateLimited, detail)
    });
    ((allowed, refused), wait)
}

/// `a == b` in a time that depends on the lengths only, as subtle's `ct_eq` of the slices
/// (which also answers a length mismatch at once), but eight bytes at a time and with one
/// `ct_eq` of the words' differences: the slices' `ct_eq` pays an optimisation barrier per
/// byte, most of a warm device's check. The last word overlaps the others (each byte is in
/// some word): no shorter rest to load, and no iterator state (about 57 instructions a
/// 24-byte token with `chunks_exact`, `zip` and a rest).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (Some(a_last), Some(b_last)) = (words::last(a), words::last(b)) else {
        // Under 8 bytes, zero-padded alike.
        return bool::from((words::load_short(a) ^ words::load_short(b)).ct_eq(&0));
    };
    let mut diff = a_last ^ b_last;
    let mut at = 0;
    while at + 8 < a.len() {
        let (Some(x), Some(y)) = (words::load(a, at), words::load(b, at)) else {
            break;
        };
        // Hidden from the optimiser each time, so that no early exit can be derived from it.
        diff = std::hint::black_box(diff | (x ^ y));
        at += 8;
    }
    bool::from(diff.ct_eq(&0))
}

/// `a == b` for ids, most of them under 17 bytes: compared in words, not by a memcmp call.
fn same_id(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() < 8 && a.len() == b.len() {
        // Zero-padded alike: equal words are equal bytes.
        return words::load_short(a) == words::load_short(b);
    }
    words::same_bytes(a, b)
}

/// Inlined for a warm device's check; the hash is out of line, its frame paid only by a
/// device's first message (and a wrong token).
#[inline(always)]
fn token_ok(entry: &mut Entry, token: &str) -> bool {
    if let Some(v) = &entry.verified {
        if same_secret(v.as_str().as_bytes(), token.as_bytes()) {
            return true;
        }
    }
    token_hashes_ok(entry, token)
}

/// `token_ok` of a token not verified yet: its SHA-256 against the record's.
#[inline(never)]
fn token_hashes_ok(entry: &mut Entry, token: &str) -> bool {
    let digest = Sha256::digest(token.as_bytes());
    if same_secret(digest.as_slice(), &entry.record.token_hash) {
        entry.verified = Some(InlineStr::new(&[token]));
        return true;
    }
    false
}

impl Admission {
    pub fn new(settings: Settings) -> Result<Self, UsageError> {
        settings.check()?;
        Ok(Admission {
            settings,
            share: 1.0,
            found: Table::new(settings.max_entries),
            unknown: Table::new(settings.max_negative_entries),
            budgets: Table::new(settings.max_negative_entries),
            seq: 0,
            counters: Counters::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Decide the batch's groups from the cache and resolve it, returning no keys; or, when
    /// devices must be looked up (the first call only), return their keys and leave the groups
    /// of those devices to the second call.
    pub fn admit(
        &mut self,
        batch: &mut Batch,
        progress: &mut Progress,
        now: f64,
    ) -> Result<Vec<Key>, UsageError> {
        if progress.done {
            return Err(UsageError::AlreadyResolved);
        }
        let keys = if progress.asked.is_none() {
            self.first_pass(batch, progress, now)
        } else {
            self.second_pass(batch, progress, now);
            Vec::new()
        };
        if !keys.is_empty() {
            progress.asked = Some(self.seq + 1);
            return Ok(keys);
        }
        // Details are gathered only when a group has refused items.
        if progress.details.is_empty() {
            batch.resolve_reasons(&progress.verdicts)?;
        } else {
            batch.resolve_explained(&progress.verdicts, &progress.group_details())?;
        }
        progress.done = true;
        Ok(keys)
    }

    /// Decides the groups whose device is cached; picks the keys to look up for the others,
    /// within their tenants' budgets.
    fn first_pass(&mut self, batch: &Batch, progress: &mut Progress, now: f64) -> Vec<Key> {
        let mut keys: Vec<Key> = Vec::new();
        let mut refused: Vec<(&str, &str)> = Vec::new();
        // Collected, not pushed: one allocation of the group count.
        let decide = |(group, (tenant, device, site, token, count))| {
            let token = (!batch.tenant_key()).then_some(token);
            let verdict = match self.cached(tenant, device, site, token, count, now, None) {
                Some((verdict, wait)) => {
                    self.counters.hits += 1;
                    progress.retry_after = progress.retry_after.max(wait);
                    Some(verdict)
                }
                None if keys.iter().any(|(t, d)| t == tenant && d == device) => None,
                None if refused.contains(&(tenant, device)) => Some(self.lookups_spent()),
                None if self.take_budget(tenant, now) => {
                    self.counters.misses += 1;
                    keys.push((tenant.to_owned(), device.to_owned()));
                    None
                }
                None => {
                    self.counters.budget_refusals += 1;
                    refused.push((tenant, device));
                    Some(self.lookups_spent())
                }
            };
            match verdict {
                Some(verdict) => progress.split(group, verdict),
                None => {
                    progress.pending.push(group);
                    (0, None)
                }
            }
        };
        progress.verdicts = batch.groups().enumerate().map(decide).collect();
        keys
    }

    /// Decides the groups left by the first pass; a device still not cached is UNAVAILABLE.
    fn second_pass(&mut self, batch: &Batch, progress: &mut Progress, now: f64) {
        let pending = std::mem::take(&mut progress.pending);
        let mut left = pending.iter().copied().peekable();
        for (group, (tenant, device, site, token, count)) in batch.groups().enumerate() {
            if left.next_if_eq(&group).is_none() {
                continue;
            }
            let token = (!batch.tenant_key()).then_some(token);
            let decided = self.cached(tenant, device, site, token, count, now, progress.asked);
            let (decided, wait) = decided.unwrap_or_else(|| {
                self.counters.unavailable += 1;
                let detail = REGISTRY_SILENT.to_owned();
                ((0, Some((Reason::Unavailable, detail))), 0.0)
            });
            progress.verdicts[group] = progress.split(group, decided);
            progress.retry_after = progress.retry_after.max(wait);
        }
    }

    /// The verdict (and rate-limit wait) of a group whose device has a usable entry; None when
    /// it has none.
    #[allow(clippy::too_many_arguments)]
    fn cached(
        &mut self,
        tenant: &str,
        device: &str,
        site: &str,
        token: Option<&str>,
        count: usize,
        now: f64,
        asked: Option<u64>,
    ) -> Option<(Verdict, f64)> {
        let key: &dyn DeviceIds = &(tenant, device);
        if let Some(slot) = self.found.map.get_mut(key) {
            if usable(Some(&*slot), now, asked) {
                return Some(judge(
                    &self.settings,
                    self.share,
                    &mut slot.value,
                    site,
                    token,
                    count,
                    now,
                ));
            }
        }
        if usable(self.unknown.map.get(key), now, asked) {
            return Some((unknown(token), 0.0));
        }
        None
    }

    /// UNAUTHORIZED for an uncached device whose tenant's lookup budget is spent.
    fn lookups_spent(&self) -> Verdict {
        let detail = format!(
            "the device could not be looked up: this tenant's registry lookups ({} per second) \
             are used up",
            self.settings.lookups_per_s
        );
        (0, Some((Reason::Unauthorized, detail)))
    }

    /// Take one lookup from the tenant's budget; false when it is spent.
    fn take_budget(&mut self, tenant: &str, now: f64) -> bool {
        let rate = f64::from(self.settings.lookups_per_s);
        if !self.budgets.map.contains_key(tenant) {
            let seq = self.next_seq();
            let slot = Slot {
                value: Bucket {
                    tokens: rate,
                    last: now,
                },
                expires: now,
                seq,
            };
            self.budgets.insert(tenant.into(), slot, now);
        }
        let slot = self
            .budgets
            .map
            .get_mut(tenant)
            .expect("the budget was just inserted");
        let (allowed, _) = take(&mut slot.value, 1, now, rate, rate);
        slot.expires = slot.value.last + (rate - slot.value.tokens) / rate;
        allowed == 1
    }

    /// Cache the records found for `keys` (`(tenant, device, record)`, in any order), and every
    /// key without a record as unknown. A found device gives its tenant's lookup back: the
    /// budget bounds lookups of devices that do not exist.
    pub fn install<S: AsRef<str>>(
        &mut self,
        keys: &[(S, S)],
        records: Vec<(String, String, Record)>,
        now: f64,
    ) {
        let mut found: HashSet<DeviceKey> = HashSet::with_capacity(records.len());
        for (tenant, device, mut record) in records {
            let key = DeviceKey::new(&tenant, &device);
            // The bucket outlives a refresh of the record: a TTL must not reset a rate limit.
            let bucket = self.found.map.get(&key).and_then(|s| s.value.bucket);
            self.unknown.map.remove(&key);
            let slot = Slot {
                value: Entry {
                    site: InlineStr::new(&[&std::mem::take(&mut record.site)]),
                    record,
                    verified: None,
                    bucket,
                },
                expires: now + self.settings.ttl_s,
                seq: self.next_seq(),
            };
            self.found
                .insert(DeviceKey::new(&tenant, &device), slot, now);
            self.refund(&tenant, now);
            found.insert(key);
        }
        for (tenant, device) in keys {
            let key: &dyn DeviceIds = &(tenant.as_ref(), device.as_ref());
            if found.contains(key) {
                continue;
            }
            self.found.map.remove(key);
            let slot = Slot {
                value: (),
                expires: now + self.settings.negative_ttl_s,
                seq: self.next_seq(),
            };
            self.unknown
                .insert(DeviceKey::new(tenant.as_ref(), device.as_ref()), slot, now);
        }
    }

    fn refund(&mut self, tenant: &str, now: f64) {
        let rate = f64::from(self.settings.lookups_per_s);
        if let Some(slot) = self.budgets.map.get_mut(tenant) {
            let b = &mut slot.value;
            let elapsed = now - b.last;
            if elapsed > 0.0 {
                b.tokens = rate.min(b.tokens + elapsed * rate);
                b.last = now;
            }
            b.tokens = rate.min(b.tokens + 1.0);
            slot.expires = b.last + (rate - b.tokens) / rate;
        }
    }

    /// Forget one device (revoked, rotated, re-provisioned): its next request looks it up.
    pub fn invalidate(&mut self, tenant: &str, device: &str) {
        let key: &dyn DeviceIds = &(tenant, device);
        self.found.map.remove(key);
        self.unknown.map.remove(key);
    }

    /// Forget every device.
    pub fn invalidate_all(&mut self) {
        self.found.map.clear();
        self.unknown.map.clear();
    }

    /// Enforce `share` (0 < share <= 1) of every device's rps and burst from now on: each of
    /// N processes sharing the traffic takes 1/N. Buckets keep their tokens, capped at the
    /// new burst when they next refill.
    pub fn set_share(&mut self, share: f64) -> Result<(), UsageError> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(UsageError::BadSetting {
                name: "share",
                rule: "a number in (0, 1]",
            });
        }
        self.share = share;
        Ok(())
    }

    /// `(rps, burst)` that applies to a device: its record's, else the defaults.
    pub fn limits(&self, tenant: &str, device: &str) -> (f64, u32) {
        let record = self
            .found
            .map
            .get(&(tenant, device) as &dyn DeviceIds)
            .map(|s| &s.value.record);
        (
            record
                .and_then(|r| r.rps)
                .unwrap_or(self.settings.default_rps),
            record
                .and_then(|r| r.burst)
                .unwrap_or(self.settings.default_burst),
        )
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Every counter and table size, by name.
    pub fn stats(&self) -> [(&'static str, u64); 8] {
        let c = self.counters;
        let buckets = self
            .found
            .map
            .values()
            .filter(|s| s.value.bucket.is_some())
            .count();
        [
            ("hits", c.hits),
            ("misses", c.misses),
            ("budget_refusals", c.budget_refusals),
            ("unavailable", c.unavailable),
            ("entries", self.found.map.len() as u64),
            ("negative_entries", self.unknown.map.len() as u64),
            ("buckets", buckets as u64),
            ("budgets", self.budgets.map.len() as u64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Identity;

    const SETTINGS: Settings = Settings {
        ttl_s: 60.0,
        negative_ttl_s: 5.0,
        max_entries: 1000,
        max_negative_entries: 1000,
        default_rps: 10.0,
        default_burst: 100,
        lookups_per_s: 100,
    };

    #[test]
    fn same_secret_is_slice_equality() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'0' + (i % 10) as u8).collect();
            assert!(same_secret(&a, &a.clone()), "{n}");
            assert!(!same_secret(&a, &a[..n.saturating_sub(1)]) || n == 0, "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_secret(&a, &b), "{n} {at}");
            }
        }
    }

    #[test]
    fn same_id_is_string_equality() {
        for n in 0..=20usize {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_id(&a, &a.clone()), "{n}");
            assert!(n == 0 || !same_id(&a, &a[..n - 1]), "{n}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'-';
                let b = String::from_utf8(b).unwrap_or_default();
                assert!(!same_id(&a, &b), "{n} {at}");
            }
        }
    }

    fn hash(token: &str) -> Vec<u8> {
        Sha256::digest(token.as_bytes()).to_vec()
    }

    fn record(site: &str, token: &str, limit: Option<(f64, u32)>) -> Record {
        Record::new(
            site.into(),
            &hash(token),
            limit.map(|l| l.0),
            limit.map(|l| l.1),
            true,
        )
        .expect("valid record")
    }

    /// A batch of `(tenant, device, site, token)` items, one message each.
    fn batch(items: &[(&str, &str, &str, &str)]) -> Batch {
        let mut b = Batch::with_capacity(items.len(), 0);
        for &(tenant, device, site, token) in items {
            let id = Identity {
                tenant,
                device,
                site,
                token,
            };
            b.push_accepted(&id, |_| {});
        }
        b
    }

    fn reasons(b: &Batch) -> Vec<Option<&'static str>> {
        b.reasons().map(|r| r.map(Reason::code)).collect()
    }

    fn key(t: &str, d: &str) -> Key {
        (t.into(), d.into())
    }

    fn admission(settings: Settings) -> Admission {
        let mut a = Admission::new(settings).expect("valid settings");
        a.install(
            &[key("t1", "d1"), key("t1", "d2"), key("t2", "d9")],
            vec![
                ("t1".into(), "d1".into(), record("s1", "tok1", None)),
                (
                    "t1".into(),
                    "d2".into(),
                    record("s1", "tok2", Some((1.0, 2))),
                ),
                ("t2".into(), "d9".into(), record("s9", "tok9", None)),
            ],
            0.0,
        );
        a
    }

    #[test]
    fn a_warm_batch_is_decided_per_group_without_lookups() {
        let mut a = admission(SETTINGS);
        let mut b = batch(&[
            ("t1", "d1", "s1", "tok1"),
            ("t1", "d1", "s1", "wrong"),
            ("t2", "d1", "s1", "tok1"),
            ("t1", "d1", "elsewhere", "tok1"),
            ("t1", "d2", "s1", "tok2"),
            ("t1", "d2", "s1", "tok2"),
            ("t1", "d2", "s1", "tok2"),
        ]);
        let mut p = Progress::default();
        assert_eq!(
            a.admit(&mut b, &mut p, 1.0),
            Ok(vec![key("t2", "d1")]),
            "t2/d1 is not cached"
        );
        a.install(&[key("t2", "d1")], vec![], 1.0);
        assert_eq!(a.admit(&mut b, &mut p, 1.0), Ok(vec![]));
        assert_eq!(
            reasons(&b),
            [
                None,
                Some("UNAUTHORIZED"),
                Some("UNAUTHORIZED"),
                Some("SITE_MISMATCH"),
                None,
                None,
                Some("RATE_LIMITED")
            ]
        );
        assert_eq!(p.retry_after(), 1.0);
        assert_eq!(
            a.admit(&mut b, &mut p, 1.0),
            Err(UsageError::AlreadyResolved)
        );
        let c = a.counters();
        assert_eq!((c.hits, c.misses, c.budget_refusals), (4, 1, 0));
    }

    #[test]
    fn a_lookup_that_installs_nothing_leaves_its_keys_unavailable() {
        let mut a = admission(SETTINGS);
        let mut b = batch(&[("t1", "d1", "s1", "tok1"), ("t1", "new", "s1", "x")]);
        let mut p = Progress::default();
        assert_eq!(a.admit(&mut b, &mut p, 1.0), Ok(vec![key("t1", "new")]));
        assert_eq!(a.admit(&mut b, &mut p, 1.5), Ok(vec![]));
        assert_eq!(reasons(&b), [None, Some("UNAVAILABLE")]);
        assert_eq!(a.counters().unavailable, 1);
    }

    #[test]
    fn entries_installed_for_a_batch_serve_it_even_with_zero_ttls() {
        let mut a = Admission::new(Settings {
            ttl_s: 0.0,
            negative_ttl_s: 0.0,
            ..SETTINGS
        })
        .expect("valid settings");
        let mut b = batch(&[("t", "d", "s", "k"), ("t", "gone", "s", "k")]);
        let mut p = Progress::default();
        assert_eq!(a.admit(&mut b, &mut p, 5.0).map(|k| k.len()), Ok(2));
        a.install(
            &[key("t", "d"), key("t", "gone")],
            vec![("t".into(), "d".into(), record("s", "k", None))],
            5.0,
        );
        assert_eq!(a.admit(&mut b, &mut p, 5.0), Ok(vec![]));
        assert_eq!(reasons(&b), [None, Some("UNAUTHORIZED")]);
        // The next batch asks again: nothing is cached for it.
        let mut b2 = batch(&[("t", "d", "s", "k")]);
        assert_eq!(
            a.admit(&mut b2, &mut Progress::default(), 5.0),
            Ok(vec![key("t", "d")])
        );
    }

    #[test]
    fn the_ttls_bound_how_long_a_revocation_or_a_new_device_takes() {
        let mut a = admission(SETTINGS);
        a.install(&[key("t1", "late")], vec![], 0.0);
        let warm = |a: &mut Admission, now: f64, items: &[(&str, &str, &str, &str)]| {
            let mut b = batch(items);
            let keys = a.admit(&mut b, &mut Progress::default(), now);
            keys.map(|k| k.is_empty())
        };
        assert_eq!(warm(&mut a, 59.9, &[("t1", "d1", "s1", "tok1")]), Ok(true));
        assert_eq!(warm(&mut a, 60.0, &[("t1", "d1", "s1", "tok1")]), Ok(false));
        assert_eq!(warm(&mut a, 4.9, &[("t1", "late", "s1", "k")]), Ok(true));
        assert_eq!(warm(&mut a, 5.0, &[("t1", "late", "s1", "k")]), Ok(false));
    }

    #[test]
    fn invalidate_forgets_one_device_or_all() {
        let mut a = admission(SETTINGS);
        let lookups = |a: &mut Admission| {
            let mut b = batch(&[("t1", "d1", "s1", "tok1"), ("t2", "d9", "s9", "tok9")]);
            a.admit(&mut b, &mut Progress::default(), 1.0)
                .expect("not resolved yet")
        };
        a.invalidate("t1", "d1");
        assert_eq!(lookups(&mut a), [key("t1", "d1")]);
        a.invalidate_all();
        assert_eq!(lookups(&mut a), [key("t1", "d1"), key("t2", "d9")]);
    }

    #[test]
    fn the_lookup_budget_refuses_unknown_devices_beyond_it_and_found_ones_give_it_back() {
        let mut a = admission(Settings {
            lookups_per_s: 2,
            ..SETTINGS
        });
        let mut b = batch(&[
            ("t1", "x1", "s", "k"),
            ("t1", "x2", "s", "k"),
            ("t1", "x3", "s", "k"),
            ("t1", "x3", "s", "other"),
            ("t2", "y1", "s", "k"),
        ]);
        let mut p = Progress::default();
        let keys = a.admit(&mut b, &mut p, 10.0).expect("not resolved");
        assert_eq!(keys, [key("t1", "x1"), key("t1", "x2"), key("t2", "y1")]);
        a.install(
            &keys,
            vec![("t1".into(), "x1".into(), record("s", "k", None))],
            10.0,
        );
        assert_eq!(a.admit(&mut b, &mut p, 10.0), Ok(vec![]));
        assert_eq!(
            reasons(&b),
            [
                None,
                Some("UNAUTHORIZED"),
                Some("UNAUTHORIZED"),
                Some("UNAUTHORIZED"),
                Some("UNAUTHORIZED")
            ]
        );
        assert_eq!(a.counters().budget_refusals, 1);
        // x1 was found: one lookup back, so t1 may ask once more at the same instant.
        let mut b = batch(&[("t1", "x4", "s", "k"), ("t1", "x5", "s", "k")]);
        assert_eq!(
            a.admit(&mut b, &mut Progress::default(), 10.0),
            Ok(vec![key("t1", "x4")])
        );
    }

    #[test]
    fn unknown_devices_never_evict_found_ones() {
        let mut a = admission(Settings {
            max_entries: 3,
            max_negative_entries: 10,
            ..SETTINGS
        });
        for i in 0..1000 {
            a.install(&[key("t1", &format!("x{i}"))], vec![], 1.0);
        }
        let stats = a.stats();
        assert_eq!(stats[4], ("entries", 3));
        assert!(stats[5].1 <= 10);
        let mut b = batch(&[("t1", "d1", "s1", "tok1")]);
        assert_eq!(a.admit(&mut b, &mut Progress::default(), 1.0), Ok(vec![]));
    }

    #[test]
    fn a_full_table_drops_expired_entries_then_the_oldest_tenth() {
        let mut t: Table<Box<str>, ()> = Table::new(20);
        let put = |t: &mut Table<Box<str>, ()>, key: &str, expires: f64, seq: u64, now: f64| {
            let slot = Slot {
                value: (),
                expires,
                seq,
            };
            t.insert(key.into(), slot, now);
        };
        for seq in 0..20 {
            put(
                &mut t,
                &format!("k{seq}"),
                [1.0, 9.0][seq as usize % 2],
                seq,
                0.0,
            );
        }
        // Nothing has expired at 0: the two oldest go.
        put(&mut t, "new", 9.0, 20, 0.0);
        assert!(!t.map.contains_key("k0") && !t.map.contains_key("k1"));
        assert_eq!(t.map.len(), 19);
        put(&mut t, "k0", 9.0, 21, 0.0);
        // At 5 the nine left with expiry 1 have expired: only they go.
        put(&mut t, "last", 9.0, 22, 5.0);
        let mut left: Vec<&str> = t.map.keys().map(|k| &**k).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["k0", "k11", "k13", "k15", "k17", "k19", "k3", "k5", "k7", "k9", "last", "new"]
        );
    }

    #[test]
    fn buckets_survive_a_refresh_and_limits_name_the_record_or_the_defaults() {
        let mut a = admission(SETTINGS);
        let mut b = batch(&[("t1", "d2", "s1", "tok2"); 3]);
        a.admit(&mut b, &mut Progress::default(), 1.0)
            .expect("warm");
        a.install(
            &[key("t1", "d2")],
            vec![(
                "t1".into(),
                "d2".into(),
                record("s1", "tok2", Some((1.0, 2))),
            )],
            1.0,
        );
        let mut b = batch(&[("t1", "d2", "s1", "tok2")]);
        let mut p = Progress::default();
        a.admit(&mut b, &mut p, 1.5).expect("warm");
        assert_eq!(reasons(&b), [Some("RATE_LIMITED")]);
        assert_eq!(p.retry_after(), 0.5);
        assert_eq!(a.limits("t1", "d2"), (1.0, 2));
        assert_eq!(a.limits("t1", "d1"), (10.0, 100));
        assert_eq!(a.limits("t9", "none"), (10.0, 100));
    }

    #[test]
    fn bad_settings_and_records_are_refused_with_their_name() {
        let bad = Admission::new(Settings {
            default_rps: 0.0,
            ..SETTINGS
        });
        assert_eq!(
            bad.map(|_| ()).map_err(|e| e.to_string()),
            Err("default_rps must be a positive number".into())
        );
        assert_eq!(
            Record::new("s".into(), b"short", None, None, true).map_err(|e| e.to_string()),
            Err("token_hash must be 32 bytes (a SHA-256 digest)".into())
        );
        assert!(Record::new("s".into(), &hash("k"), Some(f64::NAN), None, true).is_err());
    }

    #[test]
    fn a_share_divides_the_rate_and_the_burst_and_keeps_at_least_one_message() {
        let mut a = Admission::new(SETTINGS).expect("valid settings");
        assert!(a.set_share(0.0).is_err());
        assert!(a.set_share(1.5).is_err());
        a.set_share(0.5).expect("a share in (0, 1]");
        let key = [("t".to_string(), "d".to_string())];
        let record = Record::new("s".into(), &hash("tok"), Some(2.0), Some(10), true)
            .expect("a valid record");
        a.install(&key, vec![("t".into(), "d".into(), record)], 0.0);
        let entry = &mut a.found.map.values_mut().next().expect("installed").value;
        let ((allowed, _), _) = judge(&SETTINGS, 0.5, entry, "s", Some("tok"), 10, 0.0);
        assert_eq!(allowed, 5);
        let ((allowed, _), wait) = judge(&SETTINGS, 0.5, entry, "s", Some("tok"), 1, 0.0);
        assert_eq!(allowed, 0);
        assert!((wait - 1.0).abs() < 1e-9, "one token a second: {wait}");
        let ((allowed, _), _) = judge(&SETTINGS, 0.01, entry, "s", Some("tok"), 3, 100.0);
        assert_eq!(allowed, 1);
    }
}
