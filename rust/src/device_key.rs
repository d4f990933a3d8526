//! The key of a per-device table (admission's cache, the latest messages), looked up by a
//! batch group's `(tenant, device)` without a key built for it: `map.get(&(t, d) as &dyn
//! DeviceIds)`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::words;

/// A table's key of a device: its tenant and id.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The tenant's bytes, then the device's; most pairs fit in place, the key 32 bytes.
    ids: InlineStr<22>,
    /// Where the tenant ends in `ids`.
    split: u32,
}

/// A string held in place when it has up to `N` bytes, else boxed: a table's entry then
/// holds the text it is compared with, and a lookup's compare reads the bucket it probed,
/// not another allocation (a cache miss per group in a table of many devices).
#[derive(Debug, PartialEq, Eq)]
pub enum InlineStr<const N: usize> {
    /// The first `len` bytes of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; N],
    },
    Boxed(Box<str>),
}

impl<const N: usize> InlineStr<N> {
    /// `parts`, back to back.
    pub fn new(parts: &[&str]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > N {
            return InlineStr::Boxed(parts.concat().into_boxed_str());
        }
        let mut bytes = [0; N];
        let mut at = 0;
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
        }
        InlineStr::Inline {
            len: len as u8,
            bytes,
        }
    }

    #[inline(always)]
    pub fn as_str(&self) -> &str {
        match self {
            InlineStr::Inline { len, bytes } => {
                let text = bytes.get(..usize::from(*len)).unwrap_or_default();
                // SAFETY: `new` copied whole `str`s into the first `len` bytes, so they are
                // UTF-8. Checking them instead would cost a UTF-8 pass per lookup.
                unsafe { std::str::from_utf8_unchecked(text) }
            }
            InlineStr::Boxed(text) => text,
        }
    }
}

impl DeviceKey {
    pub fn new(tenant: &str, device: &str) -> Self {
        DeviceKey {
            ids: InlineStr::new(&[tenant, device]),
            split: u32::try_from(tenant.len()).expect("a tenant id is under 4 GiB"),
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
        self.ids.as_str().split_at(self.split as usize)
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
    fn an_inline_str_is_its_parts_back_to_back_inline_or_boxed() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 40] {
            let text = "x".repeat(n);
            let (a, b) = text.split_at(n / 2);
            let s = InlineStr::<8>::new(&[a, b]);
            assert_eq!(s.as_str(), text);
            assert_eq!(matches!(s, InlineStr::Inline { .. }), n <= 8, "{n}");
        }
    }

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
