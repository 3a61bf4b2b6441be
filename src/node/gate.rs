//! [`WriteGate`]: how writes and a moving arc meet (PROTOCOL.md section 6, "Writes and a moving
//! arc").
//!
//! Every INS and REM passes the gate. While an arc is fenced (it is being handed to another
//! node), writes for keys in it wait at the gate until the move ends and then get the answer of
//! the new ownership. Before the entries start to move, the fence waits (for a bounded time)
//! for the INS requests already told `T` in that arc to deliver their value and be applied; one
//! that is still not done by then gets `F`. Reads never pass the gate: the old owner serves
//! them until the ring state switches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::protocol::HashKey;
use crate::ring::in_arc;

/// An arc being handed over.
#[derive(Clone, Copy, Debug)]
struct Fence {
    /// First key of the arc.
    from: HashKey,
    /// End of the arc (exclusive).
    to: HashKey,
    /// Set once entries start to move: an INS told `T` before the fence and still unfinished
    /// can no longer be part of the move, so it gets `F`.
    closed: bool,
}

impl Fence {
    fn covers(&self, key: &HashKey) -> bool {
        in_arc(key, &self.from, &self.to)
    }
}

#[derive(Default)]
struct GateState {
    /// The arc in motion, if any (one handoff at a time).
    fence: Option<Fence>,
    /// INS requests between their first `T` and their value being applied, by slot id.
    inflight: HashMap<u64, HashKey>,
    /// Next slot id.
    next_id: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct WriteGate {
    /// Fence and in-flight writes. A std mutex: held for map updates and one sled call,
    /// never across an `.await`.
    state: Mutex<GateState>,
    /// Woken whenever the fence is lifted or an in-flight write ends.
    changed: Notify,
}

/// What passing the gate decided for one write.
pub enum Pass<T> {
    /// Go on: `T` is the result of the closure run under the gate.
    Go(T),
    /// The key is in a fence that closed on this write: answer `F`.
    Closed,
}

/// An INS told `T` and not yet applied; dropping it (a connection lost mid-value) frees the
/// fence from waiting for it.
pub struct Slot<'a> {
    gate: &'a WriteGate,
    id: u64,
    pub key: HashKey,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let removed = self.gate.lock().inflight.remove(&self.id).is_some();
        if removed {
            self.gate.changed.notify_waiters();
        }
    }
}

impl WriteGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while `key` is fenced, then runs `f` under the gate (no fence can start while it
    /// runs). Used for REM and for the first Status of INS.
    pub async fn pass<T>(&self, key: &HashKey, mut f: impl FnMut() -> T) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if !st.fence.is_some_and(|f| f.covers(key)) {
                    return f();
                }
            }
            notified.await;
        }
    }

    /// Registers an INS that is about to answer `T`, if `owns` says the key is ours (checked
    /// under the gate, after any fence on the key is lifted).
    pub async fn begin_insert(&self, key: &HashKey, owns: impl Fn() -> bool) -> Option<Slot<'_>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.fence.is_some_and(|f| f.covers(key)) {
                    if !owns() {
                        return None;
                    }
                    let id = st.next_id;
                    st.next_id += 1;
                    st.inflight.insert(id, *key);
                    return Some(Slot {
                        gate: self,
                        id,
                        key: *key,
                    });
                }
            }
            notified.await;
        }
    }

    /// Applies a registered INS with `f` (which checks ownership again and writes), unless a
    /// fence on its key has closed meanwhile.
    pub fn finish_insert<T>(&self, slot: Slot<'_>, f: impl FnOnce() -> T) -> Pass<T> {
        let out = {
            let mut st = self.lock();
            st.inflight.remove(&slot.id);
            if st.fence.is_some_and(|fe| fe.closed && fe.covers(&slot.key)) {
                Pass::Closed
            } else {
                Pass::Go(f())
            }
        };
        self.changed.notify_waiters();
        out
    }

    /// Fences `[from, to)`; `false` if another arc is already fenced.
    pub fn fence(&self, from: HashKey, to: HashKey) -> bool {
        let mut st = self.lock();
        if st.fence.is_some() {
            return false;
        }
        st.fence = Some(Fence {
            from,
            to,
            closed: false,
        });
        true
    }

    /// Waits up to `limit` for the INS requests in the fenced arc that were told `T` to be
    /// applied, then closes the fence to the rest. Returns how many were cut off.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let Some(fence) = st.fence else { return 0 };
                let left = st.inflight.values().filter(|k| fence.covers(k)).count();
                if left == 0 || tokio::time::Instant::now() >= deadline {
                    if let Some(f) = st.fence.as_mut() {
                        f.closed = true;
                    }
                    return left;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Runs `f` under the gate: a ring switch made here is seen atomically by every write.
    pub fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _st = self.lock();
        f()
    }

    /// Lifts the fence; waiting writes go on and see the ownership as it now is.
    pub fn lift(&self) {
        self.lock().fence = None;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn k(n: u8) -> HashKey {
        let mut b = [0u8; 20];
        b[0] = n;
        HashKey(b)
    }

    #[tokio::test]
    async fn writes_to_a_fenced_arc_wait_until_it_lifts_and_others_do_not() {
        let gate = Arc::new(WriteGate::default());
        assert!(gate.fence(k(10), k(20)));
        assert!(!gate.fence(k(30), k(40)), "one fence at a time");
        // Outside the arc: passes at once.
        assert_eq!(gate.pass(&k(25), || 1).await, 1);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.pass(&k(15), || 2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a write in the fenced arc waits");
        gate.lift();
        assert_eq!(waiting.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_fence_waits_for_ins_told_t_and_cuts_off_stragglers() {
        let gate = Arc::new(WriteGate::default());
        let slot = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        // The slot is applied while the fence drains: it goes through.
        let g = gate.clone();
        let drain = tokio::spawn(async move { g.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished(), "the fence waits for the INS told T");
        assert!(matches!(gate.finish_insert(slot, || 7), Pass::Go(7)));
        assert_eq!(drain.await.unwrap(), 0);
        gate.lift();

        // A straggler: the fence stops waiting and it gets Closed.
        let slot = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        assert_eq!(gate.drain(Duration::from_millis(50)).await, 1);
        assert!(matches!(gate.finish_insert(slot, || 7), Pass::Closed));
        gate.lift();
    }

    #[tokio::test]
    async fn a_slot_dropped_mid_value_frees_the_fence() {
        let gate = Arc::new(WriteGate::default());
        let slot = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        drop(slot); // the connection died while the value was arriving
        assert_eq!(gate.drain(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn not_owned_keys_get_no_slot() {
        let gate = WriteGate::default();
        assert!(gate.begin_insert(&k(1), || false).await.is_none());
    }
}
