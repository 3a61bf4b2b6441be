//! The command line: what `dht-store` accepts (clap definitions) and what each client command
//! prints. The binary's `main.rs` sets up logging and the runtime and calls [`run`]; everything
//! here uses the library only through its public API.

mod archive;
mod completions;
mod json;
mod keys;
pub mod node;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use dht_store::client::Router;
use dht_store::protocol::{parse_addr, AddressEncoding, HashKey, PeerAddr};
use dht_store::Error;

pub use node::NodeArgs;

/// A persistent storage node for a distributed hash table.
///
/// Without a subcommand, runs a node: it serves the DHT wire protocol on HOST:PORT from a sled
/// database in DIR, and resumes its place and data from DIR after any restart. Without --join
/// it starts a ring of one. Logs go to stderr (filter with RUST_LOG, e.g. RUST_LOG=debug);
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
    Put {
        #[command(flatten)]
        key: KeyArgs,
        /// The value; without it (and without --file) the value is read from stdin
        value: Option<String>,
        /// Read the value from this file
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
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
        #[arg(long, env = "DHT_STORE_DATA", value_name = "DIR")]
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
    /// Make the node running on DIR hand everything it owns to its predecessor (DIS) and
    /// exit; exits 0 once the predecessor confirmed. Uses DIR/admin.sock, never the network.
    Leave {
        /// Data directory of the running node
        #[arg(long, env = "DHT_STORE_DATA", value_name = "DIR")]
        data: PathBuf,
    },
    /// Write a backup archive of a data directory: through the running node (a point-in-time
    /// copy while writes go on) or, when no node runs on DIR, read directly
    Backup {
        /// The node's data directory
        #[arg(long, env = "DHT_STORE_DATA", value_name = "DIR")]
        data: PathBuf,
        /// The archive to write (replaced if it exists)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
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
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Replace a non-empty directory (never one a node is running on)
        #[arg(long)]
        force: bool,
    },
}

/// Where a client command starts.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Any peer of the ring
    #[arg(
        long,
        env = "DHT_STORE_PEER",
        default_value = "127.0.0.1:5000",
        value_name = "HOST:PORT"
    )]
    peer: String,
    /// PeerAddress encoding of the ring
    #[arg(long, env = "DHT_STORE_ADDRESS_ENCODING", value_enum, default_value_t = AddressEncoding::Compact)]
    address_encoding: AddressEncoding,
    /// Longest OWN walk before giving up
    #[arg(long, default_value_t = 64)]
    max_hops: usize,
}

impl PeerArgs {
    fn peer(&self) -> Result<PeerAddr, Error> {
        parse_addr(&self.peer)
    }

    fn router(&self) -> Result<Router, Error> {
        Ok(Router::new(self.peer()?, self.address_encoding).with_max_hops(self.max_hops))
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
    peer: PeerArgs,
}

impl KeyArgs {
    fn hash_key(&self) -> Result<HashKey, Error> {
        match (&self.hash, &self.key) {
            (Some(h), _) => h.parse(),
            (None, Some(k)) => Ok(HashKey::of(k.as_bytes())),
            (None, None) => Err(Error::Usage("give KEY or --hash HEX".into())),
        }
    }
}

/// Exit codes of the client commands.
pub const FOUND: u8 = 0;
pub const ABSENT: u8 = 1;
pub const FAILED: u8 = 2;

/// Runs one client command; its exit code, or the error to print.
pub async fn run(cmd: Command) -> Result<u8, Error> {
    match cmd {
        Command::Put { key, value, file } => keys::put(key, value, file).await,
        Command::Get(key) => keys::get(key).await,
        Command::Exists(key) => keys::exists(key).await,
        Command::Rm(key) => keys::rm(key).await,
        Command::Owner { key, json } => keys::owner(key, json).await,
        Command::Info { peer, json } => keys::info(peer, json).await,
        Command::Status { data, json } => status::status(&data, json).await,
        Command::Completions { shell } => completions::print(shell),
        Command::Leave { data } => node::leave(&data).await,
        Command::Backup { data, out } => archive::backup(&data, &out).await,
        Command::Verify { file, json } => archive::verify(&file, json).await,
        Command::Restore { from, data, force } => archive::restore(&from, &data, force).await,
    }
}
