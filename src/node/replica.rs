//! The replica's side of the extension `replicas/1` (docs/EXTENSIONS.md): one handler per
//! command. VRP stores copies (the newer version wins, no ownership asked: a copy is held for
//! a successor's arc); VGT reads one entry with its version; VDG and VKL describe a range so
//! that two copies of it can be compared without moving it (anti-entropy, `node::sync`).

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use super::{replication::MAX_BATCH, Node};
use crate::error::{Error, Result};
use crate::protocol::{Connection, HashKey, Status};
use crate::storage::{Version, Versioned};

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
