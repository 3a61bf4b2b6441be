//! [`WriteGate`]: how writes and a moving arc meet (PROTOCOL.md section 6, "Writes and a moving
//! arc").
//!
//! Every INS and REM passes the gate. While an arc is fenced (it is being handed to another
//! node), writes for keys in it wait at the gate until the move ends and then get the answer of
//! the new ownership. Before the entries start to move, the fence waits (for a bounded time)
//! for the INS requests already told `T` in that arc to deliver their value and be applied; one
//! that is still not done by then gets `F`. Reads never pass the gate: the old owner serves
//! them until the ring state switches.
//!
//! A write that passed the gate is *applying*: it checks ownership and changes the storage
//! without holding the gate's lock, so that writes of different keys run side by side (a
//! large value takes long to store, and every other write of the node used to wait behind
//! it). What the lock gave before, the applying set gives now: a fence's drain
//! returns only once no write in its arc is applying, and [`WriteGate::exclusive`] (a ring
//! switch) waits until no write at all is, and lets none start meanwhile.

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
    /// INS requests between their first `T` and their value being applied, by id.
    inflight: HashMap<u64, HashKey>,
    /// Writes past the gate, checking ownership and changing the storage, by id: a fence's
    /// drain and a ring switch wait for them.
    applying: HashMap<u64, HashKey>,
    /// An exclusive section ([`WriteGate::exclusive`]) waits or runs: no write starts applying.
    switching: bool,
    /// Next id of an accepted or applying write.
    next_id: u64,
}

impl GateState {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// See the module docs.
#[derive(Default)]
pub struct WriteGate {
    /// Fence, in-flight and applying writes. A std mutex: held for map updates only, never
    /// across an `.await` or storage work.
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
pub struct Accepted<'a> {
    /// Where it is registered, to unregister it on drop.
    gate: &'a WriteGate,
    /// Its key in the gate's in-flight map.
    id: u64,
    /// The key being written: a fence of its arc waits for it.
    pub key: HashKey,
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        let removed = self.gate.lock().inflight.remove(&self.id).is_some();
        if removed {
            self.gate.changed.notify_waiters();
        }
    }
}

/// A write that passed the gate; dropping it (the write done, or panicked) ends its applying.
struct Applying<'a> {
    gate: &'a WriteGate,
    id: u64,
}

/// The pending or running exclusive section; dropping it (done, or the caller dropped while
/// waiting) lets writes apply again.
struct Switching<'a> {
    gate: &'a WriteGate,
}

impl Drop for Switching<'_> {
    fn drop(&mut self) {
        self.gate.lock().switching = false;
        self.gate.changed.notify_waiters();
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.gate.lock().applying.remove(&self.id);
        self.gate.changed.notify_waiters();
    }
}

impl WriteGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while `key` is fenced (or a ring switch is pending), then runs `f` as an applying
    /// write: a fence of its arc drains only after it, and no ring switch happens during it.
    /// Used for REM.
    pub async fn pass<T>(&self, key: &HashKey, f: impl FnOnce() -> T) -> T {
        let applying = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.switching && !st.fence.is_some_and(|f| f.covers(key)) {
                    let id = st.new_id();
                    st.applying.insert(id, *key);
                    break Applying { gate: self, id };
                }
            }
            notified.await;
        };
        let out = f();
        drop(applying);
        out
    }

    /// Registers an INS that is about to answer `T`, if `owns` says the key is ours (checked
    /// under the gate, after any fence on the key is lifted).
    pub async fn begin_insert(
        &self,
        key: &HashKey,
        owns: impl Fn() -> bool,
    ) -> Option<Accepted<'_>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                // Not while a ring switch is pending: told `T` now, the INS would get `F` after
                // it where `N` (ask the new owner) is the answer.
                if !st.switching && !st.fence.is_some_and(|f| f.covers(key)) {
                    if !owns() {
                        return None;
                    }
                    let id = st.new_id();
                    st.inflight.insert(id, *key);
                    return Some(Accepted {
                        gate: self,
                        id,
                        key: *key,
                    });
                }
            }
            notified.await;
        }
    }

    /// Applies a registered INS with `f` (which checks ownership again and writes) as an
    /// applying write, unless a fence on its key has closed meanwhile. Waits while a ring
    /// switch is pending; the accepted INS stays in flight meanwhile (a fence waits for it).
    pub async fn finish_insert<T>(&self, accepted: Accepted<'_>, f: impl FnOnce() -> T) -> Pass<T> {
        let applying = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st
                    .fence
                    .is_some_and(|fe| fe.closed && fe.covers(&accepted.key))
                {
                    st.inflight.remove(&accepted.id);
                    drop(st);
                    self.changed.notify_waiters();
                    return Pass::Closed;
                }
                if !st.switching {
                    st.inflight.remove(&accepted.id);
                    st.applying.insert(accepted.id, accepted.key);
                    break Applying {
                        gate: self,
                        id: accepted.id,
                    };
                }
            }
            notified.await;
        };
        let out = f();
        drop(applying);
        Pass::Go(out)
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
    /// applied, then closes the fence to the rest, and waits for the writes in the arc still
    /// applying to end (they are past every check; each is one storage write). Returns how many
    /// were cut off.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        let mut cut_off = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let Some(fence) = st.fence else { return 0 };
                if cut_off.is_none() {
                    let left = st.inflight.values().filter(|k| fence.covers(k)).count();
                    if left == 0 || tokio::time::Instant::now() >= deadline {
                        if let Some(f) = st.fence.as_mut() {
                            f.closed = true;
                        }
                        cut_off = Some(left);
                    }
                }
                if let Some(left) = cut_off {
                    if !st.applying.values().any(|k| fence.covers(k)) {
                        return left;
                    }
                }
            }
            if cut_off.is_none() {
                let _ = tokio::time::timeout_at(deadline, notified).await;
            } else {
                notified.await;
            }
        }
    }

    /// Runs `f` once no write is applying, and lets no write start (nor an INS be told `T`)
    /// until it is done: a ring switch made here is seen atomically by every write. `f` runs
    /// without the gate's lock, so it may do storage work (the repair pass's removals).
    pub async fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut mine: Option<Switching<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if mine.is_none() && !st.switching {
                    st.switching = true;
                    mine = Some(Switching { gate: self });
                }
                if mine.is_some() && st.applying.is_empty() {
                    break;
                }
            }
            notified.await;
        }
        let out = f();
        drop(mine); // lets writes go on
        out
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

    use crate::protocol::test_key as k;

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
        let accepted = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        // The accepted INS is applied while the fence drains: it goes through.
        let g = gate.clone();
        let drain = tokio::spawn(async move { g.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished(), "the fence waits for the INS told T");
        assert!(matches!(
            gate.finish_insert(accepted, || 7).await,
            Pass::Go(7)
        ));
        assert_eq!(drain.await.unwrap(), 0);
        gate.lift();

        // A straggler: the fence stops waiting and it gets Closed.
        let accepted = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        assert_eq!(gate.drain(Duration::from_millis(50)).await, 1);
        assert!(matches!(
            gate.finish_insert(accepted, || 7).await,
            Pass::Closed
        ));
        gate.lift();
    }

    #[tokio::test]
    async fn an_accepted_insert_dropped_mid_value_frees_the_fence() {
        let gate = Arc::new(WriteGate::default());
        let accepted = gate.begin_insert(&k(15), || true).await.unwrap();
        assert!(gate.fence(k(10), k(20)));
        drop(accepted); // the connection died while the value was arriving
        assert_eq!(gate.drain(Duration::from_secs(5)).await, 0);
    }

    /// Writes of different keys apply side by side: each waits, inside its write, for the
    /// other to be inside its own (it would wait 10 s in vain if they ran one after another).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_of_different_keys_apply_side_by_side() {
        let gate = Arc::new(WriteGate::default());
        let (tx1, rx1) = std::sync::mpsc::channel::<()>();
        let (tx2, rx2) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let a = tokio::spawn(async move {
            g.pass(&k(1), move || {
                tx1.send(()).unwrap();
                rx2.recv_timeout(Duration::from_secs(10)).is_ok()
            })
            .await
        });
        let accepted = gate.begin_insert(&k(2), || true).await.unwrap();
        let b = gate
            .finish_insert(accepted, move || {
                tx2.send(()).unwrap();
                rx1.recv_timeout(Duration::from_secs(10)).is_ok()
            })
            .await;
        assert!(matches!(b, Pass::Go(true)), "the INS saw the REM applying");
        assert!(a.await.unwrap(), "the REM saw the INS applying");
    }

    /// A write past the gate when its arc is fenced (it checked the fence before) is still
    /// changing the storage: the fence's drain returns only after it, or the move would miss it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drain_waits_for_the_writes_applying_in_its_arc() {
        let gate = Arc::new(WriteGate::default());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (inside, is_inside) = std::sync::mpsc::channel::<()>();
        let (g, d) = (gate.clone(), done.clone());
        let write = tokio::spawn(async move {
            g.pass(&k(15), move || {
                inside.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                d.store(true, std::sync::atomic::Ordering::SeqCst);
            })
            .await
        });
        is_inside.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(gate.fence(k(10), k(20)));
        assert_eq!(gate.drain(Duration::from_millis(1)).await, 0);
        assert!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            "drained while a write in the arc was applying"
        );
        write.await.unwrap();
        gate.lift();
    }

    /// A ring switch waits for every write applying, and no write starts while it waits: the
    /// order is the write already inside, the switch, then the write that came during it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ring_switch_waits_for_writes_applying_and_holds_new_ones() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let (inside, is_inside) = std::sync::mpsc::channel::<()>();
        let (g, o) = (gate.clone(), order.clone());
        let first = tokio::spawn(async move {
            g.pass(&k(1), move || {
                inside.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                o.lock().unwrap().push("first write");
            })
            .await
        });
        is_inside.recv_timeout(Duration::from_secs(10)).unwrap();
        let (g, o) = (gate.clone(), order.clone());
        let switch =
            tokio::spawn(
                async move { g.exclusive(move || o.lock().unwrap().push("switch")).await },
            );
        // The switch is pending once the gate says so; a write arriving now must wait.
        while !gate.lock().switching {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (g, o) = (gate.clone(), order.clone());
        let second = tokio::spawn(async move {
            g.pass(&k(2), move || o.lock().unwrap().push("second write"))
                .await
        });
        first.await.unwrap();
        switch.await.unwrap();
        second.await.unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            vec!["first write", "switch", "second write"]
        );
        assert!(!gate.lock().switching);
    }

    #[tokio::test]
    async fn not_owned_keys_are_not_accepted() {
        let gate = WriteGate::default();
        assert!(gate.begin_insert(&k(1), || false).await.is_none());
    }
}
