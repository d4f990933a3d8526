//! The key of a per-device table (admission's cache, the latest messages), looked up by a
//! batch group's `(tenant, device)` without a key built for it: `map.get(&(t, d) as &dyn
//! DeviceIds)`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::words;

/// A table's key of a device: its tenant and id.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The tenant's bytes, then the device's, in one allocation: a lookup's compare follows
    /// one pointer (one cache miss in a table of many devices), not one per id.
    ids: Box<str>,
    /// Where the tenant ends in `ids`.
    split: usize,
}

impl DeviceKey {
    pub fn new(tenant: &str, device: &str) -> Self {
        let mut ids = String::with_capacity(tenant.len() + device.len());
        ids.push_str(tenant);
        ids.push_str(device);
        DeviceKey {
            ids: ids.into_boxed_str(),
            split: tenant.len(),
        }
    }

    pub fn tenant(&self) -> &str {
        self.pair().0
    }

    pub fn device(&self) -> &str {
        self.pair().1
    }
}

/// `(tenant, device)` of a stored `DeviceKey` or of a batch's group, which `DeviceKey`
/// borrows as: a table is looked up by the two ids as they are, without building a key of
/// them for each group (a length and two copies, about 150 instructions in admission).
pub trait DeviceIds {
    fn pair(&self) -> (&str, &str);
}

impl DeviceIds for DeviceKey {
    #[inline(always)]
    fn pair(&self) -> (&str, &str) {
        self.ids.split_at(self.split)
    }
}

impl DeviceIds for (&str, &str) {
    #[inline(always)]
    fn pair(&self) -> (&str, &str) {
        *self
    }
}

impl<'a> Borrow<dyn DeviceIds + 'a> for DeviceKey {
    fn borrow(&self) -> &(dyn DeviceIds + 'a) {
        self
    }
}

/// The same for a key and its borrowed form, as `Borrow` requires. The ids' bytes only:
/// foldhash rotates its state by each write's length, so a shifted split of the same bytes
/// hashes apart without `str`'s end marker (two more folds a lookup).
impl Hash for dyn DeviceIds + '_ {
    #[inline(always)]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (tenant, device) = self.pair();
        state.write(tenant.as_bytes());
        state.write(device.as_bytes());
    }
}

impl Hash for DeviceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn DeviceIds).hash(state);
    }
}

impl PartialEq for dyn DeviceIds + '_ {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let ((t1, d1), (t2, d2)) = (self.pair(), other.pair());
        words::same_bytes(d1.as_bytes(), d2.as_bytes())
            && words::same_bytes(t1.as_bytes(), t2.as_bytes())
    }
}

impl Eq for dyn DeviceIds + '_ {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_two_ids_and_a_shifted_split_is_another_key() {
        let mut map: foldhash::HashMap<DeviceKey, u32> = foldhash::HashMap::default();
        map.insert(DeviceKey::new("tenant-01", "dev-0001"), 1);
        map.insert(DeviceKey::new("tenant-0", "1dev-0001"), 2);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.get(&("tenant-01", "dev-0001") as &dyn DeviceIds),
            Some(&1)
        );
        assert_eq!(
            map.get(&("tenant-0", "1dev-0001") as &dyn DeviceIds),
            Some(&2)
        );
        assert_eq!(map.get(&("tenant-01", "dev-0002") as &dyn DeviceIds), None);
        assert_eq!(map.get(&("tenant-0", "dev-0001") as &dyn DeviceIds), None);
    }
}
