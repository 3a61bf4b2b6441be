//! The stream of a handoff's entries: out of sled onto the socket (`send_arc`, the sender of
//! a CON or a DIS) and off the socket into sled (`receive_arc`, the receiver). On each side one
//! blocking thread does the sled work and meets the socket task in a channel of
//! [`IMPORT_QUEUE`] batches, so memory stays bounded whatever the arc holds.

use tokio::io::{AsyncRead, AsyncWrite};

use super::BATCH_BYTES;
use crate::error::{Error, Result};
use crate::fault;
use crate::node::{Node, Progress};
use crate::protocol::{Connection, HashKey, Kind, Status};
use crate::ring::in_arc;
#[cfg(doc)]
use crate::storage::BATCH_ENTRIES;
use crate::storage::{
    BatchWrite, Batcher, Import, Storage, Value, Version, Versioned, IMPORT_QUEUE,
};

/// A receiver makes each window of this many bytes durable as it goes (see [`Import`]):
/// smaller windows made it wait for the flusher too often (BENCHMARKS.md, "Handoff").
const SYNC_EVERY: u64 = 256 << 20;

/// What the reading thread of [`send_arc`] hands to the socket task.
enum Outgoing {
    /// The number of entries in the arc: the Int sent first.
    Count(u64),
    /// The next entries in ring order (a plain stream carries values only).
    Entries(Vec<(HashKey, Versioned<Value>)>),
}

/// How a handoff's entries travel: as PROTOCOL.md section 4 says (`HashKey Value`, live
/// entries only), or with their versions and tombstones (extension `versions/1`, between peers
/// that advertised it: docs/EXTENSIONS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entries {
    Plain,
    Versioned,
}

/// Streams the entries of `[from, to)` out of sled: the Int count, then each HashKey and Value.
/// The arc must be fenced, so that the count and the entries agree.
///
/// One blocking thread counts and reads the arc while this task writes the socket: sled's
/// page loads stay off the async workers (and in one malloc arena), and reading overlaps
/// sending. They meet in a channel of [`IMPORT_QUEUE`] batches (`storage::Batcher`: at most
/// [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`] bytes), so memory stays bounded whatever the arc holds.
pub(super) async fn send_arc<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    from: &HashKey,
    to: &HashKey,
    progress: &Progress,
    step: &str,
    entries: Entries,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Outgoing>>(IMPORT_QUEUE);
    let reader = {
        let storage = node.storage.clone();
        let (from, to) = (*from, *to);
        tokio::task::spawn_blocking(move || read_arc(&storage, &from, &to, entries, &tx))
    };
    let result = stream_arc(conn, &mut rx, progress, step, entries).await;
    // Stops the reader if we stopped first; it ends at its next send.
    drop(rx);
    let _ = reader.await;
    result
}

/// The reading side of [`send_arc`]: count, then batches, until the arc ends or the socket
/// task has gone.
fn read_arc(
    storage: &Storage,
    from: &HashKey,
    to: &HashKey,
    entries: Entries,
    tx: &tokio::sync::mpsc::Sender<Result<Outgoing>>,
) {
    let count = match entries {
        Entries::Plain => storage.count_arc(from, to),
        Entries::Versioned => storage.count_arc_versioned(from, to),
    };
    let n = match count {
        Ok(n) => n,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    if tx.blocking_send(Ok(Outgoing::Count(n))).is_err() {
        return;
    }
    let mut batcher = Batcher::new(BATCH_BYTES);
    let iter: Box<dyn Iterator<Item = Result<(HashKey, Versioned<Value>)>>> = match entries {
        // Live entries only, as plain values: the count above counted those.
        Entries::Plain => Box::new(storage.iter_arc(from, to).map(|r| {
            r.map(|(k, v)| {
                (
                    k,
                    Versioned {
                        version: Version::ZERO,
                        value: Some(v),
                    },
                )
            })
        })),
        Entries::Versioned => Box::new(storage.iter_arc_versioned(from, to)),
    };
    for entry in iter {
        match entry {
            Ok((k, v)) => {
                if let Some(full) = batcher.push(k, v) {
                    if tx.blocking_send(Ok(Outgoing::Entries(full))).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if let Some(last) = batcher.finish() {
        let _ = tx.blocking_send(Ok(Outgoing::Entries(last)));
    }
}

/// The socket side of [`send_arc`].
async fn stream_arc<S: AsyncRead + AsyncWrite>(
    conn: &mut Connection<S>,
    rx: &mut tokio::sync::mpsc::Receiver<Result<Outgoing>>,
    progress: &Progress,
    step: &str,
    entries: Entries,
) -> Result<u64> {
    let lost = || Error::Flush("the thread reading the arc stopped".into());
    let n = match rx.recv().await.ok_or_else(lost)?? {
        Outgoing::Count(n) => n,
        Outgoing::Entries(_) => return Err(lost()),
    };
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    fault::point(&format!("{step}:before-count")).await;
    conn.write_int(n).await?;
    let mut sent = 0u64;
    while let Some(msg) = rx.recv().await {
        let Outgoing::Entries(batch) = msg? else {
            return Err(lost());
        };
        for (k, v) in batch {
            if sent == n {
                return Err(Error::Peer(format!(
                    "the arc changed while it was fenced: more than the {n} entries counted"
                )));
            }
            conn.write_key(&k).await?;
            let len = write_entry(conn, &v, entries).await?;
            sent += 1;
            progress.add(1, len);
            crate::metrics::handoff(crate::metrics::Direction::Sent, 1, len);
            if sent == n / 2 && n > 1 {
                conn.flush().await?;
                fault::point(&format!("{step}:mid-stream")).await;
            }
        }
    }
    if sent != n {
        return Err(Error::Peer(format!(
            "the arc changed while it was fenced: {sent} entries sent of {n} counted"
        )));
    }
    conn.flush().await?;
    fault::point(&format!("{step}:after-last-entry")).await;
    Ok(n)
}

/// Writes one entry after its key; returns its value bytes.
async fn write_entry<S: AsyncRead + AsyncWrite>(
    conn: &mut Connection<S>,
    e: &Versioned<Value>,
    entries: Entries,
) -> Result<u64> {
    match (entries, &e.value) {
        (Entries::Plain, Some(v)) => conn.write_value(v).await?,
        (Entries::Plain, None) => {
            return Err(Error::Flush(
                "a tombstone in a plain stream (the reader skips them)".into(),
            ))
        }
        (Entries::Versioned, value) => {
            conn.write_int(e.version.0).await?;
            match value {
                Some(v) => {
                    conn.write_kind(Kind::Value).await?;
                    conn.write_value(v).await?;
                }
                None => conn.write_kind(Kind::Tombstone).await?,
            }
        }
    }
    Ok(e.value.as_ref().map_or(0, |v| v.len() as u64))
}

/// Receives `n` entries of the arc `[from, to)` into sled in bounded batches, and returns once
/// they are all durable. An entry outside the arc or over the value limit aborts (`F`).
///
/// This task reads the socket and gathers batches; the [`Import`]'s thread writes them to
/// sled and makes each window of [`SYNC_EVERY`] bytes durable as it goes, so reading the next
/// batch overlaps writing the last. At most [`IMPORT_QUEUE`] batches wait between them.
pub(super) async fn receive_arc<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    arc: &Incoming<'_>,
    progress: &Progress,
) -> Result<()> {
    // A plain stream comes from the arc's owner (PROTOCOL.md 6: its entries overwrite older
    // copies): they take one version of ours, newer than anything we hold.
    let stamp = match arc.entries {
        Entries::Plain => Some(node.storage.next_version()?),
        Entries::Versioned => None,
    };
    let import = Import::start(node.storage.clone(), arc.how, Some(SYNC_EVERY))?;
    let read = read_entries(conn, arc, progress, &import, stamp).await;
    // A write error explains a read side that stopped early because the writer went away.
    import.finish_async().await?;
    read
}

/// What a receiver takes in.
pub(super) struct Incoming<'a> {
    /// The entry count the sender announced.
    pub(super) n: u64,
    /// The arc `[from, to)` the entries must lie in.
    pub(super) from: &'a HashKey,
    pub(super) to: &'a HashKey,
    /// The exchange, as named by its fault points (`dis-recv`, `con-join`).
    pub(super) step: &'static str,
    /// Keys first only when an interrupted receive drops everything it received (see
    /// [`BatchWrite::KeysFirst`]).
    pub(super) how: BatchWrite,
    /// How the entries travel.
    pub(super) entries: Entries,
}

/// The socket side of [`receive_arc`].
async fn read_entries<S: AsyncRead + AsyncWrite>(
    conn: &mut Connection<S>,
    arc: &Incoming<'_>,
    progress: &Progress,
    import: &Import,
    stamp: Option<Version>,
) -> Result<()> {
    let Incoming {
        n, from, to, step, ..
    } = *arc;
    let mut batcher = Batcher::new(BATCH_BYTES);
    for i in 0..n {
        let key = conn.read_key().await?;
        if !in_arc(&key, from, to) {
            conn.write_status(Status::F).await?;
            conn.flush().await?;
            return Err(Error::Peer(format!(
                "entry {key} lies outside the arc [{from}, {to}) being handed over"
            )));
        }
        let (version, kind) = match stamp {
            Some(v) => (v, Kind::Value),
            None => (Version(conn.read_int().await?), conn.read_kind().await?),
        };
        let value = match kind {
            Kind::Tombstone => None,
            Kind::Value => Some(conn.read_value_or_refuse().await?),
        };
        let len = value.as_ref().map_or(0, |v| v.len() as u64);
        progress.add(1, len);
        crate::metrics::handoff(crate::metrics::Direction::Received, 1, len);
        if let Some(full) = batcher.push(key, Versioned { version, value }) {
            import.send(full).await?;
        }
        if i + 1 == n / 2 && n > 1 {
            fault::point(&format!("{step}:mid-stream")).await;
        }
    }
    if let Some(last) = batcher.finish() {
        import.send(last).await?;
    }
    Ok(())
}
