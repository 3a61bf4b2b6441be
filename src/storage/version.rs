//! Versions of entries and the node's clock that makes them.
//!
//! A [`Version`] orders the writes of one key across owners: one owner at a time writes a key,
//! and a new owner's versions must come after anything it could have missed. It is a hybrid
//! logical clock value, `millis_since_unix_epoch << 16 | counter`: close to wall time, so that
//! two nodes whose clocks roughly agree order their writes by time, and never going back on
//! one node, whatever its wall clock does, because the clock also moves past every version it
//! is shown (`Clock::observe`). [`Version::ZERO`] is "unversioned": entries of an older layout
//! or archive, older than every real version.
//!
//! The clock is durable without a write per version: the meta tree's `b"clock"` holds a
//! reservation (u64 big-endian) that the clock never passes without moving it first, 100 ms
//! ahead. That write has no flush of its own: it is in sled's log before the data write that
//! uses the version, so the sync that makes that write durable makes the reservation durable
//! too. A restart starts at the reservation or the wall clock, whichever is later, so a
//! version handed out before a crash is never handed out again, and a wall clock set back
//! does not set the versions back; a reservation a little ahead (up to 100 ms) is waited out
//! at open, so that a restarted node's versions are not ahead of its peers' (`Clock::load`).

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::kv::{Kv, Tree};
use crate::error::{Error, Result};

/// Key, in the meta tree, of the clock's reservation (u64 big-endian).
pub(super) const CLOCK_KEY: &[u8] = b"clock";

/// Bits of a version below its milliseconds: a counter for writes within one millisecond.
const COUNTER_BITS: u32 = 16;

/// How far a reservation reaches ahead of the version that moved it: 100 ms of clock. A
/// restarted node starts at its reservation, so this is how far ahead of the wall clock its
/// first versions may be, and a write of it then wins over a later write elsewhere: it must
/// stay well under a failure detection (10 s lost writes in `tests/faults.rs`, seed 4). One
/// meta write per 100 ms of writes costs nothing measurable.
const RESERVE_AHEAD: u64 = 100 << COUNTER_BITS;

/// A version more than this ahead of our wall clock is stored but not observed: a peer with a
/// wrong clock (or a hostile one) must not push ours to the end of time.
const OBSERVE_AHEAD_MAX_MILLIS: u64 = 3_600_000;

/// At most one warning of versions from the future per this long.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The version of one write of a key (module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl Version {
    /// Unversioned: older than every real version.
    pub const ZERO: Version = Version(0);

    /// The first version of the millisecond `millis` since the Unix epoch.
    pub fn from_millis(millis: u64) -> Version {
        Version(millis << COUNTER_BITS)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// The counter within the millisecond.
    pub fn counter(self) -> u16 {
        self.0 as u16
    }

    /// Whether an entry of this version, meeting a copy of version `local` (`None`: the key
    /// holds nothing), replaces it: the newer wins; two unversioned entries (`ZERO`) let the
    /// incoming one win, as handoffs did before versions; an equal real version is the same
    /// write, and stays.
    pub fn supersedes(self, local: Option<Version>) -> bool {
        match local {
            None => true,
            Some(l) => self > l || (self == Version::ZERO && l == Version::ZERO),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.millis(), self.counter())
    }
}

/// An entry with its version: a value, or a tombstone (`value: None`) that records a removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<V> {
    pub version: Version,
    pub value: Option<V>,
}

impl<V> Versioned<V> {
    pub fn value(version: Version, value: V) -> Versioned<V> {
        Versioned {
            version,
            value: Some(value),
        }
    }

    pub fn tombstone(version: Version) -> Versioned<V> {
        Versioned {
            version,
            value: None,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The value's bytes, none for a tombstone: what a [`super::Batcher`] weighs.
impl<V: AsRef<[u8]>> AsRef<[u8]> for Versioned<V> {
    fn as_ref(&self) -> &[u8] {
        self.value.as_ref().map_or(&[], |v| v.as_ref())
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 before it, which no clock reads).
fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The node's clock (module doc).
pub(super) struct Clock {
    state: Mutex<ClockState>,
    /// When a version from the future was last warned of.
    warned: Mutex<Option<Instant>>,
}

struct ClockState {
    /// The last version handed out or observed.
    last: u64,
    /// What the meta tree holds: `last` never passes it.
    reserved: u64,
}

impl Clock {
    /// The clock of a directory: after its reservation, and not behind the wall clock. A
    /// reservation at most a second ahead of the wall clock is waited out (at most
    /// [`RESERVE_AHEAD`] after a restart), so that a restarted node's versions are wall-clock
    /// time again rather than ahead of every other node's: an earlier REM of ours must not
    /// outrank a later write elsewhere while two nodes claim an arc. Further ahead means the
    /// wall clock was set back: the clock then starts at the reservation, with a warning.
    pub(super) fn load(kv: &Kv) -> Result<Clock> {
        let clock = Clock::load_at(kv, wall_millis())?;
        let reserved_ms = clock.reserved_millis();
        let wall = wall_millis();
        if reserved_ms > wall {
            let ahead = reserved_ms - wall;
            if ahead <= 1000 {
                std::thread::sleep(std::time::Duration::from_millis(ahead + 1));
                return Clock::load_at(kv, wall_millis());
            }
            warn!(
                "the wall clock is {ahead} ms behind this directory's last versions (set \
                 back?): versions go on from those, ahead of the wall clock"
            );
        }
        Ok(clock)
    }

    /// The reservation's milliseconds.
    fn reserved_millis(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserved
            >> COUNTER_BITS
    }

    pub(super) fn load_at(kv: &Kv, wall: u64) -> Result<Clock> {
        let reserved = match kv.get(Tree::Meta, CLOCK_KEY)? {
            Some(v) => <[u8; 8]>::try_from(&v[..])
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    Error::Damaged(format!("the clock record is {} bytes, not 8", v.len()))
                })?,
            None => 0,
        };
        Ok(Clock {
            state: Mutex::new(ClockState {
                last: reserved.max(wall << COUNTER_BITS),
                reserved,
            }),
            warned: Mutex::new(None),
        })
    }

    /// A version after every one handed out or observed, and not behind the wall clock.
    pub(super) fn next(&self, kv: &Kv) -> Result<Version> {
        self.next_at(kv, wall_millis())
    }

    pub(super) fn next_at(&self, kv: &Kv, wall: u64) -> Result<Version> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let v = (wall << COUNTER_BITS).max(st.last.saturating_add(1));
        Clock::reserve(&mut st, kv, v)?;
        st.last = v;
        Ok(Version(v))
    }

    /// Moves the clock past `v`, a version received from a peer, unless `v` lies more than
    /// an hour ahead of our wall clock (then it is only warned of).
    pub(super) fn observe(&self, kv: &Kv, v: Version) -> Result<()> {
        self.observe_at(kv, v, wall_millis())
    }

    pub(super) fn observe_at(&self, kv: &Kv, v: Version, wall: u64) -> Result<()> {
        if v.millis() > wall.saturating_add(OBSERVE_AHEAD_MAX_MILLIS) {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                *warned = Some(Instant::now());
                warn!(
                    "an entry's version {v} is {} s ahead of our clock: stored, but our clock \
                     does not follow it (a peer's clock is wrong?)",
                    (v.millis() - wall) / 1000
                );
            }
            return Ok(());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if v.0 > st.last {
            Clock::reserve(&mut st, kv, v.0)?;
            st.last = v.0;
        }
        Ok(())
    }

    /// Before `last` becomes `v`: moves the reservation past it if needed (module doc).
    fn reserve(st: &mut ClockState, kv: &Kv, v: u64) -> Result<()> {
        if v > st.reserved {
            let reserved = v.saturating_add(RESERVE_AHEAD);
            kv.insert(Tree::Meta, CLOCK_KEY, &reserved.to_be_bytes()[..])?;
            st.reserved = reserved;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn last(&self) -> Version {
        Version(self.state.lock().unwrap().last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Storage, StorageOptions};

    #[test]
    fn versions_order_by_time_then_counter_and_print_both() {
        let a = Version::from_millis(1_732_800_000_123);
        let b = Version(a.0 + 5);
        assert!(Version::ZERO < a && a < b);
        assert_eq!(b.to_string(), "1732800000123.5");
        assert_eq!((b.millis(), b.counter()), (1_732_800_000_123, 5));
        assert!(Version::from_millis(1) > Version(u64::from(u16::MAX)));
    }

    /// Newer wins; unversioned meets unversioned: the incoming wins; the same version: stays.
    #[test]
    fn the_newer_version_supersedes_and_zero_meets_zero_as_before() {
        let (old, new) = (Version(5 << 16), Version(6 << 16));
        assert!(new.supersedes(Some(old)));
        assert!(!old.supersedes(Some(new)));
        assert!(!new.supersedes(Some(new)), "the same write");
        assert!(Version::ZERO.supersedes(Some(Version::ZERO)));
        assert!(!Version::ZERO.supersedes(Some(old)));
        assert!(old.supersedes(Some(Version::ZERO)));
        assert!(Version::ZERO.supersedes(None) && old.supersedes(None));
    }

    /// Versions rise whatever the wall clock does: one that stands still (the counter), one set
    /// back, and one set back across a restart (the reservation).
    #[test]
    fn the_clock_never_goes_back_even_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let wall = 1_700_000_000_000;
        let last = {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            let c = Clock::load_at(&s.kv, wall).unwrap();
            let mut prev = Version::ZERO;
            for w in [wall, wall, wall, wall - 5000, wall + 1, wall - 60_000] {
                let v = c.next_at(&s.kv, w).unwrap();
                assert!(v > prev, "{v} after {prev}");
                assert!(v.millis() >= w.min(wall));
                prev = v;
            }
            assert_eq!(
                prev.millis(),
                wall + 1,
                "a clock set back does not set versions back"
            );
            // The real clock of the storage wrote its reservation at open or at its first
            // version; ours is the one in the tree now.
            let _ = c.next_at(&s.kv, wall + 2).unwrap();
            prev = c.last();
            s.flush().unwrap();
            prev
        };
        // Reopened with the wall clock an hour back: still after everything handed out.
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let c = Clock::load_at(&s.kv, wall - 3_600_000).unwrap();
        let v = c.next_at(&s.kv, wall - 3_600_000).unwrap();
        assert!(v > last, "{v} after a reopen, {last} before");
    }

    /// The storage's own clock: a new version after every one it gave before a reopen.
    #[test]
    fn next_version_rises_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut prev = Version::ZERO;
        for _ in 0..3 {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            for _ in 0..100 {
                let v = s.next_version().unwrap();
                assert!(v > prev);
                prev = v;
            }
        }
    }

    /// An observed version moves the clock past it, unless it is more than an hour ahead of
    /// the wall clock; the reservation follows an observed version too.
    #[test]
    fn observe_follows_peers_but_not_into_the_far_future() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let wall = 1_700_000_000_000;
        let c = Clock::load_at(&s.kv, wall).unwrap();
        let near = Version::from_millis(wall + 3_000_000);
        c.observe_at(&s.kv, near, wall).unwrap();
        assert!(c.next_at(&s.kv, wall).unwrap() > near);
        let far = Version::from_millis(wall + 3_700_000);
        c.observe_at(&s.kv, far, wall).unwrap();
        let v = c.next_at(&s.kv, wall).unwrap();
        assert!(v < far && v > near, "{v}");
        // An older version changes nothing.
        c.observe_at(&s.kv, Version(5), wall).unwrap();
        assert!(c.next_at(&s.kv, wall).unwrap() > v);
        let reserved = s.kv.get(Tree::Meta, CLOCK_KEY).unwrap().unwrap();
        assert!(u64::from_be_bytes(reserved[..].try_into().unwrap()) > c.last().0);
    }
}
