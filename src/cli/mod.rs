//! The command line: what `dht-store` accepts (clap definitions) and what each client command
//! prints. The binary's `main.rs` sets up logging and the runtime and calls [`run`]; everything
//! here uses the library only through its public API.

mod archive;
mod completions;
mod json;
mod keys;
pub mod node;
mod ring;
mod show;
mod status;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use dht_store::client::{self, BadPeer, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::Error;

pub use node::NodeArgs;

/// A persistent storage node for a distributed hash table.
///
/// Without a subcommand, runs a node: it serves the DHT wire protocol on HOST:PORT from a sled
/// database in DIR, and resumes its place and data from DIR after any restart. Without --join
/// it starts a ring of one. Logs go to stderr (filter with RUST_LOG, e.g. RUST_LOG=dht_store=debug);
/// SIGINT or SIGTERM finish requests in flight, flush and exit 0.
///
/// Settings come from built-in defaults, then --config FILE (TOML, see config/node.toml), then
/// DHT_STORE_* environment variables, then flags.
///
/// The other subcommands are clients: they hash KEY with SHA-1, find its owner by walking OWN
/// from --peer, and exit 0 (done / found), 1 (absent) or 2 (error).
#[derive(Parser, Debug)]
#[command(name = "dht-store", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store VALUE (or --file PATH, or stdin) under KEY at its owner
    Put(PutArgs),
    /// Print the value under KEY to stdout; exit 1 if absent
    Get(KeyArgs),
    /// Exit 0 if KEY is stored, 1 if not
    Exists(KeyArgs),
    /// Remove KEY; exit 1 if it was absent
    Rm(KeyArgs),
    /// Print the owner of KEY and the hops the OWN walk took
    Owner {
        #[command(flatten)]
        key: KeyArgs,
        /// Print one JSON object: key, owner, hops and the path of peers walked
        #[arg(long)]
        json: bool,
    },
    /// Print a peer's INF text
    Info {
        #[command(flatten)]
        peer: PeerArgs,
        /// Print one JSON object: the INF fields of a dht-store node, and the raw text
        #[arg(long)]
        json: bool,
    },
    /// Print what the node running on DIR says of itself: arc, neighbours, keys, bytes,
    /// uptime, a handoff or backup in progress. Uses DIR/admin.sock, never the network; exits
    /// 2 if no node runs on DIR.
    Status {
        /// Data directory of the running node
        #[arg(short, long, env = "DHT_STORE_DATA", value_name = "DIR")]
        data: PathBuf,
        /// Print one JSON object (field names in README.md)
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `dht-store completions bash >
    /// /etc/bash_completion.d/dht-store`)
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Walk the ring from --peer (ABD until back at it) and list its members in ring order
    /// with what each one's INF reports (id, share of the circle, keys, successors, handoff);
    /// --svg FILE draws it. Exits 2 if the ring does not close
    Ring(ring::RingArgs),
    /// Make the node running on DIR hand everything it owns to its predecessor (DIS) and
    /// exit; exits 0 once the predecessor confirmed. Uses DIR/admin.sock, never the network.
    Leave {
        /// Data directory of the running node
        #[arg(short, long, env = "DHT_STORE_DATA", value_name = "DIR")]
        data: PathBuf,
    },
    /// Write a backup archive of a data directory: through the running node (a point-in-time
    /// copy while writes go on) or, when no node runs on DIR, read directly
    Backup {
        /// The node's data directory
        #[arg(short, long, env = "DHT_STORE_DATA", value_name = "DIR")]
        data: PathBuf,
        /// The archive to write (a new file unless --force)
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Check a backup archive and print its header and totals
    Verify {
        /// The archive
        file: PathBuf,
        /// Print one JSON object: header and totals
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup archive into a new data directory (verified first; nothing is left at
    /// the target if anything is wrong)
    Restore {
        /// The archive
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The data directory to create
        #[arg(short, long, value_name = "DIR")]
        data: PathBuf,
        /// Replace a non-empty directory (never one a node is running on)
        #[arg(long)]
        force: bool,
    },
}

/// Where a client command starts, and how long it waits.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Any peer of the ring: HOST:PORT (a name such as localhost:5000 is looked up), or a
    /// PORT on 127.0.0.1
    #[arg(
        short,
        long,
        env = "DHT_STORE_PEER",
        default_value = "127.0.0.1:5000",
        value_name = "HOST:PORT"
    )]
    peer: String,
    /// PeerAddress encoding of the ring
    #[arg(long, env = "DHT_STORE_ADDRESS_ENCODING", value_enum, default_value_t = AddressEncoding::Compact)]
    address_encoding: AddressEncoding,
    /// Seconds to wait for a peer to accept a connection, and for each answer
    #[arg(
        short,
        long,
        env = "DHT_STORE_TIMEOUT",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    timeout: f64,
}

impl PeerArgs {
    fn peer(&self) -> Result<PeerAddr, Error> {
        resolve_peer(&self.peer)
    }

    fn timeout(&self) -> Result<Duration, Error> {
        Duration::try_from_secs_f64(self.timeout)
            .ok()
            .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--timeout must be a number of seconds above 0 and at most 86400; got {}",
                    self.timeout
                ))
            })
    }

    /// What a peer that did not answer may mean, and what to try.
    fn explain(&self, e: Error) -> Error {
        match e {
            Error::NoAnswer { .. } => Error::Usage(format!(
                "{e}: check that it is a dht-store peer and not overloaded, and that its ring uses \
                 {} addresses (else give --address-encoding {}); --timeout SECS waits longer",
                self.address_encoding,
                match self.address_encoding {
                    AddressEncoding::Compact => AddressEncoding::Text,
                    AddressEncoding::Text => AddressEncoding::Compact,
                }
            )),
            e => e,
        }
    }
}

/// `HOST:PORT`, a host name looked up (its first IPv4 address), or a bare port on 127.0.0.1.
fn resolve_peer(s: &str) -> Result<PeerAddr, Error> {
    client::resolve_peer(s).map_err(|e| {
        Error::Usage(match e {
            BadPeer::NotAnAddress(e) => format!(
                "--peer {s}: not host:port (a name or an IPv4 address and a port) or a port ({e})"
            ),
            BadPeer::NoIpv4 => {
                format!("--peer {s}: the name has no IPv4 address (peers are IPv4)")
            }
        })
    })
}

/// Where a keyed request starts and how far its OWN walk may go.
#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(flatten)]
    peer: PeerArgs,
    /// Longest OWN walk before giving up
    #[arg(long, default_value_t = 64)]
    max_hops: usize,
}

impl RouteArgs {
    fn router(&self) -> Result<Router, Error> {
        Ok(Router::new(self.peer.peer()?, self.peer.address_encoding)
            .with_max_hops(self.max_hops)
            .with_timeout(self.peer.timeout()?))
    }
}

/// A key: user text hashed with SHA-1, or a HashKey given directly.
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The key (its UTF-8 bytes are hashed with SHA-1)
    #[arg(required_unless_present = "hash")]
    key: Option<String>,
    /// Give the 40-hex-digit HashKey directly instead of KEY
    #[arg(long, value_name = "HEX", conflicts_with = "key")]
    hash: Option<String>,
    #[command(flatten)]
    route: RouteArgs,
}

impl KeyArgs {
    fn hash_key(&self) -> Result<HashKey, Error> {
        match (&self.hash, &self.key) {
            (Some(h), _) => h.parse(),
            (None, Some(k)) => Ok(HashKey::of(k.as_bytes())),
            (None, None) => Err(Error::Usage("give KEY or --hash HEX".into())),
        }
    }

    /// How the key is shown in messages: as the user gave it.
    fn shown(&self) -> String {
        self.key
            .clone()
            .or_else(|| self.hash.clone())
            .unwrap_or_default()
    }
}

/// `put KEY [VALUE]`, or `put --hash HEX [VALUE]`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// KEY and then VALUE; with --hash, only VALUE. Without VALUE (and without --file) the
    /// value is read from stdin
    #[arg(value_names = ["KEY", "VALUE"], num_args = 0..=2, required_unless_present = "hash")]
    args: Vec<String>,
    /// Give the 40-hex-digit HashKey directly instead of KEY
    #[arg(long, value_name = "HEX")]
    hash: Option<String>,
    /// Read the value from this file
    #[arg(short, long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    route: RouteArgs,
}

impl PutArgs {
    /// The key (and how to show it), and the value if one was given on the command line.
    fn key_and_value(&self) -> Result<(HashKey, String, Option<String>), Error> {
        let mut args = self.args.iter().cloned();
        let (key, shown) = match &self.hash {
            Some(h) => (h.parse()?, h.clone()),
            None => {
                let k = args
                    .next()
                    .ok_or_else(|| Error::Usage("give KEY or --hash HEX".into()))?;
                (HashKey::of(k.as_bytes()), k)
            }
        };
        let value = args.next();
        if args.next().is_some() {
            return Err(Error::Usage(
                "with --hash give only VALUE (the key is the HashKey)".into(),
            ));
        }
        if value.is_some() && self.file.is_some() {
            return Err(Error::Usage("give VALUE or --file, not both".into()));
        }
        Ok((key, shown, value))
    }
}

/// Exit codes of the client commands.
pub const FOUND: u8 = 0;
pub const ABSENT: u8 = 1;
pub const FAILED: u8 = 2;

/// Runs one client command; its exit code, or the error to print.
pub async fn run(cmd: Command) -> Result<u8, Error> {
    match cmd {
        Command::Put(put) => keys::put(put).await,
        Command::Get(key) => keys::get(key).await,
        Command::Exists(key) => keys::exists(key).await,
        Command::Rm(key) => keys::rm(key).await,
        Command::Owner { key, json } => keys::owner(key, json).await,
        Command::Info { peer, json } => keys::info(peer, json).await,
        Command::Ring(args) => ring::ring(args).await,
        Command::Status { data, json } => status::status(&data, json).await,
        Command::Completions { shell } => completions::print(shell),
        Command::Leave { data } => node::leave(&data).await,
        Command::Backup { data, out, force } => archive::backup(&data, &out, force).await,
        Command::Verify { file, json } => archive::verify(&file, json).await,
        Command::Restore { from, data, force } => archive::restore(&from, &data, force).await,
    }
}
