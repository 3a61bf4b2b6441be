//! The collection of tombstones: a removal is kept as a tombstone so that an older copy of the
//! value, met later (a node that was away, a handoff, the repair pass), loses to it. Once no
//! such copy can still turn up (the node's tombstone retention, a setting), it goes.
//!
//! A pass scans the data tree's whole entries (tombstones are never in pieces), and removes
//! each tombstone older than the bound under its key's stripe, after reading it again there: a
//! write since the scan read it (a new value, a newer tombstone) stays. Like every scan it
//! registers its pages with sled's cache and runs sled's deferred frees as it goes.

use std::time::Instant;

use super::arc::{reclaim, stored_key, RECLAIM_EVERY};
use super::kv::Tree;
use super::value::Head;
use super::version::Version;
use super::Storage;
use crate::error::Result;

/// How often (in raw entries) the pass looks at the clock.
const CLOCK_EVERY: u64 = 1024;

impl Storage {
    /// Removes the tombstones whose version is older than `before` (e.g. the clock's version
    /// of now minus the retention), stopping at `deadline` if one is given (the next pass
    /// starts over). Values are never touched. Returns how many went. Not synced: a tombstone
    /// that a crash brings back goes with the next pass.
    pub fn collect_tombstones(&self, before: Version, deadline: Option<Instant>) -> Result<u64> {
        self.writable()?;
        let mut collected = 0u64;
        for (i, r) in self.kv.iter(Tree::Data).enumerate() {
            let (k, _) = r?;
            let i = i as u64 + 1;
            if i.is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
            if i.is_multiple_of(CLOCK_EVERY) && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if k.len() != 20 {
                continue;
            }
            let key = stored_key(&k)?;
            // Read again through the cache (see `Storage::touched`); `None`: removed meanwhile.
            let Some(e) = self.touch_raw(&k)? else {
                continue;
            };
            if !old_tombstone(&key, &e, before)? {
                continue;
            }
            self.preserve(&key)?;
            let _stripe = self.stripe(&key);
            let still = match self.kv.get(Tree::Data, key.as_bytes())? {
                Some(e) => old_tombstone(&key, &e, before)?,
                None => false,
            };
            if still {
                // Leftover pieces beside it go too: the key then holds nothing.
                self.drop_locked(&key)?;
                collected += 1;
            }
        }
        reclaim();
        Ok(collected)
    }
}

/// Whether the whole entry `e` is a tombstone older than `before`.
fn old_tombstone(key: &crate::protocol::HashKey, e: &[u8], before: Version) -> Result<bool> {
    Ok(matches!(Head::parse(key, e)?, Head::Tombstone(v) if v < before))
}
