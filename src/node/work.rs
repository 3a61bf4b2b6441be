//! Where the node's storage work runs, in one rule:
//!
//! - Work that grows with an arc or the whole store (range scans, range deletes, batch imports,
//!   INF's count) runs off the runtime's workers: on a blocking thread of its own
//!   ([`Node::arc_work`], [`Node::delete_arc`]; a handoff's stream has one per side), or, where
//!   the caller holds only a borrow of the node, in [`blocking`].
//! - Work on one key runs on the request's task, unless it handles a value over
//!   [`BLOCKING_ABOVE`]: then in [`blocking`] (`Node::storage_work`), since handing the thread
//!   over costs more than a small value's work.
//! - No lock (the ring's, the gate's) is held across storage work: ownership is checked before
//!   and after it (GET, EXI), or the work is a write that passed the gate (INS, REM).

use std::sync::Arc;

use super::Node;
use crate::error::{Error, Result};
use crate::protocol::HashKey;
use crate::storage::Storage;

/// Values longer than this are written, read and removed in [`blocking`] (an INS also when
/// it replaces one); shorter ones on the runtime's thread, as handing the thread over costs
/// more than their storage work (BENCHMARKS.md, "Figures behind the code").
pub const BLOCKING_ABOVE: u64 = 256 << 10;

/// Runs storage work that may take long (a large value) on
/// this thread, telling a multi-threaded runtime to move its other tasks elsewhere meanwhile,
/// so that one large write does not stall the requests queued behind it on this worker.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Node {
    /// Runs `f`, storage work that grows with an arc or the store, on a blocking thread.
    pub async fn arc_work<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Storage) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let storage: Arc<Storage> = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&storage))
            .await
            .map_err(|e| Error::Flush(format!("the thread {what} failed: {e}")))?
    }

    /// Deletes every entry of `[from, to)` (`from == to`: all of them) and waits until that is
    /// durable; returns how many there were.
    pub async fn delete_arc(&self, from: &HashKey, to: &HashKey) -> Result<u64> {
        let (from, to) = (*from, *to);
        let (n, t) = self
            .arc_work("deleting an arc", move |s| s.delete_arc(&from, &to))
            .await?;
        self.storage.sync(t).await?;
        Ok(n)
    }
}
