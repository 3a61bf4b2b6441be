//! Running a node: its flags (each overriding the config file and the environment) and the
//! signal that stops it; and `leave`, which asks the node on a directory to go.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::Args;

use dht_store::config::Config;
use dht_store::protocol::AddressEncoding;
use dht_store::{node, Error};

use super::FOUND;

/// Flags of a node; each overrides the config file and has a DHT_STORE_* variable.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Data directory (created if missing) [default: ./dht-data]
    #[arg(short, long, env = "DHT_STORE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// TCP port to listen on and advertise [default: 5000]
    #[arg(short, long, env = "DHT_STORE_PORT")]
    port: Option<u16>,
    /// IPv4 address to advertise and listen on; the node id is SHA-1 of "HOST:PORT"
    /// [default: 127.0.0.1]
    #[arg(long, env = "DHT_STORE_HOST", value_name = "IPV4")]
    host: Option<Ipv4Addr>,
    /// Address to bind instead of --host (e.g. 0.0.0.0)
    #[arg(long, env = "DHT_STORE_LISTEN", value_name = "IPV4")]
    listen: Option<Ipv4Addr>,
    /// Join the ring through this member; ignored when DIR already holds ring state
    #[arg(short, long, env = "DHT_STORE_JOIN", value_name = "HOST:PORT")]
    join: Option<String>,
    /// PeerAddress encoding of the ring [default: compact]
    #[arg(long, env = "DHT_STORE_ADDRESS_ENCODING", value_enum)]
    address_encoding: Option<AddressEncoding>,
    /// TOML configuration file (see config/node.toml)
    #[arg(short, long, env = "DHT_STORE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Largest value accepted, bytes [default: 67108864]
    #[arg(long, env = "DHT_STORE_MAX_VALUE_SIZE", value_name = "BYTES")]
    max_value_size: Option<u64>,
    /// Most connections served at once [default: 1024]
    #[arg(long, env = "DHT_STORE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds of silence between requests before a connection is closed; 0 never [default: 300]
    #[arg(long, env = "DHT_STORE_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Seconds a message or a write may stall before the connection is closed; 0 never
    /// [default: 30]
    #[arg(long, env = "DHT_STORE_IO_TIMEOUT_SECS", value_name = "SECS")]
    io_timeout: Option<u64>,
    /// sled page cache, MiB [default: 64]
    #[arg(long, env = "DHT_STORE_CACHE_CAPACITY_MB", value_name = "MIB")]
    cache_capacity_mb: Option<u64>,
    /// Copies of every entry kept besides its owner's, on the owner's predecessors; a write
    /// is answered T once all are durable; 0: one copy [default: 2]
    #[arg(long, env = "DHT_STORE_REPLICAS", value_name = "K")]
    replicas: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 [default: off]
    #[arg(long, env = "DHT_STORE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
}

impl NodeArgs {
    fn into_config(self) -> Result<Config, Error> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            data,
            port,
            host,
            address_encoding,
            max_value_size,
            max_connections,
            cache_capacity_mb,
            replicas
        );
        if let Some(v) = self.idle_timeout {
            c.idle_timeout_secs = v;
        }
        if let Some(v) = self.io_timeout {
            c.io_timeout_secs = v;
        }
        if self.listen.is_some() {
            c.listen = self.listen;
        }
        if self.join.is_some() {
            c.join = self.join;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        Ok(c)
    }
}

pub async fn run_node(args: NodeArgs) -> Result<(), Error> {
    let config = args.into_config()?;
    node::run(config, shutdown_signal()).await
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// `leave`: through the admin socket of the node running on `data`.
pub async fn leave(data: &Path) -> Result<u8, Error> {
    let msg = node::request_leave(data).await?;
    println!("{msg}");
    Ok(FOUND)
}
