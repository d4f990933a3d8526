//! The key of a per-device table (admission's cache, the latest messages), looked up by a
//! batch group's `(tenant, device)` without a key built for it: `map.get(&(t, d) as &dyn
//! DeviceIds)`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::words;

/// A table's key of a device: its tenant and id.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The tenant's bytes, then the device's.
    ids: Ids,
    /// Where the tenant ends in `ids`.
    split: u32,
}

/// Bytes of ids a key holds in itself: most pairs of ids fit, and the key stays 32 bytes.
const INLINE: usize = 22;

/// A key's ids, in the table's bucket when they fit: a lookup's compare then reads the bucket
/// it probed, not another allocation (a cache miss per group in a table of many devices).
#[derive(Debug, PartialEq, Eq)]
enum Ids {
    /// The first `len` bytes of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Boxed(Box<str>),
}

impl DeviceKey {
    pub fn new(tenant: &str, device: &str) -> Self {
        let len = tenant.len() + device.len();
        let ids = if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..tenant.len()].copy_from_slice(tenant.as_bytes());
            bytes[tenant.len()..len].copy_from_slice(device.as_bytes());
            Ids::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut ids = String::with_capacity(len);
            ids.push_str(tenant);
            ids.push_str(device);
            Ids::Boxed(ids.into_boxed_str())
        };
        DeviceKey {
            ids,
            split: u32::try_from(tenant.len()).expect("a tenant id is under 4 GiB"),
        }
    }

    pub fn tenant(&self) -> &str {
        self.pair().0
    }

    pub fn device(&self) -> &str {
        self.pair().1
    }

    /// The tenant's bytes, then the device's.
    #[inline(always)]
    fn ids(&self) -> &str {
        match &self.ids {
            Ids::Inline { len, bytes } => {
                let ids = bytes.get(..usize::from(*len)).unwrap_or_default();
                // SAFETY: `new` copied two whole `str`s into the first `len` bytes, so they
                // are UTF-8. Checking them instead would cost a UTF-8 pass per lookup.
                unsafe { std::str::from_utf8_unchecked(ids) }
            }
            Ids::Boxed(ids) => ids,
        }
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
        self.ids().split_at(self.split as usize)
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
        let long = ("tenant-with-a-long-id", "device-with-a-long-id");
        map.insert(DeviceKey::new(long.0, long.1), 3);
        assert_eq!(map.get(&long as &dyn DeviceIds), Some(&3));
        assert_eq!(
            map.keys()
                .find(|k| k.device() == long.1)
                .map(|k| k.tenant()),
            Some(long.0)
        );
        assert_eq!(map.get(&("tenant-01", "dev-0002") as &dyn DeviceIds), None);
        assert_eq!(map.get(&("tenant-0", "dev-0001") as &dyn DeviceIds), None);
    }
}
