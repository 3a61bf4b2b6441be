//! TEMPORARY stand-in for the versions API (issue 16) until storage/version.rs lands.
use std::time::Instant;

use super::{Storage, Ticket, Value};
use crate::error::Result;
use crate::protocol::HashKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0 >> 16, self.0 & 0xffff)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<V> {
    pub version: Version,
    pub value: Option<V>,
}

impl Storage {
    pub fn next_version(&self) -> Result<Version> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(Version(ms << 16))
    }
    pub fn observe(&self, _v: Version) -> Result<()> {
        Ok(())
    }
    pub fn iter_arc_versioned(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = Result<(HashKey, Versioned<Value>)>> + '_ {
        self.iter_arc(from, to).map(|r| {
            r.map(|(k, v)| {
                (
                    k,
                    Versioned {
                        version: Version::ZERO,
                        value: Some(v),
                    },
                )
            })
        })
    }
    pub fn count_arc_versioned(&self, from: &HashKey, to: &HashKey) -> Result<u64> {
        self.count_arc(from, to)
    }
    pub fn entry(&self, key: &HashKey) -> Result<Option<Versioned<Value>>> {
        Ok(self.get(key)?.map(|v| Versioned {
            version: Version::ZERO,
            value: Some(v),
        }))
    }
    pub fn apply(&self, key: &HashKey, e: Versioned<Vec<u8>>) -> Result<(bool, Ticket)> {
        match e.value {
            Some(v) => Ok((true, self.insert(key, v)?)),
            None => self.remove(key),
        }
    }
    pub fn remove_if_version(&self, key: &HashKey, _v: Version) -> Result<(bool, Ticket)> {
        self.remove(key)
    }
    pub fn collect_tombstones(&self, _before: Version, _deadline: Option<Instant>) -> Result<u64> {
        Ok(0)
    }
}

/// A batch's size counts the value bytes (a tombstone counts none).
impl<V: AsRef<[u8]>> AsRef<[u8]> for Versioned<V> {
    fn as_ref(&self) -> &[u8] {
        self.value.as_ref().map(|v| v.as_ref()).unwrap_or(&[])
    }
}

pub fn shim_values(batch: Vec<(HashKey, Versioned<Vec<u8>>)>) -> Vec<(HashKey, Vec<u8>)> {
    batch
        .into_iter()
        .filter_map(|(k, e)| e.value.map(|v| (k, v)))
        .collect()
}
