//! Metric name sets sorted and checked before, remembered across batches. A device sends the
//! same names in the same order in every message, but the messages of a batch mostly come from
//! different devices: remembering a few thousand sets lets each device's set be sorted and
//! checked once rather than per message. A set is taken over only after its names compare
//! equal word for word, so a hash collision costs a sort, never a wrong answer.

use std::cell::RefCell;
use std::hash::Hasher;

use super::{Metric, Written};
use crate::words;

/// Sets remembered per thread, in buckets of `WAYS` slots; a hash of the names picks the
/// bucket. Four ways rather than one or two: sets that share a bucket evict each other's only
/// when more than four alternate there, so 1,000 sets (one per device, at worst) keep about
/// 99% of their lookups hits where two ways kept about 96%.
const SLOTS: usize = 4096;
const WAYS: usize = 4;
const BUCKETS: usize = SLOTS / WAYS;
/// Most names in a set remembered: a set stays small.
const MAX_NAMES: usize = 16;

#[derive(Default)]
struct NameSet {
    /// Each name's prefix, tail and length (`Metric`), in body order.
    names: Vec<(u64, u64, usize)>,
    /// What `super::sort_names` left in `order`, its first `written` entries: copied back
    /// whole, a copy of fixed size. One of the set's length was a `memcpy` call, branching on
    /// a length that changes from message to message.
    order: [Written; MAX_NAMES],
    written: usize,
    /// What `super::sort_names` returned.
    names_ok: bool,
}

impl NameSet {
    fn holds(&self, metrics: &[Metric<'_>]) -> bool {
        // Every name compared, without a branch per name: a set of the same length mostly
        // holds the same names, and the loop's exit is then its only branch.
        self.names.len() == metrics.len()
            && self
                .names
                .iter()
                .zip(metrics)
                .fold(true, |same, (&(prefix, tail, len), m)| {
                    same & (prefix == m.prefix) & (tail == m.tail) & (len == m.name.len())
                })
    }

    /// `metrics` holds at most `MAX_NAMES` entries, so `order` does too.
    fn remember(&mut self, metrics: &[Metric<'_>], order: &[Written], names_ok: bool) {
        self.names.clear();
        self.names
            .extend(metrics.iter().map(|m| (m.prefix, m.tail, m.name.len())));
        self.order[..order.len()].copy_from_slice(order);
        self.written = order.len();
        self.names_ok = names_ok;
    }

    fn recall(&self, order: &mut Vec<Written>) -> bool {
        order.clear();
        order.extend_from_slice(&self.order);
        order.truncate(self.written);
        self.names_ok
    }
}

/// The remembered sets and, per slot, the hash of its names (`hash_of`): a set is compared
/// word for word only in the slot whose hash matches, and a hit is used where it lies.
struct Sets {
    hashes: Vec<u64>,
    sets: Vec<NameSet>,
    /// Per bucket, the way the next new set takes: the one filled longest ago.
    next: Vec<u8>,
}

impl Sets {
    fn new() -> Self {
        Sets {
            hashes: vec![0; SLOTS],
            sets: (0..SLOTS).map(|_| NameSet::default()).collect(),
            next: vec![0; BUCKETS],
        }
    }

    fn sort_names(&mut self, hash: u64, metrics: &[Metric<'_>], order: &mut Vec<Written>) -> bool {
        let bucket = hash as usize % BUCKETS;
        let first = bucket * WAYS;
        let found = (first..first + WAYS)
            .find(|&slot| self.hashes[slot] == hash && self.sets[slot].holds(metrics));
        if let Some(slot) = found {
            return self.sets[slot].recall(order);
        }
        let slot = first + usize::from(self.next[bucket]);
        self.next[bucket] = (self.next[bucket] + 1) % WAYS as u8;
        let names_ok = super::sort_names(metrics, order);
        self.hashes[slot] = hash;
        self.sets[slot].remember(metrics, order, names_ok);
        names_ok
    }
}

thread_local! {
    static SETS: RefCell<Sets> = RefCell::new(Sets::new());
}

/// `super::sort_names`, taken from a remembered set of the same names when there is one.
pub(super) fn sort_names(metrics: &[Metric<'_>], order: &mut Vec<Written>) -> bool {
    match hash_of(metrics) {
        Some(hash) => SETS.with_borrow_mut(|sets| sets.sort_names(hash, metrics, order)),
        None => super::sort_names(metrics, order),
    }
}

/// The hash of a set of names, `None` for a set not remembered: only plain names are compared
/// by their words, and an empty set is no work to remember.
fn hash_of(metrics: &[Metric<'_>]) -> Option<u64> {
    if metrics.is_empty() || metrics.len() > MAX_NAMES {
        return None;
    }
    // Keyed, so that a client cannot aim sets at one bucket to keep evicting a device's set.
    let mut h = words::keyed();
    for m in metrics {
        if !m.plain {
            return None;
        }
        h.write_u64(m.prefix);
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn metric(name: &str) -> Metric<'_> {
        let (prefix, tail) = Metric::words_of(name);
        Metric {
            name: Cow::Borrowed(name),
            prefix,
            tail,
            plain: true,
            value: None,
            ty: crate::schema::FieldType::Float,
        }
    }

    #[test]
    fn a_set_is_recalled_only_for_the_same_names_in_the_same_order() {
        let set_of = |names: &[&'static str]| -> Vec<Metric<'static>> {
            names.iter().map(|n| metric(n)).collect()
        };
        let metrics = set_of(&["b", "a b", "b", "metric name 16 b"]);
        let mut order = Vec::new();
        let ok = super::super::sort_names(&metrics, &mut order);
        assert!(ok);
        let escaped = |i: u32| order.iter().find(|w| w.index == i).map(|w| w.escape);
        assert_eq!((escaped(1), escaped(2)), (Some(true), Some(false)));
        let mut set = NameSet::default();
        set.remember(&metrics, &order, ok);
        for other in [
            &["b", "a b", "b"][..],
            &["b", "a b", "b", "metric name 16 c"],
            &["a b", "b", "b", "metric name 16 b"],
            &["b", "a c", "b", "metric name 16 b"],
        ] {
            assert!(!set.holds(&set_of(other)), "{other:?}");
        }
        let again = set_of(&["b", "a b", "b", "metric name 16 b"]);
        assert!(set.holds(&again));
        let mut recalled = vec![Written::default(); 20];
        assert_eq!(set.recall(&mut recalled), ok);
        assert_eq!(recalled, order);
    }
}
