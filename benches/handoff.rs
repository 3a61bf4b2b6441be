//! Handoff benchmark: `cargo bench --bench handoff`.
//!
//! Measures how fast a range moves between two real `dht-store` processes with CON (a node
//! joins and takes its arc from its predecessor) and DIS (that node leaves again and hands
//! everything back), and compares it with what the machine allows: the storage limit (the same
//! entries imported into a fresh sled database through the library) and the network limit (the
//! same bytes sent over one loopback TCP connection to a thread that discards them).
//!
//! For each case (entries × value size):
//!
//! 1. P = 127.0.0.1:free port, J = 127.0.0.2:free port. Every key is id(J) + an offset below the
//!    highest power of two under id(P) - id(J), so every key lies in [id(J), id(P)): the arc J
//!    takes from P (a ring of one) when it joins. Keys are pseudo-random (SHA-1 of a counter,
//!    masked), values are a pseudo-random stream seeded by the key (checkable on GET).
//! 2. P's data directory is filled through the library: sorted `Storage::insert_batch` in
//!    batches of 1000 entries / 4 MiB (`BatchWrite::KeysFirst`), then one sync. That import,
//!    timed, is baseline (a).
//!    Baseline (a'), sorted single `sled::Tree::insert` into another fresh db then one flush,
//!    runs too (unless `HANDOFF_SINGLE=0`); the faster of the two counts as the storage limit.
//! 3. Baseline (b): the same bytes (key + 8-byte length + value per entry, as on the wire) over
//!    loopback TCP to a reading thread.
//!    (r) The sender's reads alone: `count_arc` then one `iter_arc` pass over the arc, through
//!    the library in a fresh child process (this bench binary again, `HANDOFF_SCAN_CHILD`), with
//!    its time and peak RSS, to show what the sender pays before and while it streams.
//! 4. P is started on its directory; once it answers PUL, J is launched with `--join P`. The
//!    time from J's launch to its first PUL `T` is the CON handoff (J answers only after it holds
//!    the arc durably). Then P's log must say it dropped the N entries it handed over, ~100 keys
//!    are checked with GET at J, and INF must show J holding N and P holding 0.
//! 5. `dht-store leave --data J` is timed until it exits 0 (DIS to P, then J's own cleanup); the
//!    DIS handoff proper ends at J's "handoff done" log line, written when P's `T` arrived.
//!    P must hold N again, and ~100 keys are checked with GET at P.
//! 6. Peak RSS (VmHWM) of both processes per direction: the high-water mark is reset through
//!    `/proc/PID/clear_refs` before each direction and compared with the VmRSS at that moment.
//!    J's starting RSS for CON is that of an idle node on an empty directory (measured once).
//!    J's CON peak is read at its PUL `T`; P's once it has dropped the handed entries. J exits
//!    at the end of DIS, so its DIS peak is the last VmHWM sampled (every 10 ms) before it exits.
//!    CPU seconds (/proc/PID/stat) and bytes written (`wchar`, /proc/PID/io) of both processes
//!    are reported per direction too, and the import's, to tell CPU, disk and waiting apart.
//!
//! Both nodes run with `--cache-capacity-mb 64` (`HANDOFF_CACHE_MB` to change) and the library
//! imports use the same sled cache capacity.
//!
//! Environment:
//! - `HANDOFF_CASES`  comma-separated cases: `1m` (1 000 000 × 100 B), `100k` (100 000 × 10 KiB),
//!   `64` (64 × 8 MiB), or any `COUNT[xSIZE]` such as `10k`, `20000x1KiB`, `8x8MiB` (a COUNT
//!   other than the three above gets 100 B values unless a SIZE is given).
//!   Default: `1m,100k,64`.
//! - `HANDOFF_QUICK=1` smaller default cases: `100k` × 100 B, `10k` × 10 KiB, `8` × 8 MiB.
//! - `HANDOFF_SINGLE=0` skip baseline (a') (single sled inserts).
//! - `HANDOFF_CACHE_MB` sled cache of both nodes and of the imports, MiB (default 64).
//! - `HANDOFF_INF=0` skip the INF "keys" checks after CON (INF counts with a full scan, which
//!   pulls the whole tree into J's memory and so inflates J's starting RSS for DIS); GETs and
//!   the nodes' own log lines still verify the handoff.
//! - `HANDOFF_KEEP_LOGS=DIR` copy both nodes' logs of every case to DIR.
//! - `HANDOFF_PERF=DIR` record each direction with `perf record -g` attached to both nodes
//!   (`DIR/<case>-con-{p,j}.data`, `DIR/<case>-dis-{p,j}.data`); the figures of such a run are
//!   perturbed by the profiler.
//! - `HANDOFF_BASELINE_BIN=/path/to/dht-store` (or `BENCH_BASELINE_BIN`, as the requests bench
//!   names it): A/B against that build, below.
//! - `HANDOFF_AB_ROUNDS` A/B rounds per case (default 2: A B, then B A).
//! - `HANDOFF_AB_FILL` how P's directory is filled in an A/B run: `ins` (default) or `import`.
//!
//! **A/B against another build.** With `HANDOFF_BASELINE_BIN`, steps 4–6 (the CON and the DIS
//! between two real processes, and the leave command) run with this build's binary (A) and with
//! the baseline's (B) in turn, `HANDOFF_AB_ROUNDS` times (A B, then B A, ...), on the same
//! addresses and keys; the baselines (a), (a'), (b) and (r) run once per case. P's directory
//! must be one the binary reads, and an older build cannot read a newer layout, so by default
//! (`HANDOFF_AB_FILL=ins`) each binary fills a directory of its own: a node of that binary on
//! P's address, a ring of one, takes every entry by INS over 32 connections and is stopped with
//! SIGTERM; each round then starts P on a fresh copy of its binary's directory.
//! `HANDOFF_AB_FILL=import` gives both sides a copy of the library import of step 2 instead (as
//! runs without a baseline use): only for a baseline that reads this build's layout. Every run
//! prints its figures as above, then per case CON, DIS and leave of both (each round's time,
//! and the rate over all rounds) with the ratio this/baseline of the rates. The baseline is
//! driven only with flags (`--data --port --host --join --cache-capacity-mb`, `leave --data`),
//! requests and log lines that the build at `4545ce8` has; a baseline that cannot start a node
//! turns the A/B off, and a run of it that fails is reported as such (the panic and both logs
//! above it) and the case goes on without it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dht_store::client::{Client, Lookup};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr, Status};
use dht_store::ring::{id_of, in_arc};
// The batch bounds a node's receiver uses.
use dht_store::node::BATCH_BYTES;
use dht_store::storage::{BatchWrite, Storage, StorageOptions, Version, Versioned, BATCH_ENTRIES};

use common::process::{
    dht_store_command_for, die_with_parent, install_signal_handler, temp_dir, Reaped,
};
use common::sample::{print_machine, proc_cpu, proc_kib, proc_wchar, reset_hwm, self_cpu};
use common::{free_port_on, Rng};

/// Keys checked with GET after each direction.
const SPOT_CHECKS: usize = 100;
/// Bytes per entry besides the value on the wire: HashKey and the valSize Int.
const ENTRY_OVERHEAD: u64 = 20 + 8;
const MIB: f64 = (1u64 << 20) as f64;

// ---------------------------------------------------------------------------------------------
// Settings

/// One benchmark case.
#[derive(Clone, Debug)]
struct Case {
    entries: usize,
    value_size: usize,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{} x {}",
            count_text(self.entries),
            size_text(self.value_size)
        )
    }

    /// Bytes moved on the wire (and counted by every rate): key + length + value per entry.
    fn wire_bytes(&self) -> u64 {
        self.entries as u64 * (ENTRY_OVERHEAD + self.value_size as u64)
    }
}

fn count_text(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn size_text(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn parse_count(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = if let Some(n) = s.strip_suffix('m') {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix('k') {
        (n, 1000)
    } else {
        (s.as_str(), 1)
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .map(|n| n * mul)
        .filter(|&n| n > 0)
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let s = s.strip_suffix('i').unwrap_or(s);
    let (num, mul) = if let Some(n) = s.strip_suffix('m') {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix('k') {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim().parse::<usize>().ok().map(|n| n * mul)
}

/// `1m`, `100k`, `64`, or `COUNT[xSIZE]`.
fn parse_case(token: &str) -> Option<Case> {
    let token = token.trim();
    let (count, size) = match token.split_once(['x', 'X', '*']) {
        Some((c, s)) => (c, Some(s)),
        None => (token, None),
    };
    let entries = parse_count(count)?;
    let value_size = match size {
        Some(s) => parse_size(s)?,
        None => match entries {
            1_000_000 => 100,
            100_000 => 10 << 10,
            64 => 8 << 20,
            _ => 100,
        },
    };
    Some(Case {
        entries,
        value_size,
    })
}

struct Settings {
    cases: Vec<Case>,
    single: bool,
    cache_mb: u64,
    keep_logs: Option<PathBuf>,
    perf: Option<PathBuf>,
    inf: bool,
    /// `HANDOFF_BASELINE_BIN` (or `BENCH_BASELINE_BIN`): a build to compare with, A/B.
    baseline: Option<PathBuf>,
    /// A/B rounds per case.
    ab_rounds: usize,
    /// A/B: fill each binary's P directory over INS (else: copies of the library import).
    ab_fill_ins: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let quick = var("HANDOFF_QUICK").is_some_and(|v| v.trim() != "0");
        let cases = match var("HANDOFF_CASES") {
            Some(list) => list
                .split(',')
                .filter(|t| !t.trim().is_empty())
                .map(|t| {
                    parse_case(t).unwrap_or_else(|| {
                        panic!("HANDOFF_CASES: {t:?} is not a case (1m, 100k, 64, 10k, 8x8MiB)")
                    })
                })
                .collect(),
            None if quick => vec![
                Case {
                    entries: 100_000,
                    value_size: 100,
                },
                Case {
                    entries: 10_000,
                    value_size: 10 << 10,
                },
                Case {
                    entries: 8,
                    value_size: 8 << 20,
                },
            ],
            None => ["1m", "100k", "64"]
                .iter()
                .filter_map(|t| parse_case(t))
                .collect(),
        };
        let single = var("HANDOFF_SINGLE").is_none_or(|v| v.trim() != "0");
        let cache_mb = var("HANDOFF_CACHE_MB")
            .map(|v| v.trim().parse().expect("HANDOFF_CACHE_MB: MiB"))
            .unwrap_or(64);
        Settings {
            cases,
            single,
            cache_mb,
            keep_logs: var("HANDOFF_KEEP_LOGS").map(PathBuf::from),
            perf: var("HANDOFF_PERF").map(PathBuf::from),
            inf: var("HANDOFF_INF").is_none_or(|v| v.trim() != "0"),
            baseline: var("HANDOFF_BASELINE_BIN")
                .or_else(|| var("BENCH_BASELINE_BIN"))
                .map(|v| PathBuf::from(v.trim())),
            ab_rounds: var("HANDOFF_AB_ROUNDS")
                .map(|v| v.trim().parse().expect("HANDOFF_AB_ROUNDS: a count"))
                .unwrap_or(2usize)
                .max(1),
            ab_fill_ins: match var("HANDOFF_AB_FILL").as_deref().map(str::trim) {
                None | Some("ins") => true,
                Some("import") => false,
                Some(other) => panic!("HANDOFF_AB_FILL: ins or import, not {other:?}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and values

/// Index of the highest set bit of a 160-bit number (bit 0 = least significant).
fn top_bit(k: &HashKey) -> Option<u32> {
    k.0.iter()
        .position(|&b| b != 0)
        .map(|i| (19 - i as u32) * 8 + (7 - k.0[i].leading_zeros()))
}

/// `n` distinct keys in `[from, to)`, sorted in sled (byte) order.
fn make_keys(n: usize, from: &HashKey, to: &HashKey) -> Vec<HashKey> {
    let span = to.wrapping_sub(from);
    let bit = top_bit(&span).expect("an empty arc");
    // Offsets below 2^bit <= span keep every key inside the arc.
    let mut keys: Vec<HashKey> = (0..n as u64)
        .map(|i| {
            let mut off = HashKey::of(&[b"handoff-bench".as_slice(), &i.to_be_bytes()].concat());
            for (j, b) in off.0.iter_mut().enumerate() {
                let low = (19 - j as u32) * 8; // bit index of this byte's lowest bit
                if low >= bit {
                    *b = 0;
                } else if low + 8 > bit {
                    *b &= (1u16 << (bit - low)).wrapping_sub(1) as u8;
                }
            }
            from.wrapping_add(&off)
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate keys: the arc is too narrow");
    assert!(keys.iter().all(|k| in_arc(k, from, to)));
    keys
}

/// The value stored under `key`: a pseudo-random stream seeded by the key.
fn value_for(key: &HashKey, size: usize) -> Vec<u8> {
    let seed = u64::from_be_bytes(key.0[..8].try_into().unwrap())
        ^ u64::from_be_bytes(key.0[12..20].try_into().unwrap());
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(size);
    while v.len() + 8 <= size {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    let tail = size - v.len();
    v.extend_from_slice(&rng.next_u64().to_le_bytes()[..tail]);
    v
}

/// All entries, in batches of at most `BATCH_ENTRIES` entries / `BATCH_BYTES` value bytes.
fn batches(keys: &[HashKey], size: usize) -> Vec<Vec<(HashKey, Vec<u8>)>> {
    let per_batch = BATCH_ENTRIES.min((BATCH_BYTES / size.max(1)).max(1));
    keys.chunks(per_batch)
        .map(|c| c.iter().map(|k| (*k, value_for(k, size))).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Baselines

/// Baseline (a): sorted `insert_batch` into a fresh data directory, keys first (the fastest
/// way the storage imports large values, and the way a DIS receiver and a fresh joiner write),
/// then one sync. Leaves the directory filled (it becomes P's).
fn import_batches(dir: &Path, keys: &[HashKey], size: usize, cache: u64) -> (Duration, f64, u64) {
    // Unversioned, as a restore of an archive of before versions writes them.
    let mut all: Vec<Vec<_>> = batches(keys, size)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .map(|(k, v)| (k, Versioned::value(Version::ZERO, v)))
                .collect()
        })
        .collect();
    let cpu = self_cpu();
    let wchar = proc_wchar("self").unwrap_or(0);
    let start = Instant::now();
    let storage = Storage::open(
        dir,
        &StorageOptions {
            cache_capacity: cache,
        },
    )
    .expect("open the import directory");
    let mut ticket = None;
    for batch in all.iter_mut() {
        ticket = Some(
            storage
                .insert_batch(batch, BatchWrite::KeysFirst)
                .expect("insert_batch"),
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(storage.sync(ticket.expect("no entries")))
        .expect("sync");
    let took = start.elapsed();
    let cpu = self_cpu() - cpu;
    let written = proc_wchar("self").unwrap_or(0).saturating_sub(wchar);
    drop(storage); // releases the directory lock
    (took, cpu, written)
}

/// Environment variable that makes this bench binary a scan child (see [`scan_child`]).
const SCAN_CHILD: &str = "HANDOFF_SCAN_CHILD";

/// What the sender does to its arc, through the library in a fresh process (cold sled, as a
/// started node has): `count_arc`, then one `iter_arc` pass touching every value, as
/// `send_arc` does. Returns the two durations and the process's peak RSS growth over them.
fn scan_in_child(dir: &Path, from: &HashKey, to: &HashKey, cache: u64) -> ScanFigures {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    die_with_parent(&mut cmd);
    let out = cmd
        .env(SCAN_CHILD, format!("{}|{from}|{to}|{cache}", dir.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("scan child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scan child failed: {text}");
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 5, "scan child said {text:?}");
    ScanFigures {
        count: Duration::from_secs_f64(nums[0]),
        iterate: Duration::from_secs_f64(nums[1]),
        entries: nums[2] as u64,
        start_rss: nums[3] as u64,
        peak: nums[4] as u64,
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ScanFigures {
    count: Duration,
    iterate: Duration,
    entries: u64,
    /// KiB, after opening the storage.
    start_rss: u64,
    /// KiB, VmHWM after both passes.
    peak: u64,
}

/// The scan child: `DIR|FROM|TO|CACHE` in [`SCAN_CHILD`]; prints "count_s iter_s n rss hwm".
fn scan_child(spec: &str) -> ExitCode {
    let parts: Vec<&str> = spec.split('|').collect();
    let [dir, from, to, cache] = parts[..] else {
        eprintln!("{SCAN_CHILD}: bad spec {spec:?}");
        return ExitCode::FAILURE;
    };
    let from: HashKey = from.parse().expect("from");
    let to: HashKey = to.parse().expect("to");
    let storage = Storage::open(
        Path::new(dir),
        &StorageOptions {
            cache_capacity: cache.parse().expect("cache"),
        },
    )
    .expect("open");
    let pid = std::process::id();
    let rss = proc_kib(pid, "VmRSS").unwrap_or(0);
    reset_hwm(pid);
    let t = Instant::now();
    let n = storage.count_arc(&from, &to).expect("count_arc");
    let count = t.elapsed();
    let t = Instant::now();
    let mut sum = 0u64;
    for e in storage.iter_arc(&from, &to) {
        let (k, v) = e.expect("iter_arc");
        sum = sum
            .wrapping_add(k.0[0] as u64 + v.len() as u64 + v.first().copied().unwrap_or(0) as u64);
    }
    let iterate = t.elapsed();
    std::hint::black_box(sum);
    let hwm = proc_kib(pid, "VmHWM").unwrap_or(0);
    println!(
        "{} {} {n} {rss} {hwm}",
        count.as_secs_f64(),
        iterate.as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// Baseline (a'): sorted single `sled::Tree::insert` into a fresh sled db, then one flush.
fn import_single(dir: &Path, keys: &[HashKey], size: usize, cache: u64) -> Duration {
    let all = batches(keys, size);
    let start = Instant::now();
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("open sled");
    let tree = db.open_tree("data").expect("open tree");
    for batch in all {
        for (k, v) in batch {
            tree.insert(&k.0[..], v).expect("insert");
        }
    }
    db.flush().expect("flush");
    start.elapsed()
}

/// Baseline (b): key + 8-byte length + value per entry over loopback TCP to a thread that reads
/// and discards; from the first byte written to the last byte read.
fn network_baseline(keys: &[HashKey], size: usize) -> Duration {
    let all = batches(keys, size);
    let expected = keys.len() as u64 * (ENTRY_OVERHEAD + size as u64);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("network baseline read: {e}"),
            }
        }
        total
    });
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let start = Instant::now();
    let mut w = BufWriter::with_capacity(256 << 10, stream);
    for batch in &all {
        for (k, v) in batch {
            w.write_all(&k.0).expect("write");
            w.write_all(&(v.len() as u64).to_be_bytes()).expect("write");
            w.write_all(v).expect("write");
        }
    }
    w.flush().expect("flush");
    drop(w);
    let got = reader.join().expect("reader thread");
    let took = start.elapsed();
    assert_eq!(got, expected, "network baseline: bytes lost");
    took
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A `dht-store` command with a clean environment, logging at info level to `log`, and bound
/// to die with the bench (PR_SET_PDEATHSIG), so that not even a SIGKILLed bench leaves it.
fn dht_store(bin: &Path, args: &[&str], log: Option<&Path>) -> Command {
    let mut cmd = dht_store_command_for(bin);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("DHT_STORE_PROGRESS_INTERVAL_SECS", "1")
        .stdout(Stdio::null());
    match log {
        Some(log) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file");
            cmd.stderr(f);
        }
        None => {
            cmd.stderr(Stdio::piped());
        }
    }
    cmd
}

fn start_node(
    bin: &Path,
    name: &str,
    data: &Path,
    me: SocketAddrV4,
    join: Option<SocketAddrV4>,
    cache_mb: u64,
    log: &Path,
) -> Reaped {
    let port = me.port().to_string();
    let host = me.ip().to_string();
    let cache = cache_mb.to_string();
    let mut args = vec![
        "--data",
        data.to_str().expect("utf-8 path"),
        "--port",
        &port,
        "--host",
        &host,
        "--cache-capacity-mb",
        &cache,
    ];
    let join_text = join.map(|j| j.to_string());
    if let Some(j) = &join_text {
        args.extend(["--join", j]);
    }
    let child = dht_store(bin, &args, Some(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Reaped::new(name, child)
}

/// Memory of one process over one handoff direction, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    start_rss: u64,
    peak: u64,
}

impl Mem {
    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.start_rss)
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol helpers

async fn pul_once(addr: PeerAddr, wait: Duration) -> bool {
    let attempt = async {
        let mut c = Client::connect(addr, AddressEncoding::Compact).await.ok()?;
        c.pul().await.ok()
    };
    matches!(
        tokio::time::timeout(wait, attempt).await,
        Ok(Some(Status::T))
    )
}

/// Number of keys the node reports in INF.
async fn inf_keys(addr: PeerAddr) -> Result<u64, String> {
    let mut c = Client::connect(addr, AddressEncoding::Compact)
        .await
        .map_err(|e| format!("INF {addr}: {e}"))?;
    let text = c.inf().await.map_err(|e| format!("INF {addr}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("keys "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("INF {addr}: no \"keys N\" line in {text:?}"))
}

/// Polls INF until `addr` holds `want` keys; the last count seen on timeout.
async fn wait_keys(addr: PeerAddr, want: u64, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = Err("not asked".to_string());
    while start.elapsed() < limit {
        last = inf_keys(addr).await;
        if last == Ok(want) {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{addr} holds {last:?} keys after {limit:?}, expected {want}"
    ))
}

/// GETs up to `SPOT_CHECKS` random keys at `addr`: each must be Found with its value.
async fn spot_check(
    addr: PeerAddr,
    keys: &[HashKey],
    size: usize,
    seed: u64,
) -> Result<usize, String> {
    let mut c = Client::connect(addr, AddressEncoding::Compact)
        .await
        .map_err(|e| format!("GET {addr}: {e}"))?;
    let idx: Vec<usize> = if keys.len() <= SPOT_CHECKS {
        (0..keys.len()).collect()
    } else {
        let mut rng = Rng::new(seed);
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < SPOT_CHECKS {
            picked.insert((rng.next_u64() % keys.len() as u64) as usize);
        }
        picked.into_iter().collect()
    };
    for &i in &idx {
        let k = &keys[i];
        match c.get(k).await {
            Ok(Lookup::Found(v)) if v == value_for(k, size) => {}
            Ok(Lookup::Found(v)) => {
                return Err(format!(
                    "GET {k} at {addr}: wrong value ({} bytes)",
                    v.len()
                ))
            }
            Ok(other) => return Err(format!("GET {k} at {addr}: {other:?}")),
            Err(e) => return Err(format!("GET {k} at {addr}: {e}")),
        }
    }
    Ok(idx.len())
}

/// The "handoff ..." summary lines of a node log (ANSI colours stripped).
fn summary_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("handoff done") || l.contains("dropped the"))
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints the tail of the node logs if the case panics (before the temp dir goes).
struct LogDump(Vec<PathBuf>);

impl Drop for LogDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in &self.0 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(strip_ansi).collect();
            eprintln!("--- last lines of {}:", log.display());
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("  {l}");
            }
        }
    }
}

/// Seconds since midnight UTC of a wall-clock time.
fn day_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// The first log line holding every one of `needles`: (its timestamp as seconds since
/// midnight UTC, the line). Lines start with an RFC 3339 timestamp such as
/// `2026-11-24T19:35:30.777681Z`.
fn log_event(log: &Path, needles: &[&str]) -> Option<(f64, String)> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().map(strip_ansi).find_map(|l| {
        if !needles.iter().all(|n| l.contains(n)) {
            return None;
        }
        let ts = l.split_whitespace().next()?;
        let time = ts.split_once('T')?.1.trim_end_matches('Z');
        let mut parts = time.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some((h * 3600.0 + m * 60.0 + s, l))
    })
}

/// Seconds from `from` to `to` (both seconds since midnight), across midnight if need be.
fn secs_between(from: f64, to: f64) -> f64 {
    let d = to - from;
    if d < -43_200.0 {
        d + 86_400.0
    } else {
        d
    }
}

/// The duration at the end of a progress summary line (`..., 16.4 s`).
fn summary_secs(line: &str) -> Option<f64> {
    // "...: 1200/1200 entries, 11.4 MiB in 0.4 s (3400 entries/s, 32.1 MiB/s)"
    let (_, after) = line.rsplit_once(" MiB in ")?;
    after.split_once(" s")?.0.trim().parse().ok()
}

/// `perf record -g` attached to `pids`, stopped (SIGINT) when dropped.
struct Perf(Option<Reaped>);

impl Perf {
    fn start(dir: Option<&Path>, file: &str, pid: u32) -> Perf {
        let Some(dir) = dir else {
            return Perf(None);
        };
        let _ = std::fs::create_dir_all(dir);
        let out = dir.join(file);
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "-g",
                "-q",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Perf(Some(Reaped::new(
                format!("perf record {}", out.display()),
                child,
            ))),
            Err(e) => {
                eprintln!("perf record: {e}");
                Perf(None)
            }
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(p) = &mut self.0 {
            if p.exited().is_some() {
                return;
            }
            // SAFETY: kill(2) on our own child, not reaped yet; perf writes its file on SIGINT.
            unsafe {
                libc::kill(p.child.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while p.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// VmRSS of an idle node on an empty data directory: the starting RSS of a joiner.
fn idle_node_rss(bin: &Path, cache_mb: u64, rt: &tokio::runtime::Runtime) -> u64 {
    let dir = temp_dir("handoff-idle");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port_on(Ipv4Addr::LOCALHOST));
    let mut node = start_node(
        bin,
        "idle node",
        &dir.path().join("data"),
        addr,
        None,
        cache_mb,
        &dir.path().join("log"),
    );
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pul_once(addr, Duration::from_secs(2)).await {
            if let Some(s) = node.exited() {
                panic!("the idle node exited with {s}");
            }
            assert!(
                Instant::now() < deadline,
                "the idle node did not answer PUL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let maintenance and the runtime settle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });
    let rss = proc_kib(node.pid(), "VmRSS").unwrap_or(0);
    node.stop();
    rss
}

// ---------------------------------------------------------------------------------------------
// One case

#[derive(Clone, Debug, Default)]
struct Figures {
    name: String,
    entries: u64,
    wire_bytes: u64,
    gen_keys: Duration,
    import_batch: Duration,
    /// CPU seconds of the bench process during `import_batch`.
    import_cpu: f64,
    /// Bytes the bench process wrote during `import_batch`.
    import_wchar: u64,
    /// Bytes written by P and J during CON and during DIS (write(2), page cache included).
    con_wchar: (u64, u64),
    dis_wchar: (u64, u64),
    /// The sender's reads alone, through the library in a fresh process.
    scan: ScanFigures,
    /// CPU seconds of P and J during CON (P: launch of J to J's PUL T; J: its whole life).
    con_cpu: (f64, f64),
    /// CPU seconds of P and J during DIS (start of leave to its exit; J: up to its exit).
    dis_cpu: (f64, f64),
    import_single: Option<Duration>,
    network: Duration,
    p_start: Duration,
    con: Duration,
    p_cleanup: Duration,
    /// Launch of J to the start of J's receive (start-up, OWN walk, P's fence and count scan).
    con_before_recv: Option<f64>,
    /// J's receive, as its summary line says: streaming, batch writes and the final sync.
    con_recv: Option<f64>,
    /// Start of `dht-store leave` to J's summary line after P's `T`: the DIS handoff proper.
    dis_to_t: Option<f64>,
    /// J's DIS send, as its summary line says (count scan, streaming, P's writes, P's T).
    dis_send: Option<f64>,
    dis: Duration,
    con_p: Mem,
    con_j: Mem,
    dis_p: Mem,
    dis_j: Mem,
    /// VmHWM of P at J's PUL T (before P deletes the handed entries), KiB.
    con_p_at_switch: u64,
    /// HWM of P from its start to the CON (start-up, for reference).
    p_startup_hwm: u64,
    hwm_reset: bool,
    logs: Vec<String>,
    total: Duration,
}

impl Figures {
    fn rate(&self, d: Duration) -> (f64, f64) {
        let s = d.as_secs_f64().max(1e-9);
        (self.entries as f64 / s, self.wire_bytes as f64 / MIB / s)
    }

    fn storage_limit(&self) -> Duration {
        match self.import_single {
            Some(s) if s < self.import_batch => s,
            _ => self.import_batch,
        }
    }

    /// The slower of the two limits (the larger time).
    fn limit(&self) -> Duration {
        self.storage_limit().max(self.network)
    }
}

/// What the runs of one case share: the addresses, the keys, the baselines (a), (a'), (b) and
/// (r) (in `base`), and the directory the library import filled.
struct Plan {
    case: Case,
    started: Instant,
    root: tempfile::TempDir,
    p_addr: SocketAddrV4,
    j_addr: SocketAddrV4,
    keys: Vec<HashKey>,
    base: Figures,
    import_dir: PathBuf,
}

/// Steps 1–3 of a case: addresses, keys, the import that fills `import_dir`, the baselines.
fn plan_case(case: &Case, settings: &Settings) -> Plan {
    let started = Instant::now();
    let n = case.entries;
    let size = case.value_size;
    let cache = settings.cache_mb << 20;
    let mut f = Figures {
        name: case.name(),
        entries: n as u64,
        wire_bytes: case.wire_bytes(),
        ..Figures::default()
    };
    println!(
        "== case {} ({:.1} MiB on the wire)",
        f.name,
        f.wire_bytes as f64 / MIB
    );

    let root = temp_dir("handoff-bench");
    let p_dir = root.path().join("p");

    // Addresses: retry until J's arc is at least 2^150 wide (nearly always the first pair).
    let (p_addr, j_addr) = (0..50)
        .map(|_| {
            let p = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port_on(Ipv4Addr::LOCALHOST));
            let j_ip = Ipv4Addr::new(127, 0, 0, 2);
            let j = SocketAddrV4::new(j_ip, free_port_on(j_ip));
            (p, j)
        })
        .find(|(p, j)| top_bit(&id_of(p).wrapping_sub(&id_of(j))).unwrap_or(0) >= 150)
        .expect("no address pair with a wide arc");
    let (p_id, j_id) = (id_of(&p_addr), id_of(&j_addr));
    println!("   P {p_addr} id {p_id}\n   J {j_addr} id {j_id}");

    let t = Instant::now();
    let keys = make_keys(n, &j_id, &p_id);
    f.gen_keys = t.elapsed();

    // (a) storage limit: the import that also fills P's directory.
    (f.import_batch, f.import_cpu, f.import_wchar) = import_batches(&p_dir, &keys, size, cache);
    println!(
        "   (a)  import, insert_batch + sync:    {:>8.2} s ({:.1} CPU-s)",
        f.import_batch.as_secs_f64(),
        f.import_cpu
    );
    let scan = scan_in_child(&p_dir, &j_id, &p_id, cache);
    assert_eq!(
        scan.entries, n as u64,
        "count_arc on the imported directory"
    );
    println!(
        "   (r)  sender's reads alone (fresh process): count_arc {:.2} s, iter_arc {:.2} s; \
         RSS {:.0} -> peak {:.0} MiB",
        scan.count.as_secs_f64(),
        scan.iterate.as_secs_f64(),
        mib(scan.start_rss),
        mib(scan.peak)
    );
    f.scan = scan;
    if settings.single {
        let dir = root.path().join("single");
        f.import_single = Some(import_single(&dir, &keys, size, cache));
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "   (a') import, single inserts + flush:  {:>8.2} s",
            f.import_single.unwrap().as_secs_f64()
        );
    }
    // (b) network limit.
    f.network = network_baseline(&keys, size);
    println!(
        "   (b)  loopback TCP, read and discard:  {:>8.2} s",
        f.network.as_secs_f64()
    );
    Plan {
        case: case.clone(),
        started,
        root,
        p_addr,
        j_addr,
        keys,
        base: f,
        import_dir: p_dir,
    }
}

/// A binary a case's handoffs run with: this build's (A) or the baseline's (B).
struct Side {
    /// "this" or "base".
    label: &'static str,
    bin: PathBuf,
    /// VmRSS of an idle node of this binary on an empty data directory.
    idle_rss: u64,
}

/// Where P's directory comes from for one run of a case.
enum PSource<'a> {
    /// This directory becomes P's (runs without a baseline: the import's).
    Move(&'a Path),
    /// A copy of this directory (not running) becomes P's.
    Copy(&'a Path),
}

/// Copies the data directory `from` (no node running on it) to a new `to`: directories and
/// regular files (not the admin socket), without the lock file.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        let target = to.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if ty.is_file() && e.file_name() != "LOCK" {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// A/B: fills `dir` the way `side`'s binary writes its own directory: a node of it on P's
/// address, a ring of one, takes every entry of the case by INS over up to 32 connections and
/// is stopped with SIGTERM. Returns how long that took, or why it failed.
fn fill_by_ins(
    plan: &Plan,
    settings: &Settings,
    side: &Side,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<Duration, String> {
    let log = plan.root.path().join(format!("fill-{}.log", side.label));
    let t = Instant::now();
    let mut node = start_node(
        &side.bin,
        "filler",
        dir,
        plan.p_addr,
        None,
        settings.cache_mb,
        &log,
    );
    let peer: PeerAddr = plan.p_addr;
    let size = plan.case.value_size;
    let res: Result<(), String> = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pul_once(peer, Duration::from_secs(2)).await {
            if let Some(s) = node.exited() {
                return Err(format!("the filling node exited at start-up with {s}"));
            }
            if Instant::now() > deadline {
                return Err("the filling node did not answer PUL within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conns = plan.keys.len().clamp(1, 32);
        let keys = std::sync::Arc::new(plan.keys.clone());
        let mut tasks = Vec::new();
        for task in 0..conns {
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(peer, AddressEncoding::Compact)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                for k in keys.iter().skip(task).step_by(conns) {
                    match c.ins(k, &value_for(k, size)).await {
                        Ok(Status::T) => {}
                        Ok(s) => return Err(format!("INS {k} answered {s:?}, not T")),
                        Err(e) => return Err(format!("INS {k}: {e}")),
                    }
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| format!("INS task: {e}"))??;
        }
        Ok(())
    });
    node.stop();
    match res {
        Ok(()) => Ok(t.elapsed()),
        Err(e) => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(strip_ansi).collect();
            Err(format!(
                "{e}; last lines of its log:\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            ))
        }
    }
}

/// Steps 4–6 of a case with `side`'s binary: P on a directory from `p_src`, J's CON, the DIS
/// and the leave command. `run` names the run in the figures and the files (empty outside A/B
/// runs: then the directories and names are those of the bench before A/B existed).
fn run_handoff(
    plan: &Plan,
    settings: &Settings,
    side: &Side,
    p_src: PSource,
    run: &str,
    rt: &tokio::runtime::Runtime,
) -> Figures {
    let case_start = Instant::now();
    let n = plan.case.entries;
    let size = plan.case.value_size;
    let (p_addr, j_addr) = (plan.p_addr, plan.j_addr);
    let keys = &plan.keys;
    let idle_rss = side.idle_rss;
    let bin = side.bin.as_path();
    let mut f = plan.base.clone();
    if !run.is_empty() {
        f.name = format!("{} [{run}]", f.name);
    }
    let run_dir = if run.is_empty() {
        plan.root.path().to_path_buf()
    } else {
        plan.root.path().join(run)
    };
    let p_dir = run_dir.join("p");
    let j_dir = run_dir.join("j");
    let p_log = run_dir.join("p.log");
    let j_log = run_dir.join("j.log");
    match p_src {
        PSource::Move(dir) => {
            if dir != p_dir {
                std::fs::rename(dir, &p_dir).expect("move P's directory into place");
            }
        }
        PSource::Copy(dir) => copy_dir(dir, &p_dir).expect("copy P's directory"),
    }
    let _dump = LogDump(vec![p_log.clone(), j_log.clone()]);

    // P, a ring of one on the preloaded directory.
    let t = Instant::now();
    let mut p = start_node(bin, "P", &p_dir, p_addr, None, settings.cache_mb, &p_log);
    let p_peer: PeerAddr = p_addr;
    let j_peer: PeerAddr = j_addr;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !pul_once(p_peer, Duration::from_secs(2)).await {
            if let Some(s) = p.exited() {
                panic!("P exited at start-up with {s}");
            }
            assert!(Instant::now() < deadline, "P did not answer PUL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    f.p_start = t.elapsed();
    // No INF at P here: its "keys" count is a full scan that pulls the whole tree into
    // memory and would inflate P's starting RSS (the import already counted the entries).
    println!("   P serving after {:.2} s", f.p_start.as_secs_f64());

    // CON: J joins through P.
    f.p_startup_hwm = proc_kib(p.pid(), "VmHWM").unwrap_or(0);
    f.hwm_reset = reset_hwm(p.pid());
    f.con_p.start_rss = proc_kib(p.pid(), "VmRSS").unwrap_or(0);
    let tag = if run.is_empty() {
        format!("{n}x{size}")
    } else {
        format!("{n}x{size}-{run}")
    };
    let perf_dir = settings.perf.as_deref();
    let perf_p = Perf::start(perf_dir, &format!("{tag}-con-p.data"), p.pid());
    let p_cpu0 = proc_cpu(p.pid()).unwrap_or(0.0);
    let p_w0 = proc_wchar(&p.pid().to_string()).unwrap_or(0);
    let con_wall = day_secs(SystemTime::now());
    let t = Instant::now();
    let mut j = start_node(
        bin,
        "J",
        &j_dir,
        j_addr,
        Some(p_addr),
        settings.cache_mb,
        &j_log,
    );
    let perf_j = Perf::start(perf_dir, &format!("{tag}-con-j.data"), j.pid());
    f.con_j.start_rss = idle_rss;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            // A connection waits in J's backlog until J serves: PUL answers at that moment.
            if pul_once(j_peer, Duration::from_secs(2)).await {
                break;
            }
            if let Some(s) = j.exited() {
                panic!("J exited during its join with {s}");
            }
            assert!(Instant::now() < deadline, "J did not answer PUL");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    f.con = t.elapsed();
    f.con_cpu = (
        proc_cpu(p.pid()).unwrap_or(0.0) - p_cpu0,
        proc_cpu(j.pid()).unwrap_or(0.0),
    );
    f.con_wchar = (
        proc_wchar(&p.pid().to_string())
            .unwrap_or(0)
            .saturating_sub(p_w0),
        proc_wchar(&j.pid().to_string()).unwrap_or(0),
    );
    f.con_j.peak = proc_kib(j.pid(), "VmHWM").unwrap_or(0);
    f.con_p_at_switch = proc_kib(p.pid(), "VmHWM").unwrap_or(0);
    drop(perf_j);
    println!(
        "   CON: J answers PUL {:.2} s after launch",
        f.con.as_secs_f64()
    );
    if let Some((at, line)) = log_event(&j_log, &["handoff done", "CON from"]) {
        let recv = summary_secs(&line);
        f.con_recv = recv;
        f.con_before_recv = recv.map(|r| secs_between(con_wall, at) - r);
    }
    // P deletes the handed entries after the switch: wait for its log line (not INF, whose
    // full scan would disturb P's memory figures).
    let deadline = Instant::now() + Duration::from_secs(300);
    let dropped = loop {
        if let Some(e) = log_event(&p_log, &["dropped the", "entries handed over"]) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "P did not drop the handed entries"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    f.p_cleanup = Duration::from_secs_f64(secs_between(con_wall, dropped.0).max(0.0));
    assert!(
        dropped.1.contains(&format!("dropped the {n} entries")),
        "P: {}",
        dropped.1
    );
    drop(perf_p);
    f.con_p.peak = proc_kib(p.pid(), "VmHWM").unwrap_or(0);
    let checked = rt
        .block_on(spot_check(j_peer, keys, size, 1))
        .unwrap_or_else(|e| panic!("after CON: {e}"));
    if settings.inf {
        rt.block_on(async {
            wait_keys(j_peer, n as u64, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("after CON: {e}"));
            wait_keys(p_peer, 0, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("after CON: {e}"));
        });
    }
    println!(
        "   CON verified: {checked} GETs at J right, {}; P dropped {n} entries {:.2} s after J's launch",
        if settings.inf {
            format!("INF J={n} P=0")
        } else {
            "INF skipped (HANDOFF_INF=0)".into()
        },
        f.p_cleanup.as_secs_f64()
    );

    // DIS: J leaves, handing everything back to P.
    reset_hwm(p.pid());
    reset_hwm(j.pid());
    f.dis_p.start_rss = proc_kib(p.pid(), "VmRSS").unwrap_or(0);
    f.dis_j.start_rss = proc_kib(j.pid(), "VmRSS").unwrap_or(0);
    let j_pid = j.pid();
    let perf_p = Perf::start(perf_dir, &format!("{tag}-dis-p.data"), p.pid());
    let perf_j = Perf::start(perf_dir, &format!("{tag}-dis-j.data"), j_pid);
    let p_cpu0 = proc_cpu(p.pid()).unwrap_or(0.0);
    let j_cpu0 = proc_cpu(j_pid).unwrap_or(0.0);
    let mut j_cpu = j_cpu0;
    let p_w0 = proc_wchar(&p.pid().to_string()).unwrap_or(0);
    let j_w0 = proc_wchar(&j_pid.to_string()).unwrap_or(0);
    let mut j_w = j_w0;
    let dis_wall = day_secs(SystemTime::now());
    let t = Instant::now();
    let mut leave = Reaped::new(
        "dht-store leave",
        dht_store(bin, &["leave", "--data", j_dir.to_str().unwrap()], None)
            .spawn()
            .expect("dht-store leave"),
    );
    let mut j_peak = 0;
    let status = loop {
        if let Some(hwm) = proc_kib(j_pid, "VmHWM") {
            j_peak = j_peak.max(hwm);
        }
        if let Some(c) = proc_cpu(j_pid) {
            j_cpu = c;
        }
        if let Some(w) = proc_wchar(&j_pid.to_string()) {
            j_w = w;
        }
        if let Some(s) = leave.exited() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "leave took > 600 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    f.dis = t.elapsed();
    let p_dis_cpu = proc_cpu(p.pid()).unwrap_or(0.0) - p_cpu0;
    let p_dis_w = proc_wchar(&p.pid().to_string())
        .unwrap_or(0)
        .saturating_sub(p_w0);
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = leave.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("dht-store leave exited with {status}: {err}");
    }
    println!(
        "   DIS: `dht-store leave` exited 0 after {:.2} s",
        f.dis.as_secs_f64()
    );
    // J stops by itself after its leave; sample its peak until then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while j.exited().is_none() && Instant::now() < deadline {
        if let Some(hwm) = proc_kib(j_pid, "VmHWM") {
            j_peak = j_peak.max(hwm);
        }
        if let Some(c) = proc_cpu(j_pid) {
            j_cpu = c;
        }
        if let Some(w) = proc_wchar(&j_pid.to_string()) {
            j_w = w;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f.dis_j.peak = j_peak;
    f.dis_cpu = (p_dis_cpu, j_cpu - j_cpu0);
    f.dis_wchar = (p_dis_w, j_w.saturating_sub(j_w0));
    drop(perf_j);
    drop(perf_p);
    if let Some((at, line)) = log_event(&j_log, &["handoff done", "DIS to"]) {
        f.dis_to_t = Some(secs_between(dis_wall, at));
        f.dis_send = summary_secs(&line);
    }
    f.dis_p.peak = proc_kib(p.pid(), "VmHWM").unwrap_or(0);
    let checked = rt
        .block_on(spot_check(p_peer, keys, size, 2))
        .unwrap_or_else(|e| panic!("after DIS: {e}"));
    rt.block_on(wait_keys(p_peer, n as u64, Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("after DIS: {e}"));
    println!("   DIS verified: {checked} GETs at P right, INF P={n}");

    j.stop();
    p.stop();
    f.logs = summary_lines(&j_log)
        .into_iter()
        .map(|l| format!("J: {l}"))
        .chain(summary_lines(&p_log).into_iter().map(|l| format!("P: {l}")))
        .collect();
    if let Some(dir) = &settings.keep_logs {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::copy(&p_log, dir.join(format!("{tag}-p.log")));
        let _ = std::fs::copy(&j_log, dir.join(format!("{tag}-j.log")));
    }
    drop(j);
    drop(p);
    if run.is_empty() {
        f.total = plan.started.elapsed();
    } else {
        f.total = case_start.elapsed();
        // The next run starts on a copy of its own: free the disk.
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    print_case(&f, settings);
    f
}

// ---------------------------------------------------------------------------------------------
// Report

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_case(f: &Figures, settings: &Settings) {
    let line = |what: &str, d: Duration| {
        let (e, m) = f.rate(d);
        println!(
            "   {what:<34} {:>8.2} s {:>11.0} entries/s {:>8.1} MiB/s",
            d.as_secs_f64(),
            e,
            m
        );
    };
    println!(
        "-- {} results (MiB/s count key + 8-byte length + value per entry)",
        f.name
    );
    line("CON (launch J -> J's PUL T)", f.con);
    if let Some(d) = f.dis_to_t {
        line(
            "DIS (leave -> P's T at J)",
            Duration::from_secs_f64(d.max(1e-6)),
        );
    }
    line("leave command (-> exit 0)", f.dis);
    line("(a)  storage: insert_batch + sync", f.import_batch);
    if let Some(s) = f.import_single {
        line("(a') storage: single inserts + flush", s);
    }
    line("(b)  network: loopback TCP", f.network);
    let limit = f.limit().as_secs_f64();
    println!(
        "   handoff / min(a, b): CON {:.2}   DIS {}   leave command {:.2}   (target >= 0.80)",
        limit / f.con.as_secs_f64(),
        f.dis_to_t
            .map_or("?".into(), |d| format!("{:.2}", limit / d)),
        limit / f.dis.as_secs_f64()
    );
    let opt = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1} s"));
    println!(
        "   CON phases: launch -> J starts receiving {} (start-up, walk, P's fence + count scan); \
         J receiving {} (stream + batch writes + final sync); P empty {:.1} s after launch",
        opt(f.con_before_recv),
        opt(f.con_recv),
        f.p_cleanup.as_secs_f64()
    );
    println!(
        "   DIS phases: J's send {} (count scan + stream + P's writes + P's T); \
         leave -> P's T {}; J's own cleanup afterwards {}",
        opt(f.dis_send),
        opt(f.dis_to_t),
        opt(f.dis_to_t.map(|d| f.dis.as_secs_f64() - d))
    );
    println!(
        "   CPU-s: CON P {:.1} + J {:.1} over {:.1} s wall; DIS P {:.1} + J {:.1} over {:.1} s; \
         import (a) {:.1} over {:.1} s; sender's reads alone: count {:.2} s + iterate {:.2} s; \
         RSS of that reader {:.0} -> {:.0} MiB",
        f.con_cpu.0,
        f.con_cpu.1,
        f.con.as_secs_f64(),
        f.dis_cpu.0,
        f.dis_cpu.1,
        f.dis.as_secs_f64(),
        f.import_cpu,
        f.import_batch.as_secs_f64(),
        f.scan.count.as_secs_f64(),
        f.scan.iterate.as_secs_f64(),
        mib(f.scan.start_rss),
        mib(f.scan.peak)
    );
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "   bytes written (wchar): CON P {:.2} + J {:.2} GiB; DIS P {:.2} + J {:.2} GiB; \
         import (a) {:.2} GiB; payload {:.2} GiB",
        gib(f.con_wchar.0),
        gib(f.con_wchar.1),
        gib(f.dis_wchar.0),
        gib(f.dis_wchar.1),
        gib(f.import_wchar),
        gib(f.wire_bytes)
    );
    let budget = settings.cache_mb as f64 + 64.0;
    let mem = |who: &str, m: &Mem| {
        println!(
            "   RSS {who:<7} start {:>7.1} MiB  peak {:>7.1} MiB  growth {:>7.1} MiB  ({})",
            mib(m.start_rss),
            mib(m.peak),
            mib(m.growth()),
            if mib(m.growth()) <= budget {
                "within cache + 64 MiB"
            } else {
                "OVER cache + 64 MiB"
            }
        );
    };
    println!(
        "   sled cache {} MiB on both nodes; growth budget {budget:.0} MiB{}",
        settings.cache_mb,
        if f.hwm_reset {
            ""
        } else {
            " (VmHWM could not be reset: peaks include earlier phases)"
        }
    );
    mem("CON P", &f.con_p);
    println!(
        "   (CON P at J's PUL T, before P deletes what it handed: peak {:.1} MiB)",
        mib(f.con_p_at_switch)
    );
    mem("CON J", &f.con_j);
    mem("DIS P", &f.dis_p);
    mem("DIS J", &f.dis_j);
    println!(
        "   P start-up: serving after {:.2} s, VmHWM {:.1} MiB before the CON",
        f.p_start.as_secs_f64(),
        mib(f.p_startup_hwm)
    );
    for l in &f.logs {
        println!("   {l}");
    }
    println!("   case took {:.1} s", f.total.as_secs_f64());
    println!();
}

fn print_summary(all: &[Figures], settings: &Settings) {
    println!(
        "== summary (entries/s; MiB/s of key + 8 + value bytes; sled cache {} MiB)",
        settings.cache_mb
    );
    println!(
        "| case | CON e/s | CON MiB/s | DIS e/s | DIS MiB/s | leave cmd e/s | (a) batch e/s | (a) MiB/s | (a') single e/s | (a') MiB/s | (b) net e/s | (b) MiB/s | CON/min(a,b) | DIS/min(a,b) | leave/min(a,b) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let (ce, cm) = f.rate(f.con);
        let dis = f.dis_to_t.map(|d| Duration::from_secs_f64(d.max(1e-6)));
        let (de, dm) = dis.map_or((f64::NAN, f64::NAN), |d| f.rate(d));
        let (le, _) = f.rate(f.dis);
        let (ae, am) = f.rate(f.import_batch);
        let (se, sm) = f.import_single.map_or(("-".into(), "-".into()), |s| {
            let (e, m) = f.rate(s);
            (format!("{e:.0}"), format!("{m:.1}"))
        });
        let (be, bm) = f.rate(f.network);
        let limit = f.limit().as_secs_f64();
        println!(
            "| {} | {ce:.0} | {cm:.1} | {de:.0} | {dm:.1} | {le:.0} | {ae:.0} | {am:.1} | {se} | {sm} | {be:.0} | {bm:.1} | {:.2} | {:.2} | {:.2} |",
            f.name,
            limit / f.con.as_secs_f64(),
            f.dis_to_t.map_or(f64::NAN, |d| limit / d),
            limit / f.dis.as_secs_f64()
        );
    }
    println!();
    println!("| case | CON P start/peak/growth MiB | CON J start/peak/growth MiB | DIS P start/peak/growth MiB | DIS J start/peak/growth MiB |");
    println!("|---|---|---|---|---|");
    for f in all {
        let m = |m: &Mem| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                mib(m.start_rss),
                mib(m.peak),
                mib(m.growth())
            )
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            f.name,
            m(&f.con_p),
            m(&f.con_j),
            m(&f.dis_p),
            m(&f.dis_j)
        );
    }
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(SCAN_CHILD) {
        return scan_child(&spec);
    }
    let settings = Settings::from_env();
    print_machine();
    println!(
        "cases: {}; sled cache {} MiB; single-insert baseline {}",
        settings
            .cases
            .iter()
            .map(Case::name)
            .collect::<Vec<_>>()
            .join(", "),
        settings.cache_mb,
        if settings.single { "on" } else { "off" }
    );
    println!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    install_signal_handler(&rt);
    let start = Instant::now();
    let this_bin = PathBuf::from(common::BIN);
    let idle_rss = idle_node_rss(&this_bin, settings.cache_mb, &rt);
    println!(
        "idle node (empty data dir) VmRSS {:.1} MiB: the starting RSS of a joiner",
        mib(idle_rss)
    );
    let this = Side {
        label: "this",
        bin: this_bin,
        idle_rss,
    };
    // A/B: the baseline's own idle RSS, which also shows that it starts at all.
    let mut base = None;
    if let Some(bin) = &settings.baseline {
        println!(
            "A/B: this build against the baseline {} ({} rounds, A B then B A ...; P's directory {})",
            bin.display(),
            settings.ab_rounds,
            if settings.ab_fill_ins {
                "filled over INS by each binary (HANDOFF_AB_FILL=ins)"
            } else {
                "a copy of the library import (HANDOFF_AB_FILL=import)"
            }
        );
        let idle = if bin.is_file() {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                idle_node_rss(bin, settings.cache_mb, &rt)
            }))
            .map_err(|p| panic_text(&p))
        } else {
            Err("no such file".into())
        };
        match idle {
            Ok(rss) => {
                println!(
                    "baseline idle node VmRSS {:.1} MiB: the starting RSS of its joiner",
                    mib(rss)
                );
                base = Some(Side {
                    label: "base",
                    bin: bin.clone(),
                    idle_rss: rss,
                });
            }
            Err(e) => println!(
                "A/B NOT RUN: the baseline {} cannot start a node ({e}); this build only",
                bin.display()
            ),
        }
    }
    println!();
    let mut all = Vec::new();
    let mut ab_lines = Vec::new();
    for case in &settings.cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &base {
            None => {
                let plan = plan_case(case, &settings);
                let dir = plan.import_dir.clone();
                let f = run_handoff(&plan, &settings, &this, PSource::Move(&dir), "", &rt);
                (vec![f], None)
            }
            Some(base) => {
                let (figures, line) = ab_case(case, &settings, [&this, base], &rt);
                (figures, Some(line))
            }
        }));
        match r {
            Ok((mut f, line)) => {
                all.append(&mut f);
                ab_lines.extend(line);
            }
            Err(_) => {
                eprintln!("case {} FAILED (see the panic above)", case.name());
                return ExitCode::FAILURE;
            }
        }
    }
    print_summary(&all, &settings);
    if !ab_lines.is_empty() {
        println!();
        println!(
            "== A/B summary: rate of this build / rate of the baseline, pooled over the rounds"
        );
        for l in &ab_lines {
            println!("{l}");
        }
    }
    println!();
    println!("total {:.1} s", start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// The message of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// One case A/B: the plan (baselines once), a P directory per binary, then
/// `settings.ab_rounds` rounds of a run with each. Returns every run's figures and the case's
/// line of the A/B summary. A failure of this build's run fails the case (a panic); one of the
/// baseline's is reported and the case goes on without it.
fn ab_case(
    case: &Case,
    settings: &Settings,
    sides: [&Side; 2],
    rt: &tokio::runtime::Runtime,
) -> (Vec<Figures>, String) {
    let plan = plan_case(case, settings);
    let mut sources: Vec<Result<PathBuf, String>> = Vec::new();
    for side in sides {
        if !settings.ab_fill_ins {
            sources.push(Ok(plan.import_dir.clone()));
            continue;
        }
        let dir = plan.root.path().join(format!("fill-{}", side.label));
        match fill_by_ins(&plan, settings, side, &dir, rt) {
            Ok(took) => {
                println!(
                    "   P's directory for {} filled over INS by {}: {} entries in {:.2} s",
                    side.label,
                    side.bin.display(),
                    plan.keys.len(),
                    took.as_secs_f64()
                );
                sources.push(Ok(dir));
            }
            Err(e) if side.label == "this" => panic!("filling P's directory over INS: {e}"),
            Err(e) => {
                println!("   the baseline could not fill P's directory: {e}");
                sources.push(Err(format!("could not fill P's directory: {e}")));
            }
        }
    }
    if settings.ab_fill_ins {
        // Only the baselines read it: free the disk.
        let _ = std::fs::remove_dir_all(&plan.import_dir);
    }
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=settings.ab_rounds {
        // A then B in odd rounds, B then A in even ones: neither always goes first.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let side = sides[i];
            let Ok(src) = &sources[i] else {
                continue;
            };
            let run = format!("{}-r{round}", side.label);
            println!("-- {} run {run}: {}", plan.case.name(), side.bin.display());
            let go = || run_handoff(&plan, settings, side, PSource::Copy(src), &run, rt);
            if i == 0 {
                runs[0].push(go());
                continue;
            }
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(go)) {
                Ok(f) => runs[1].push(f),
                Err(p) => {
                    let e = panic_text(&p);
                    println!("   the baseline could not run this case: {e}");
                    sources[1] = Err(format!("could not run the case: {e}"));
                }
            }
        }
    }
    let line = print_ab(&plan, settings, &runs, sources[1].as_ref().err());
    let [a, b] = runs;
    (a.into_iter().chain(b).collect(), line)
}

/// The A/B comparison of one case: CON, DIS and the leave command of both binaries (each
/// round's time, and the rate over all rounds) and this/baseline of the rates. Returns the
/// case's line for the summary.
fn print_ab(
    plan: &Plan,
    settings: &Settings,
    runs: &[Vec<Figures>; 2],
    base_failed: Option<&String>,
) -> String {
    let name = plan.case.name();
    println!(
        "== A/B {name}: this build ({} runs) / baseline {} ({} runs); seconds [each round] and \
         MiB/s over all rounds",
        runs[0].len(),
        settings
            .baseline
            .as_ref()
            .map_or(String::new(), |b| b.display().to_string()),
        runs[1].len()
    );
    type Pick = fn(&Figures) -> Option<f64>;
    let directions: [(&str, Pick); 3] = [
        ("CON (launch J -> J's PUL T)", |f| Some(f.con.as_secs_f64())),
        ("DIS (leave -> P's T at J)", |f| f.dis_to_t),
        ("leave command (-> exit 0)", |f| Some(f.dis.as_secs_f64())),
    ];
    let bytes = plan.case.wire_bytes() as f64 / MIB;
    let mut summary = vec![format!("{name}:")];
    for (what, pick) in directions {
        // Every round's time, or None if a run lacks it (a log line the binary does not write).
        let times = |side: usize| -> Option<Vec<f64>> {
            let v: Option<Vec<f64>> = runs[side].iter().map(pick).collect();
            v.filter(|v| !v.is_empty())
        };
        let show = |t: &Option<Vec<f64>>| match t {
            Some(t) => format!(
                "{:.2} s [{}] {:>7.1} MiB/s",
                t.iter().sum::<f64>() / t.len() as f64,
                t.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                bytes * t.len() as f64 / t.iter().sum::<f64>()
            ),
            None => "?".into(),
        };
        let (a, b) = (times(0), times(1));
        let ratio = match (&a, &b) {
            (Some(a), Some(b)) => {
                let pooled = (b.iter().sum::<f64>() / b.len() as f64)
                    / (a.iter().sum::<f64>() / a.len() as f64);
                let rounds: Vec<String> = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| format!("{:.3}", b / a))
                    .collect();
                summary.push(format!(
                    "{} {pooled:.3}",
                    &what[..what.find(' ').unwrap_or(3)]
                ));
                format!("this/baseline {pooled:.3} (rounds {})", rounds.join(" "))
            }
            _ => {
                summary.push(format!("{} ?", &what[..what.find(' ').unwrap_or(3)]));
                "this/baseline ?".into()
            }
        };
        println!(
            "   {what:<28} this {}   baseline {}   {ratio}",
            show(&a),
            show(&b)
        );
    }
    if let Some(e) = base_failed {
        let first = e.lines().next().unwrap_or_default();
        println!("   the baseline {first}");
        summary.push(format!("(the baseline {first})"));
    }
    println!();
    summary.join("  ")
}
