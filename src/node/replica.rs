//! The replica's side of the extension `replicas/1` (docs/EXTENSIONS.md): one handler per
//! command. VRP stores copies (the newer version wins, no ownership asked: a copy is held for
//! a successor's arc); VGT reads one entry with its version; VDG and VKL describe a range so
//! that two copies of it can be compared without moving it (anti-entropy, `node::sync`).

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use super::{replication::MAX_BATCH, sync::LIST_MAX, Node};
use crate::error::{Error, Result};
use crate::protocol::{Connection, HashKey, Kind, Status};
use crate::storage::{Segments, Version, Versioned, MAX_DEPTH};

/// VRP: `n` versioned entries, each applied if newer than ours; `T` once all are durable, `F`
/// if one could not be stored (the rest of the batch is still read, so the connection stays
/// in step).
pub async fn vrp<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    n: u64,
) -> Result<()> {
    if n > MAX_BATCH {
        return Err(Error::Peer(format!(
            "a VRP batch of {n} entries, over the {MAX_BATCH} allowed"
        )));
    }
    let mut last = None;
    let mut failed = node.departed();
    for _ in 0..n {
        let key = conn.read_key().await?;
        let (version, value) = match conn.read_versioned().await {
            Err(e @ Error::ValueTooLarge { .. }) => {
                conn.write_status(Status::F).await?;
                conn.flush().await?;
                return Err(e);
            }
            r => r?,
        };
        if failed {
            continue;
        }
        let len = value.as_ref().map_or(0, Vec::len);
        let entry = Versioned {
            version: Version(version),
            value,
        };
        match node.storage_work(&key, len, || node.storage.apply(&key, entry)) {
            Ok((_, ticket)) => last = Some(ticket),
            Err(e) => {
                warn!(%key, "VRP: a copy not stored: {e}");
                failed = true;
            }
        }
    }
    // One flush for the batch: the group commit covers every change made before it.
    if let (false, Some(ticket)) = (failed, last) {
        if let Err(e) = node.storage.sync(ticket).await {
            warn!("VRP: copies not flushed: {e}");
            failed = true;
        }
    }
    conn.write_status(if failed { Status::F } else { Status::T })
        .await
}

/// VGT: `T` and the entry with its version (a value or a tombstone), or `F` for nothing.
pub async fn vgt<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    match super::blocking(|| node.storage.entry(&key))? {
        Some(e) => {
            conn.write_status(Status::T).await?;
            conn.write_versioned(e.version.0, e.value.as_deref()).await
        }
        None => conn.write_status(Status::F).await,
    }
}

/// VDG: the digests of `[from, to)` in `2^depth` segments, after a scan of the range (on a
/// blocking thread). A depth over `storage::MAX_DEPTH` is a broken peer: the connection ends.
pub async fn vdg<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    (from, to, depth): (HashKey, HashKey, u64),
) -> Result<()> {
    if depth > u64::from(MAX_DEPTH) {
        return Err(Error::Peer(format!(
            "VDG asked for depth {depth}, over {MAX_DEPTH}"
        )));
    }
    let segments = Segments::new(from, to, depth as u8)?;
    let digests = node
        .arc_work("digests of a range", move |s| s.digests(&segments))
        .await?;
    conn.write_int(digests.len() as u64).await?;
    for d in digests {
        conn.write_int(d).await?;
    }
    Ok(())
}

/// VKL: the keys of `[from, to)` with their versions, `T` before each; then `F` (that was
/// all) or `N` (stopped at `max`, at most `sync::LIST_MAX`: ask again after the last key).
pub async fn vkl<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    (from, to, max): (HashKey, HashKey, u64),
) -> Result<()> {
    let max = max.clamp(1, LIST_MAX) as usize;
    // One more than asked for says whether more follow; held in memory: at most LIST_MAX
    // keys and versions (about 120 KiB).
    let mut listed: Vec<(HashKey, Version, bool)> = node
        .arc_work("listing a range", move |s| {
            s.versions_in(&from, &to)
                .take(max + 1)
                .collect::<Result<Vec<_>>>()
        })
        .await?;
    let more = listed.len() > max;
    listed.truncate(max);
    for (key, version, tombstone) in listed {
        conn.write_status(Status::T).await?;
        conn.write_key(&key).await?;
        conn.write_int(version.0).await?;
        let kind = if tombstone {
            Kind::Tombstone
        } else {
            Kind::Value
        };
        conn.write_kind(kind).await?;
    }
    conn.write_status(if more { Status::N } else { Status::F })
        .await
}
