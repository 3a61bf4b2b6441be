//! `dht-store`: run a node, or talk to one.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use dht_store::client::{Client, Router};
use dht_store::config::Config;
use dht_store::protocol::{parse_addr, AddressEncoding, HashKey, PeerAddr};
use dht_store::{node, Error};

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
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags of a node; each overrides the config file and has a DHT_STORE_* variable.
#[derive(Args, Debug)]
struct NodeArgs {
    /// Data directory (created if missing) [default: ./dht-data]
    #[arg(long, env = "DHT_STORE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// TCP port to listen on and advertise [default: 5000]
    #[arg(long, env = "DHT_STORE_PORT")]
    port: Option<u16>,
    /// IPv4 address to advertise and listen on; the node id is SHA-1 of "HOST:PORT"
    /// [default: 127.0.0.1]
    #[arg(long, env = "DHT_STORE_HOST", value_name = "IPV4")]
    host: Option<Ipv4Addr>,
    /// Address to bind instead of --host (e.g. 0.0.0.0)
    #[arg(long, env = "DHT_STORE_LISTEN", value_name = "IPV4")]
    listen: Option<Ipv4Addr>,
    /// Join the ring through this member; ignored when DIR already holds ring state
    #[arg(long, env = "DHT_STORE_JOIN", value_name = "HOST:PORT")]
    join: Option<String>,
    /// PeerAddress encoding of the ring [default: compact]
    #[arg(long, env = "DHT_STORE_ADDRESS_ENCODING", value_enum)]
    address_encoding: Option<AddressEncoding>,
    /// TOML configuration file (see config/node.toml)
    #[arg(long, env = "DHT_STORE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Largest value accepted, bytes [default: 67108864]
    #[arg(long, env = "DHT_STORE_MAX_VALUE_SIZE", value_name = "BYTES")]
    max_value_size: Option<u64>,
    /// Most connections served at once [default: 1024]
    #[arg(long, env = "DHT_STORE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds of silence between requests before a connection is closed; 0 never [default: 300]
    #[arg(long, env = "DHT_STORE_IDLE_TIMEOUT", value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Seconds a message or a write may stall before the connection is closed; 0 never
    /// [default: 30]
    #[arg(long, env = "DHT_STORE_IO_TIMEOUT", value_name = "SECS")]
    io_timeout: Option<u64>,
    /// sled page cache, MiB [default: 64]
    #[arg(long, env = "DHT_STORE_CACHE_MB", value_name = "MIB")]
    cache_capacity_mb: Option<u64>,
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
            cache_capacity_mb
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

#[derive(Subcommand, Debug)]
enum Command {
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
    Owner(KeyArgs),
    /// Print a peer's INF text
    Info(PeerArgs),
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
struct PeerArgs {
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
struct KeyArgs {
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
const FOUND: u8 = 0;
const ABSENT: u8 = 1;
const FAILED: u8 = 2;

/// sled's log buffers are pooled; see `dht_store::memory::NodeAllocator`.
#[global_allocator]
static ALLOCATOR: dht_store::memory::NodeAllocator = dht_store::memory::NodeAllocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any other thread starts (see dht_store::memory).
    dht_store::memory::tune_allocator(match cli.command {
        Some(Command::Restore { .. }) => dht_store::memory::MMAP_THRESHOLD_RESTORE,
        _ => dht_store::memory::MMAP_THRESHOLD,
    });
    let is_node = cli.command.is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(if is_node { "info" } else { "warn" })),
        )
        .init();
    let runtime = if is_node {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dht-store: cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => run_node(cli.node).await.map(|_| FOUND),
            Some(cmd) => run_client(cmd).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dht-store: {e}");
            ExitCode::from(FAILED)
        }
    }
}

async fn run_node(args: NodeArgs) -> Result<(), Error> {
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

/// Progress of backup, verify and restore: a bar on a terminal, a log line every 2 s otherwise.
struct Show {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    last: std::sync::Mutex<std::time::Instant>,
}

impl Show {
    fn new(what: &'static str, total_bytes: Option<u64>) -> Show {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(what);
            bar
        });
        let now = std::time::Instant::now();
        Show {
            what,
            bar,
            started: now,
            last: std::sync::Mutex::new(now),
        }
    }

    fn tick(&self, entries: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            if entries.is_multiple_of(1024) {
                bar.set_message(format!("{entries} entries"));
            }
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= std::time::Duration::from_secs(2) {
            *last = std::time::Instant::now();
            eprintln!(
                "{}: {}",
                self.what,
                rate_line(entries, bytes, self.started.elapsed())
            );
        }
    }
}

impl Drop for Show {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn rate_line(entries: u64, bytes: u64, took: std::time::Duration) -> String {
    let mib = bytes as f64 / (1 << 20) as f64;
    let secs = took.as_secs_f64().max(1e-6);
    format!(
        "{entries} entries, {mib:.1} MiB in {secs:.1} s ({:.1} MiB/s)",
        mib / secs
    )
}

fn print_header(h: &dht_store::backup::Header) {
    match (&h.address, &h.id) {
        (Some(a), Some(id)) => println!("node {a}\nid {}", HashKey(*id)),
        _ => println!("node none (the directory held no ring state)"),
    }
    if let Some(r) = &h.ring {
        println!(
            "successor {}\nsecond successor {}",
            r.successor, r.second_successor
        );
        if let Some(p) = r.predecessor {
            println!("predecessor {p}");
        }
    }
    println!(
        "created {} (seconds since the Unix epoch)",
        h.created_unix_secs
    );
}

async fn backup(data: &std::path::Path, out: &std::path::Path) -> Result<u8, Error> {
    let out = std::path::absolute(out)?;
    let started = std::time::Instant::now();
    let show = Show::new("backup", None);
    let through_node = node::request_backup(data, &out, &|n, b| show.tick(n, b)).await?;
    let (entries, bytes) = match through_node {
        Some((n, b, _)) => {
            eprintln!(
                "backup: taken through the node running on {}",
                data.display()
            );
            (n, b)
        }
        None => {
            let (d, o) = (data.to_path_buf(), out.clone());
            let s = tokio::task::spawn_blocking(move || -> Result<_, Error> {
                if !dht_store::storage::holds_database(&d) {
                    return Err(Error::Archive(format!(
                        "{} holds no dht-store data",
                        d.display()
                    )));
                }
                let storage = dht_store::storage::Storage::open(&d, &Default::default())?;
                dht_store::backup::write_archive(&storage, &o, &|n, b| show.tick(n, b))
            })
            .await
            .map_err(|e| Error::Archive(format!("backup failed: {e}")))??;
            (s.entries, s.bytes)
        }
    };
    eprintln!(
        "backup: {} -> {}",
        rate_line(entries, bytes, started.elapsed()),
        out.display()
    );
    Ok(FOUND)
}

fn read_value(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Error> {
    if let Some(v) = value {
        return Ok(v.into_bytes());
    }
    if let Some(path) = file {
        return std::fs::read(&path).map_err(|source| Error::IoAt {
            what: format!("cannot read {}", path.display()),
            source,
        });
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|source| Error::IoAt {
            what: "cannot read the value from stdin".into(),
            source,
        })?;
    Ok(buf)
}

async fn run_client(cmd: Command) -> Result<u8, Error> {
    match cmd {
        Command::Put { key, value, file } => {
            let k = key.hash_key()?;
            let v = read_value(value, file)?;
            if key.peer.router()?.put(&k, &v).await? {
                Ok(FOUND)
            } else {
                Err(Error::Peer(format!(
                    "the owner of {k} answered F: the value was not stored"
                )))
            }
        }
        Command::Get(key) => {
            let k = key.hash_key()?;
            match key.peer.router()?.get(&k).await? {
                Some(v) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&v)?;
                    out.flush()?;
                    Ok(FOUND)
                }
                None => {
                    eprintln!(
                        "dht-store: {} is absent",
                        key.key.as_deref().unwrap_or(&k.to_string())
                    );
                    Ok(ABSENT)
                }
            }
        }
        Command::Exists(key) => {
            let k = key.hash_key()?;
            Ok(if key.peer.router()?.exists(&k).await? {
                FOUND
            } else {
                ABSENT
            })
        }
        Command::Rm(key) => {
            let k = key.hash_key()?;
            Ok(if key.peer.router()?.remove(&k).await? {
                FOUND
            } else {
                ABSENT
            })
        }
        Command::Owner(key) => {
            let k = key.hash_key()?;
            let (owner, hops) = key.peer.router()?.owner(&k).await?;
            println!("{owner} owns {k} ({hops} hops from {})", key.peer.peer);
            Ok(FOUND)
        }
        Command::Backup { data, out } => backup(&data, &out).await,
        Command::Verify { file } => {
            let file_bytes = std::fs::metadata(&file).map(|m| m.len()).ok();
            let show = Show::new("verify", file_bytes);
            let path = file.clone();
            let s = tokio::task::spawn_blocking(move || {
                dht_store::backup::verify(&path, &|n, b| show.tick(n, b))
            })
            .await
            .map_err(|e| Error::Archive(format!("verify failed: {e}")))??;
            print_header(&s.header);
            println!(
                "entries {}\nvalue bytes {}\nfile bytes {}\nchecksum ok",
                s.entries, s.bytes, s.file_bytes
            );
            Ok(FOUND)
        }
        Command::Restore { from, data, force } => {
            let file_bytes = std::fs::metadata(&from).map(|m| m.len()).ok();
            let show = Show::new("restore", file_bytes);
            let started = std::time::Instant::now();
            let (f, d) = (from.clone(), data.clone());
            let s = tokio::task::spawn_blocking(move || {
                dht_store::backup::restore(&f, &d, force, &|n, b| show.tick(n, b))
            })
            .await
            .map_err(|e| Error::Archive(format!("restore failed: {e}")))??;
            eprintln!(
                "restore: {}",
                rate_line(s.entries, s.bytes, started.elapsed())
            );
            println!(
                "restored {} entries ({} value bytes) into {}",
                s.entries,
                s.bytes,
                data.display()
            );
            if let Some(addr) = s.header.address {
                println!(
                    "the archive is of node {addr}: start it with --host {} --port {} to resume that node; \
                     another --host/--port gives it another id, and the entries it then does not own go to their owners",
                    addr.ip(),
                    addr.port()
                );
            }
            Ok(FOUND)
        }
        Command::Leave { data } => {
            let msg = node::request_leave(&data).await?;
            println!("{msg}");
            Ok(FOUND)
        }
        Command::Info(peer) => {
            let mut c = Client::connect(peer.peer()?, peer.address_encoding).await?;
            print!("{}", c.inf().await?);
            Ok(FOUND)
        }
    }
}
