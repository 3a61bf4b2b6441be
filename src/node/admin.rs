//! The local admin channel: a unix socket `DIR/admin.sock`, reachable only on this machine
//! (mode 0600), never by network peers. `dht-store leave`, `backup` and `status --data DIR`
//! talk to it.
//!
//! Requests are one line (`LEAVE`, `BACKUP PATH`, `STATUS`); the node answers with `progress: …`
//! lines while it works and a last line `OK …` or `ERR …` (for `STATUS`, `OK` and one line of
//! JSON, a [`NodeStatus`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::status::{self, Backups, NodeStatus};
use super::{handoff, Node};
use crate::error::{Error, Result};

/// Name of the socket inside the data directory.
pub const SOCKET: &str = "admin.sock";

/// The running admin listener; removes its socket file when closed.
pub struct Admin {
    /// The socket file, removed on close.
    path: PathBuf,
    /// The accept task.
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    pub fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `DIR/admin.sock` (replacing a stale one: we hold the directory's lock, so no other
/// node uses it) and serves it.
pub fn start(node: Arc<Node>) -> Result<Admin> {
    let path = node.storage.dir().join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| Error::IoAt {
        what: format!("cannot create the admin socket {}", path.display()),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let backups = Arc::new(Backups::default());
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (node, backups) = (node.clone(), backups.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve(node, backups, stream).await {
                            warn!("admin connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("admin socket: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Admin { path, task })
}

async fn serve(node: Arc<Node>, backups: Arc<Backups>, stream: UnixStream) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    if let Some(path) = line.trim().strip_prefix("BACKUP ") {
        return backup(node, &backups, PathBuf::from(path), &mut w).await;
    }
    match line.trim() {
        "STATUS" => {
            let s = status::status(&node, &backups).await;
            let reply = match serde_json::to_string(&s) {
                Ok(json) => format!("OK {json}\n"),
                Err(e) => format!("ERR cannot encode the status: {e}\n"),
            };
            w.write_all(reply.as_bytes()).await?;
        }
        "LEAVE" => {
            info!("leave requested on the admin socket");
            let work = handoff::leave(&node);
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        let line = node.progress.line();
                        if let Some(line) = line {
                            let _ = w.write_all(format!("progress: {line}\n").as_bytes()).await;
                        }
                    }
                }
            };
            match result {
                Ok(msg) => {
                    info!("leave: {msg}");
                    let _ = w.write_all(format!("OK {msg}\n").as_bytes()).await;
                    let _ = w.flush().await;
                    drop(w);
                    if let Err(e) = handoff::finish_departure(&node).await {
                        warn!("emptying the data directory after the leave: {e} (the next start finishes it)");
                    }
                    node.stop.notify_one();
                }
                Err(e) => {
                    warn!("leave failed: {e}");
                    w.write_all(format!("ERR {e}\n").as_bytes()).await?;
                }
            }
        }
        other => {
            w.write_all(format!("ERR unknown admin request {other:?}\n").as_bytes())
                .await?;
        }
    }
    Ok(())
}

/// Writes a backup of the running node to `path` (a point-in-time cut: writes go on meanwhile),
/// sending `progress-backup: ENTRIES BYTES` lines every second, then `OK …` or `ERR …`.
async fn backup(
    node: Arc<Node>,
    backups: &Arc<Backups>,
    path: PathBuf,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    info!("backup to {} requested on the admin socket", path.display());
    // Shown by `status` until this returns, however the backup ends.
    let guard = backups.begin(path.clone());
    let counters = guard.run.clone();
    let work = {
        let (node, counters, path) = (node.clone(), counters.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            let tick = |n: u64, b: u64| {
                let n0 = counters.entries.swap(n, Ordering::Relaxed);
                let b0 = counters.bytes.swap(b, Ordering::Relaxed);
                crate::metrics::backup_progress(n.saturating_sub(n0), b.saturating_sub(b0));
            };
            crate::backup::write_archive(&node.storage, &path, &tick)
        })
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let line = format!(
                    "progress-backup: {} {}\n",
                    counters.entries.load(Ordering::Relaxed),
                    counters.bytes.load(Ordering::Relaxed)
                );
                let _ = w.write_all(line.as_bytes()).await;
            }
        }
    };
    crate::metrics::backup_done(matches!(result, Ok(Ok(_))));
    let reply = match result {
        Ok(Ok(s)) => {
            info!(
                "backup to {}: {} entries, {} bytes",
                path.display(),
                s.entries,
                s.bytes
            );
            format!("OK {} {} {}\n", s.entries, s.bytes, s.file_bytes)
        }
        Ok(Err(e)) => {
            warn!("backup to {} failed: {e}", path.display());
            format!("ERR {e}\n")
        }
        Err(e) => format!("ERR the backup task failed: {e}\n"),
    };
    w.write_all(reply.as_bytes()).await?;
    Ok(())
}

/// The client side of `dht-store backup` on a running node: `Ok(None)` if no node runs on
/// `dir` (no admin socket answers), else the archive's (entries, value bytes, file bytes).
/// `tick` gets the progress lines.
pub async fn request_backup(
    dir: &Path,
    out: &Path,
    tick: crate::backup::Tick<'_>,
) -> Result<Option<(u64, u64, u64)>> {
    let Ok(stream) = UnixStream::connect(dir.join(SOCKET)).await else {
        return Ok(None);
    };
    let (r, mut w) = stream.into_split();
    w.write_all(format!("BACKUP {}\n", out.display()).as_bytes())
        .await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("progress-backup:") | Some("OK") => {
                let nums: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
                if let [n, b, ..] = nums[..] {
                    tick.entry(n, b);
                }
                if line.starts_with("OK") {
                    if let [n, b, f] = nums[..] {
                        return Ok(Some((n, b, f)));
                    }
                }
            }
            _ => {
                if let Some(msg) = line.strip_prefix("ERR ") {
                    return Err(Error::Archive(format!("the node's backup failed: {msg}")));
                }
            }
        }
    }
    Err(Error::Archive(
        "the node closed the admin connection before the backup ended".into(),
    ))
}

/// The client side of `dht-store leave --data DIR`: asks the node running on DIR to leave,
/// printing its progress lines to stderr. `Ok(message)` once the predecessor's `T` arrived.
pub async fn request_leave(dir: &Path) -> Result<String> {
    let path = dir.join(SOCKET);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        Error::Peer(format!(
            "no node is running on {} (cannot reach {}: {e})",
            dir.display(),
            path.display()
        ))
    })?;
    let (r, mut w) = stream.into_split();
    w.write_all(b"LEAVE\n").await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(msg) = line.strip_prefix("OK ") {
            return Ok(msg.to_string());
        }
        if let Some(msg) = line.strip_prefix("ERR ") {
            return Err(Error::Peer(format!("the node did not leave: {msg}")));
        }
        eprintln!("{line}");
    }
    Err(Error::Peer(
        "the node closed the admin connection without an answer: the leave may not have completed"
            .into(),
    ))
}

/// The client side of `dht-store status --data DIR`: the status of the node running on DIR,
/// asked on its admin socket. An error naming DIR if no node runs there.
pub async fn request_status(dir: &Path) -> Result<NodeStatus> {
    let path = dir.join(SOCKET);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|e| no_node(dir, &path, e))?;
    let (r, mut w) = stream.into_split();
    w.write_all(b"STATUS\n").await?;
    let mut line = String::new();
    // The node's count stops after 5 s (node::status): a node silent for longer is wedged.
    let wait = std::time::Duration::from_secs(30);
    tokio::time::timeout(wait, BufReader::new(r).read_line(&mut line))
        .await
        .map_err(|_| {
            Error::Peer(format!(
                "the node on {} did not answer STATUS within {} s",
                dir.display(),
                wait.as_secs()
            ))
        })??;
    if let Some(json) = line.trim_end().strip_prefix("OK ") {
        return serde_json::from_str(json).map_err(|e| {
            Error::Peer(format!(
                "the node on {} sent a status this build cannot read: {e}",
                dir.display()
            ))
        });
    }
    match line.trim_end().strip_prefix("ERR ") {
        Some(msg) => Err(Error::Peer(format!(
            "the node on {} gave no status: {msg}",
            dir.display()
        ))),
        None => Err(Error::Peer(format!(
            "the node on {} closed the admin connection without a status",
            dir.display()
        ))),
    }
}

/// "no node is running on DIR": the admin socket is absent or nobody listens on it.
fn no_node(dir: &Path, path: &Path, e: std::io::Error) -> Error {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no admin socket".to_string(),
        std::io::ErrorKind::ConnectionRefused => format!("nobody listens on {}", path.display()),
        _ => format!("cannot reach {}: {e}", path.display()),
    };
    Error::Peer(format!("no node is running on {} ({why})", dir.display()))
}
