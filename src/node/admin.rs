//! The local admin channel: a unix socket `DIR/admin.sock`, reachable only on this machine
//! (mode 0600), never by network peers. `dht-store leave --data DIR` talks to it.
//!
//! Requests are one line (`LEAVE`); the node answers with `progress: …` lines while it works
//! and a last line `OK …` or `ERR …`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

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
    let listener = UnixListener::bind(&path).map_err(|e| {
        Error::Config(format!(
            "cannot create the admin socket {}: {e}",
            path.display()
        ))
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(node, stream).await {
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

async fn serve(node: Arc<Node>, stream: UnixStream) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(256)).read_line(&mut line).await?;
    match line.trim() {
        "LEAVE" => {
            info!("leave requested on the admin socket");
            let work = handoff::leave(&node);
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        let line = node.progress.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.line());
                        if let Some(line) = line {
                            let _ = w.write_all(format!("progress: {line}\n").as_bytes()).await;
                        }
                    }
                }
            };
            match result {
                Ok(msg) => {
                    info!("leave: {msg}");
                    w.write_all(format!("OK {msg}\n").as_bytes()).await?;
                    w.flush().await?;
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
