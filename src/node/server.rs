//! The TCP server: accept loop with a connection limit, one task per connection, graceful
//! shutdown by broadcast (after tokio-rs/mini-redis).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, error, info, warn};

use super::{commands, Node};
use crate::error::Error;
use crate::protocol::Connection;

/// Tells a connection task that the node is shutting down.
#[derive(Debug)]
pub struct Shutdown {
    /// Set once the signal has been received.
    is_shutdown: bool,
    /// The broadcast the listener sends once.
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    fn new(notify: broadcast::Receiver<()>) -> Shutdown {
        Shutdown {
            is_shutdown: false,
            notify,
        }
    }

    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}

/// The accept loop's state.
struct Listener {
    /// Shared node state handed to every connection.
    node: Arc<Node>,
    /// The bound socket.
    listener: TcpListener,
    /// Caps the connections served at once; a permit is taken before `accept`, so that past
    /// the limit new peers wait in the kernel's backlog instead of costing us memory.
    limit: Arc<Semaphore>,
    /// Sends the shutdown signal to every connection task.
    notify_shutdown: broadcast::Sender<()>,
    /// Each connection task holds a clone; when all are dropped, every task has ended.
    shutdown_complete_tx: mpsc::Sender<()>,
}

/// One connection's task.
struct Handler {
    node: Arc<Node>,
    /// The framed stream.
    connection: Connection<TcpStream>,
    /// Who is on the other end, for logs.
    peer: String,
    /// Ends the loop between two requests when the node shuts down.
    shutdown: Shutdown,
    /// Dropped when the task ends (see `Listener::shutdown_complete_tx`).
    _shutdown_complete: mpsc::Sender<()>,
}

/// Serves `listener` until `shutdown` completes, then waits (up to the configured grace) for
/// the connection tasks to finish their current request.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: impl Future) {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel(1);
    let grace = Duration::from_secs(node.config.shutdown_grace_secs);
    let mut server = Listener {
        limit: Arc::new(Semaphore::new(node.config.max_connections)),
        node,
        listener,
        notify_shutdown,
        shutdown_complete_tx,
    };
    tokio::select! {
        res = server.run() => {
            if let Err(e) = res {
                error!("accept loop failed: {e}");
            }
        }
        _ = shutdown => {
            info!("shutting down: finishing requests in flight");
        }
    }
    let Listener {
        notify_shutdown,
        shutdown_complete_tx,
        ..
    } = server;
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    if tokio::time::timeout(grace, shutdown_complete_rx.recv())
        .await
        .is_err()
    {
        warn!("some connections were still busy after {grace:?}; stopping anyway");
    }
}

impl Listener {
    async fn run(&mut self) -> crate::Result<()> {
        loop {
            let permit = self
                .limit
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::ShuttingDown)?;
            let socket = self.accept().await?;
            let _ = socket.set_nodelay(true);
            let peer = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            let open = crate::metrics::connection_accepted();
            let mut handler = Handler {
                node: self.node.clone(),
                connection: Connection::new(
                    socket,
                    self.node.config.address_encoding,
                    self.node.config.limits(),
                ),
                peer,
                shutdown: Shutdown::new(self.notify_shutdown.subscribe()),
                _shutdown_complete: self.shutdown_complete_tx.clone(),
            };
            tokio::spawn(async move {
                handler.run().await;
                drop(open);
                drop(permit);
            });
        }
    }

    /// Accepts, backing off on errors such as running out of file descriptors.
    async fn accept(&mut self) -> crate::Result<TcpStream> {
        let mut backoff = 1;
        loop {
            match self.listener.accept().await {
                Ok((socket, _)) => return Ok(socket),
                Err(e) => {
                    if backoff > 64 {
                        return Err(e.into());
                    }
                    warn!("accept failed: {e}; retrying in {backoff}s");
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                    backoff *= 2;
                }
            }
        }
    }
}

impl Handler {
    /// Serves requests one after another until the peer closes, misbehaves, or we shut down.
    async fn run(&mut self) {
        while !self.shutdown.is_shutdown() {
            let req = tokio::select! {
                res = self.connection.read_request() => res,
                _ = self.shutdown.recv() => return,
            };
            let req = match req {
                Ok(Some(req)) => req,
                Ok(None) => return, // closed between requests: the normal end
                Err(e) => {
                    self.log_end(&e);
                    return;
                }
            };
            let timer = crate::metrics::request(&req);
            let result = commands::execute(&self.node, &mut self.connection, req).await;
            if let Some(t) = timer {
                t.done(self.connection.take_last_status(), result.is_err());
            }
            if let Err(e) = result {
                self.log_end(&e);
                return;
            }
        }
    }

    fn log_end(&self, e: &Error) {
        crate::metrics::connection_dropped(e);
        match e {
            Error::Io(_) | Error::Timeout => {
                debug!(peer = %self.peer, "connection ended: {e}")
            }
            _ => warn!(peer = %self.peer, "closing connection: {e}"),
        }
    }
}
