//! One handler per protocol command: each reads what follows its request on the wire, asks the
//! [`Node`], and writes the answer exactly as PROTOCOL.md sections 3 to 5 say.
//!
//! A handler returns an error only when the connection must end (a peer that broke the
//! protocol, a value over the limit, a dead socket); a failed request is an answer (`F`).

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::{handoff, Node, Written};
use crate::error::Result;
use crate::protocol::{Connection, HashKey, Kind, Request, Status};
use crate::storage::{Version, Versioned};

/// Runs one request to its end and flushes the answer.
pub async fn execute<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    req: Request,
) -> Result<()> {
    match req {
        Request::Ins(key) => ins(node, conn, key).await?,
        Request::Rem(key) => rem(node, conn, key).await?,
        Request::Get(key) => get(node, conn, key).await?,
        Request::Exi(key) => exi(node, conn, key).await?,
        Request::Own(key) => {
            let answer = node.own_answer(&key).await;
            conn.write_addr(&answer).await?
        }
        // CON and DIS are whole exchanges of their own: see `handoff`.
        Request::Con(joiner) => {
            let plain = handoff::Handing::Streamed(handoff::Entries::Plain);
            handoff::serve_con(node, conn, joiner, plain).await?
        }
        Request::Dis(leaver) => {
            handoff::serve_dis(node, conn, leaver, handoff::Entries::Plain).await?
        }
        // The versioned forms (docs/EXTENSIONS.md): the same exchanges, entries with versions.
        Request::Vcn(joiner) => {
            let versioned = handoff::Handing::Streamed(handoff::Entries::Versioned);
            handoff::serve_con(node, conn, joiner, versioned).await?
        }
        // `compared-join/1`: a joiner that holds most of its arc compares instead.
        Request::Vcc(joiner) => {
            handoff::serve_con(node, conn, joiner, handoff::Handing::Compared).await?
        }
        Request::Vds(leaver) => {
            handoff::serve_dis(node, conn, leaver, handoff::Entries::Versioned).await?
        }
        Request::Vin(key) => vin(node, conn, key).await?,
        // The extension `replicas/1`: see `replica`.
        Request::Vrp(n) => super::replica::vrp(node, conn, n).await?,
        Request::Vgt(key) => super::replica::vgt(node, conn, key).await?,
        Request::Vdg(from, to, depth) => super::replica::vdg(node, conn, (from, to, depth)).await?,
        Request::Vkl(from, to, max) => super::replica::vkl(node, conn, (from, to, max)).await?,
        Request::Pul => conn.write_status(Status::T).await?,
        // INF counts the keys with a scan (up to `counts::BUDGET`): inline, a full one stalled
        // the tasks queued on this worker, and a predecessor whose PULs went unanswered took
        // us for dead (seen with 8M entries in the handoff bench).
        Request::Inf => {
            let info = super::blocking(|| node.info());
            conn.write_value(info.as_bytes()).await?
        }
        Request::Abd => {
            let succ = node.ring().successor().addr;
            conn.write_addr(&succ).await?
        }
    }
    conn.flush().await
}

/// INS: `N` if not ours; else `T`, read the Value, store it, flush, `T` (or `F`).
async fn ins<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    let Some(accepted) = node.gate.begin_insert(&key, || node.owns(&key)).await else {
        return conn.write_status(Status::N).await;
    };
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    let value = conn.read_value_or_refuse().await?;
    let status = match node.finish_insert(accepted, value).await {
        Ok(Written::Done) => Status::T,
        Ok(_) => {
            debug!(%key, "INS: the key stopped being ours while its value arrived");
            Status::F
        }
        Err(e) => {
            warn!(%key, "INS not stored: {e}");
            Status::F
        }
    };
    conn.write_status(status).await
}

/// VIN (docs/EXTENSIONS.md): as INS, but the entry carries its version and may be a
/// tombstone; it is stored only if newer than ours, and `T` says we hold it or a newer one.
async fn vin<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    let Some(accepted) = node.gate.begin_insert(&key, || node.owns(&key)).await else {
        return conn.write_status(Status::N).await;
    };
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    let version = Version(conn.read_int().await?);
    let value = match conn.read_kind().await? {
        Kind::Tombstone => None,
        Kind::Value => Some(conn.read_value_or_refuse().await?),
    };
    let status = match node
        .finish_apply(accepted, Versioned { version, value })
        .await
    {
        Ok(Written::Done) => Status::T,
        Ok(_) => Status::F,
        Err(e) => {
            warn!(%key, "VIN not stored: {e}");
            Status::F
        }
    };
    conn.write_status(status).await
}

/// REM: `N` if not ours, `T` removed (flushed), `F` absent (or the removal failed).
async fn rem<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    let status = match node.remove(&key).await {
        Ok(Written::Done) => Status::T,
        Ok(Written::Absent) => Status::F,
        Ok(Written::NotMine) => Status::N,
        Err(e) => {
            warn!(%key, "REM failed: {e}");
            Status::F
        }
    };
    conn.write_status(status).await
}

/// GET: `N` not ours, `F` absent, `T` and the Value.
async fn get<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    // Ownership is checked before and after the read, not held (the ring lock would hold up
    // a ring switch, and every request behind it, for the whole read of a large value): a
    // key handed over meanwhile may already be dropped here, and its answer is `N`.
    let found = if node.owns(&key) {
        let read = match node.storage.get_within(&key, super::BLOCKING_ABOVE) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => super::blocking(|| node.storage.get(&key)),
            Err(e) => Err(e),
        };
        node.owns(&key).then_some(read)
    } else {
        None
    };
    match found {
        None => conn.write_status(Status::N).await,
        Some(Ok(None)) => conn.write_status(Status::F).await,
        Some(Ok(Some(v))) => {
            conn.write_status(Status::T).await?;
            conn.write_value(&v).await
        }
        Some(Err(e)) => {
            // The protocol has no error answer after GET's key: F ("absent") would be a lie
            // that a client may act on, so the connection ends instead.
            Err(e)
        }
    }
}

/// EXI: `N` not ours, `T` present, `F` absent.
async fn exi<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    key: HashKey,
) -> Result<()> {
    // As GET: ownership checked before and after the read, no lock held across it.
    let found = if node.owns(&key) {
        let read = node.storage.contains(&key);
        node.owns(&key).then_some(read)
    } else {
        None
    };
    match found {
        None => conn.write_status(Status::N).await,
        Some(Ok(true)) => conn.write_status(Status::T).await,
        Some(Ok(false)) => conn.write_status(Status::F).await,
        Some(Err(e)) => Err(e),
    }
}
