//! Anti-entropy benchmark (issue 17): `cargo bench --bench sync`.
//!
//! How a replica that was away catches up, and what that costs: time, bytes moved, memory.
//!
//! 1. A ring of `BENCH_SYNC_NODES` real `dht-store` processes (default 3; the testkit's
//!    [`common::start_ring`]: loopback addresses 127.0.0.2, ..., maintenance every 200 ms) with
//!    `replicas = BENCH_SYNC_REPLICAS` (default 2: in a ring of 3 every node holds every arc) and
//!    a sled cache of `BENCH_SYNC_CACHE_MB` (default 64, as the handoff bench) is filled with
//!    `BENCH_SYNC_BYTES` of values (default 1 GiB) of `BENCH_SYNC_VALUE` bytes (default 10 KiB)
//!    under random keys, by INS over `BENCH_SYNC_CONNS` connections (default 32), each INS sent
//!    to the key's owner (computed from the ids). Then every copy must be in place (INF `keys` +
//!    `copies` over the ring = entries × copies).
//! 2. Node `BENCH_SYNC_VICTIM` (default 1, in id order) is stopped (`BENCH_SYNC_STOP=kill`,
//!    SIGKILL, the default; or `term`), the ring routes around it ([`common::ring_check`]),
//!    and `BENCH_SYNC_CHANGE` of the entries (default 0.01) change through the live owners: half
//!    overwritten (new value, same size), half removed. Writes answered `F` (while the owners
//!    find their replicas again) are retried. A write is acknowledged only once every replica
//!    holds it, so writes need the ring to have given the stopped node up: its predecessor takes
//!    its arc meanwhile, and when it returns it joins again and gets that arc back: by
//!    comparison (VCC, `compared-join/1`), whose entries count in the nodes' `sync moved`
//!    lines with anti-entropy's, or by a stream of the whole arc (VCN, a build before VCC or a
//!    peer without it), which the bench reports apart (the node's "handoff done" line).
//! 3. The node is started again on its directory. From its exec the bench polls (every 250 ms)
//!    its PUL, the nodes' logs, and VGT at the returning node of up to `BENCH_SYNC_SAMPLES`
//!    (default 200) of the changed keys. It is **in sync** when every node's last comparison
//!    of each copy it holds, since the restart, succeeded (`copy of its arc synced in ...` or,
//!    at debug level, `... in sync`), and every sampled key holds its new value or a tombstone.
//!    Not INF: it counts the keys held with a full scan, a GiB at every node each poll, which
//!    slowed the nodes and grew their memory in a first version of this bench; INF is read
//!    once per node before the restart and after the end, for its `sync moved` line. Then
//!    every arc's copies are compared by digests (VDG of the arc at its owner and at each of its
//!    replicas, depth 8; polled until equal), the exact check.
//! 4. It prints the times (serving, rejoin handoff, in sync, digests equal), the bytes moved by
//!    anti-entropy (each node's INF `sync moved` line, counted since the restart: `in` is
//!    entries taken and their value bytes plus the digests and key lists received, `out`
//!    entries given and their value bytes), the rejoin handoff's bytes, against the bytes
//!    changed and the total; and the returning node's peak RSS during the catch-up (VmRSS
//!    sampled every 20 ms, per span: until it serves, the rejoin handoff, on to in sync, the
//!    bench's digest check; and VmHWM), the growth from its RSS when it first answered PUL to
//!    the peak before the digest check next to the handoff bench's budget: sled cache + 64 MiB
//!    (as there, an idle node's RSS is the base). The other nodes' peak growth over their RSS
//!    before the restart is printed too (their VmHWM, reset then; it includes the digest check).
//!
//! Speed is printed, not asserted. The bench fails only if the nodes cannot be set up, a
//! write never succeeds, or the copies are not in sync after `BENCH_SYNC_LIMIT_SECS` (default
//! 1800): that is a wrong result, not a slow one.
//!
//! Environment (sizes take a suffix K, M or G, powers of 1024):
//! - `BENCH_SYNC_BYTES` value bytes written in the fill (default 1G; e.g. 64M for a quick run)
//! - `BENCH_SYNC_VALUE` bytes per value (default 10K)
//! - `BENCH_SYNC_CHANGE` fraction of the entries changed while the node is down (default 0.01)
//! - `BENCH_SYNC_NODES`, `BENCH_SYNC_REPLICAS`, `BENCH_SYNC_VICTIM`, `BENCH_SYNC_STOP`,
//!   `BENCH_SYNC_CONNS`, `BENCH_SYNC_CACHE_MB`, `BENCH_SYNC_SAMPLES`, `BENCH_SYNC_LIMIT_SECS`
//! - `BENCH_SYNC_SEED` the keys' seed (default 17)
//! - `BENCH_SYNC_KEEP_LOGS=DIR` copy the nodes' logs to DIR at the end
//! - `BENCH_SYNC_RUST_LOG` more `RUST_LOG` directives for the nodes (they log at `info`, and
//!   `dht_store::node::sync` at `debug`), e.g. `dht_store::node::extensions=debug`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_store::client::Client;
use dht_store::protocol::{AddressEncoding, HashKey, Limits, PeerAddr, Status};
use dht_store::ring::id_of;

use common::process::{install_signal_handler, temp_dir};
use common::sample::{print_machine, proc_kib, reset_hwm};
use common::{inf_at, owner_of, ring_check, start_ring, wait_replicas, Rng};

const MIB: f64 = (1u64 << 20) as f64;
/// Depth of the final digest comparison (256 segments per arc).
const CHECK_DEPTH: u8 = 8;

struct Settings {
    bytes: u64,
    value: usize,
    change: f64,
    nodes: usize,
    replicas: usize,
    victim: usize,
    kill: bool,
    conns: usize,
    cache_mb: u64,
    samples: usize,
    limit: Duration,
    seed: u64,
    keep_logs: Option<String>,
    /// `BENCH_SYNC_RUST_LOG`: more directives for the nodes' `RUST_LOG`.
    rust_log: Option<String>,
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, shift) = match v.chars().last()? {
        'K' | 'k' => (&v[..v.len() - 1], 10),
        'M' | 'm' => (&v[..v.len() - 1], 20),
        'G' | 'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    num.trim().parse::<u64>().ok().map(|n| n << shift)
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let size = |name: &str, default: u64| {
            var(name).map_or(default, |v| {
                parse_size(&v).unwrap_or_else(|| panic!("{name}: a size such as 64M"))
            })
        };
        let num = |name: &str, default: u64| {
            var(name).map_or(default, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: a whole number"))
            })
        };
        let nodes = num("BENCH_SYNC_NODES", 3).max(2) as usize;
        Settings {
            bytes: size("BENCH_SYNC_BYTES", 1 << 30),
            value: size("BENCH_SYNC_VALUE", 10 << 10).max(1) as usize,
            change: var("BENCH_SYNC_CHANGE").map_or(0.01, |v| {
                v.trim()
                    .parse::<f64>()
                    .expect("BENCH_SYNC_CHANGE: a fraction")
                    .clamp(0.0, 1.0)
            }),
            nodes,
            replicas: num("BENCH_SYNC_REPLICAS", 2) as usize,
            victim: (num("BENCH_SYNC_VICTIM", 1) as usize).min(nodes - 1),
            kill: var("BENCH_SYNC_STOP").is_none_or(|v| v.trim() != "term"),
            conns: num("BENCH_SYNC_CONNS", 32).max(1) as usize,
            cache_mb: num("BENCH_SYNC_CACHE_MB", 64),
            samples: num("BENCH_SYNC_SAMPLES", 200) as usize,
            limit: Duration::from_secs(num("BENCH_SYNC_LIMIT_SECS", 1800)),
            seed: num("BENCH_SYNC_SEED", 17),
            keep_logs: var("BENCH_SYNC_KEEP_LOGS"),
            rust_log: var("BENCH_SYNC_RUST_LOG"),
        }
    }
}

/// What a write does to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// INS of the value of this generation.
    Put(u8),
    /// REM.
    Remove,
}

/// The value of `key` in `generation`: a 256-byte block seeded by both, repeated.
fn value_for(key: &HashKey, generation: u8, size: usize) -> Vec<u8> {
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&key.0[..8]);
    let mut rng = Rng::new(u64::from_be_bytes(seed) ^ (u64::from(generation) << 56));
    let block: Vec<u8> = (0..32).flat_map(|_| rng.next_u64().to_be_bytes()).collect();
    block.iter().copied().cycle().take(size).collect()
}

/// One write, at the key's owner among `ring`, retried (up to 300 times, 100 ms apart) while it
/// is answered `F` or fails. Returns the attempts it took.
async fn write_one(
    clients: &mut HashMap<PeerAddr, Client>,
    ring: &[PeerAddr],
    key: &HashKey,
    write: Write,
    size: usize,
) -> Result<u32, String> {
    let mut last = String::new();
    for attempt in 1..=300 {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let owner = owner_of(ring, key);
        let c = match clients.entry(owner) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match Client::connect(owner, AddressEncoding::Compact).await {
                    Ok(c) => e.insert(c),
                    Err(err) => {
                        last = format!("connect to {owner}: {err}");
                        continue;
                    }
                }
            }
        };
        let res = match write {
            Write::Put(generation) => c.ins(key, &value_for(key, generation, size)).await,
            Write::Remove => match c.rem(key).await {
                // F: absent, or the removal failed. A REM answered F for want of a replica may
                // have removed the key at the owner; the key is gone either way if EXI says so.
                Ok(Status::F) => match c.exi(key).await {
                    Ok(Status::F) => Ok(Status::T),
                    Ok(_) => Ok(Status::F),
                    Err(e) => Err(e),
                },
                other => other,
            },
        };
        match res {
            Ok(Status::T) => return Ok(attempt),
            Ok(s) => last = format!("{write:?} of {key} at {owner} answered {s:?}"),
            Err(e) => {
                clients.remove(&owner);
                last = format!("{write:?} of {key} at {owner}: {e}");
            }
        }
    }
    Err(last)
}

/// Writes every `(key, write)` of `items` over `conns` tasks; returns the wall time and the
/// retries.
async fn write_all(
    ring: &[PeerAddr],
    items: Arc<Vec<(HashKey, Write)>>,
    conns: usize,
    size: usize,
) -> Result<(Duration, u64), String> {
    let ring: Arc<[PeerAddr]> = ring.into();
    let retries = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conns {
        let (ring, items, retries) = (ring.clone(), items.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let mut clients = HashMap::new();
            for (key, write) in items.iter().skip(t).step_by(conns) {
                let tries = write_one(&mut clients, &ring, key, *write, size).await?;
                retries.fetch_add(u64::from(tries - 1), Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("writer task: {e}"))??;
    }
    Ok((began.elapsed(), retries.load(Ordering::Relaxed)))
}

/// INF at `addr` once its counts are exact: a node counts for INF for a second at most and
/// answers from its last count (with a `counted Ns ago` line) or `keys unknown` meanwhile,
/// while a count runs in the background (`node::counts`).
async fn inf_counted(addr: PeerAddr) -> Result<String, String> {
    let t = Instant::now();
    loop {
        let inf = inf_at(addr).await?;
        if inf_number(&inf, "keys").is_some() && !inf.lines().any(|l| l.starts_with("counted ")) {
            return Ok(inf);
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!("INF at {addr} not counted in 600 s:\n{inf}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A number on a line of INF (`keys N`, `copies N`).
fn inf_number(inf: &str, name: &str) -> Option<u64> {
    inf.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A node's INF line of anti-entropy: `sync moved in E entries B bytes, out E entries B
/// bytes` (counted since the node started).
#[derive(Clone, Copy, Debug, Default)]
struct Moved {
    in_entries: u64,
    in_bytes: u64,
    out_entries: u64,
    out_bytes: u64,
}

impl Moved {
    fn parse(inf: &str) -> Option<Moved> {
        let moved = inf.lines().find(|l| l.starts_with("sync moved in "))?;
        let t: Vec<&str> = moved.split_whitespace().collect();
        let n = |i: usize| t.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Moved {
            in_entries: n(3)?,
            in_bytes: n(5)?,
            out_entries: n(8)?,
            out_bytes: n(10)?,
        })
    }

    fn minus(&self, before: &Moved) -> Moved {
        Moved {
            in_entries: self.in_entries - before.in_entries,
            in_bytes: self.in_bytes - before.in_bytes,
            out_entries: self.out_entries - before.out_entries,
            out_bytes: self.out_bytes - before.out_bytes,
        }
    }
}

/// INF's `sync moved` line at `addr`, and how long INF took to answer (it counts the keys
/// held, for a second at most).
async fn moved_at(addr: PeerAddr) -> Result<(Moved, Duration), String> {
    let t = Instant::now();
    let inf = inf_at(addr).await?;
    let took = t.elapsed();
    Moved::parse(&inf)
        .map(|m| (m, took))
        .ok_or_else(|| format!("INF at {addr} has no sync line:\n{inf}"))
}

/// Where a node's comparison of its copy of `owner`'s arc stands in `log` (the log written
/// since the restart): `Some(true)` its last comparison succeeded ("synced in", or "in sync" at
/// debug level), `Some(false)` it failed, `None` none yet.
fn sync_logged(log: &str, owner: PeerAddr) -> Option<bool> {
    let tag = format!("owner={owner}");
    log.lines()
        .rev()
        .find(|l| l.contains("copy of its arc") && l.trim_end().ends_with(&tag))
        .map(|l| !l.contains("not synced"))
}

/// Whether `addr` holds what `expected` says for each key (a value of that generation, or a
/// tombstone or nothing), by VGT; the number that do not.
async fn samples_wrong(
    addr: PeerAddr,
    expected: &[(HashKey, Write)],
    size: usize,
) -> Result<usize, String> {
    let mut c = Client::connect(addr, AddressEncoding::Compact)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut wrong = 0;
    for (key, write) in expected {
        let got = c
            .vgt(key)
            .await
            .map_err(|e| format!("VGT at {addr}: {e}"))?;
        let ok = match (write, got) {
            (Write::Put(g), Some((_, Some(v)))) => v == value_for(key, *g, size),
            (Write::Remove, None | Some((_, None))) => true,
            _ => false,
        };
        wrong += usize::from(!ok);
    }
    Ok(wrong)
}

/// Segments whose digests differ between the owner of each arc and each of its replicas
/// (`replicas` predecessors), summed over the ring; 0 when every copy is the owner's.
async fn digests_differing(ring: &[PeerAddr], replicas: usize) -> Result<u64, String> {
    let limits = Limits {
        io_timeout: Some(Duration::from_secs(600)),
        ..Limits::default()
    };
    let mut sorted = ring.to_vec();
    sorted.sort_by_key(id_of);
    let n = sorted.len();
    let mut differing = 0;
    for (i, owner) in sorted.iter().enumerate() {
        let (from, to) = (id_of(owner), id_of(&sorted[(i + 1) % n]));
        let mut digests = Vec::new();
        for back in 0..=replicas.min(n - 1) {
            let holder = sorted[(i + n - back) % n];
            let d = async {
                Client::connect_with(holder, AddressEncoding::Compact, limits)
                    .await?
                    .vdg(&from, &to, CHECK_DEPTH)
                    .await
            }
            .await
            .map_err(|e| format!("VDG at {holder}: {e}"))?;
            digests.push(d);
        }
        for d in &digests[1..] {
            differing += d.iter().zip(&digests[0]).filter(|(a, b)| a != b).count() as u64;
        }
    }
    Ok(differing)
}

/// VmRSS of a process sampled every 20 ms on a thread of its own, until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = proc_kib(pid, "VmRSS") {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak_kib,
            thread: Some(thread),
        }
    }

    /// The peak VmRSS since the last call (or the start), KiB; starts the next span.
    fn take_peak(&self) -> u64 {
        let now = self.peak_kib.swap(0, Ordering::Relaxed);
        now.max(self.peak_kib.load(Ordering::Relaxed))
    }

    /// Stops sampling; the peak VmRSS seen since the last [`RssSampler::take_peak`], KiB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kib.load(Ordering::Relaxed)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bytes_text(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

/// The lines of `text` that contain any of `needles`.
fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// The "X MiB" of a handoff summary line ("... entries, 12.3 MiB in 0.4 s ...").
fn handoff_mib(line: &str) -> Option<f64> {
    let before = &line[..line.find(" MiB in ")?];
    before.rsplit(' ').next()?.parse().ok()
}

/// What a stopped node finds when it comes back, polled until it is in sync.
#[derive(Default)]
struct CatchUp {
    serving: Option<Duration>,
    rss_serving_kib: u64,
    rejoined: Option<Duration>,
    /// The returning node's own copies compared and brought up to date (its log).
    own_copies: Option<Duration>,
    in_sync: Option<Duration>,
    digests_equal: Option<Duration>,
    /// Peak VmRSS (KiB) from the exec to serving, then to the rejoin seen in the log, then to in
    /// sync, then during the bench's own digest check; each as seen by the 250 ms polls.
    peaks: [u64; 4],
    /// VmRSS (KiB) when the rejoin was seen.
    rss_rejoined_kib: u64,
}

async fn run(s: &Settings, root: &Path) -> Result<(), String> {
    let entries = (s.bytes / s.value as u64).max(1) as usize;
    let copies = (s.replicas + 1).min(s.nodes);
    let cache = s.cache_mb.to_string();
    let replicas = s.replicas.to_string();
    let rust_log = match &s.rust_log {
        Some(more) => format!("info,dht_store::node::sync=debug,{more}"),
        None => "info,dht_store::node::sync=debug".to_string(),
    };
    let env = [
        ("DHT_STORE_REPLICAS", replicas.as_str()),
        ("DHT_STORE_CACHE_CAPACITY_MB", cache.as_str()),
        // "copy of its arc in sync" (nothing to move) is a debug line.
        ("RUST_LOG", rust_log.as_str()),
        ("NO_COLOR", "1"),
    ];
    let mut nodes = start_ring(root, s.nodes, &env).await;
    let ring: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    let took = wait_replicas(&ring, s.replicas, Duration::from_secs(60)).await?;
    println!(
        "ring of {} (id order): {}; replicas {} ({copies} copies of every entry), ready after {:.1} s",
        s.nodes,
        ring.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.replicas,
        took.as_secs_f64()
    );

    // 1. Fill.
    let mut rng = Rng::new(s.seed);
    let keys: Vec<HashKey> = (0..entries).map(|_| rng.key()).collect();
    let fill: Arc<Vec<(HashKey, Write)>> =
        Arc::new(keys.iter().map(|k| (*k, Write::Put(0))).collect());
    let total = entries as u64 * s.value as u64;
    let (fill_time, fill_retries) = write_all(&ring, fill, s.conns, s.value).await?;
    println!(
        "fill: {entries} entries x {} B = {} by INS over {} connections in {:.1} s ({:.0} INS/s, {:.1} MiB/s of values; {fill_retries} retries)",
        s.value,
        bytes_text(total),
        s.conns,
        fill_time.as_secs_f64(),
        entries as f64 / fill_time.as_secs_f64(),
        total as f64 / MIB / fill_time.as_secs_f64()
    );
    let mut held = 0;
    for a in &ring {
        let inf = inf_counted(*a).await?;
        held += inf_number(&inf, "keys").unwrap_or(0) + inf_number(&inf, "copies").unwrap_or(0);
    }
    if held != (entries * copies) as u64 {
        return Err(format!(
            "after the fill the ring holds {held} entries, not {entries} x {copies}"
        ));
    }
    let dirs: u64 = nodes.iter().map(|n| dir_bytes(&n.data)).sum();
    println!(
        "every copy in place: {held} entries over the ring; data directories {} in all",
        bytes_text(dirs)
    );

    // 2. Stop one node, change entries through the others.
    let v = s.victim;
    let victim = ring[v];
    let live: Vec<PeerAddr> = ring.iter().copied().filter(|a| *a != victim).collect();
    let stopped_at = Instant::now();
    let status = nodes[v].stop(if s.kill { libc::SIGKILL } else { libc::SIGTERM });
    // Not wait_replicas: its INF at every node is a full scan of a GiB each time.
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = ring_check(&live, 20).await {
        if Instant::now() > deadline {
            return Err(format!("the ring did not route around {victim}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = stopped_at.elapsed();
    println!(
        "stopped {victim} ({}; {status}); the other {} route around it after {:.1} s",
        if s.kill { "SIGKILL" } else { "SIGTERM" },
        live.len(),
        took.as_secs_f64()
    );
    let changed = ((entries as f64 * s.change).round() as usize).min(entries);
    let mut picked = std::collections::HashSet::new();
    let mut changes = Vec::with_capacity(changed);
    while changes.len() < changed {
        let i = rng.index(entries);
        if picked.insert(i) {
            let write = if changes.len() % 2 == 0 {
                Write::Put(1)
            } else {
                Write::Remove
            };
            changes.push((keys[i], write));
        }
    }
    let changes = Arc::new(changes);
    let overwritten = changes.iter().filter(|c| c.1 != Write::Remove).count();
    let changed_bytes = overwritten as u64 * s.value as u64;
    let (change_time, change_retries) = write_all(&live, changes.clone(), s.conns, s.value).await?;
    println!(
        "changed {changed} entries ({:.2}%) through the live owners in {:.1} s: {overwritten} overwritten ({} of new values), {} removed; {change_retries} retries",
        100.0 * changed as f64 / entries as f64,
        change_time.as_secs_f64(),
        bytes_text(changed_bytes),
        changed - overwritten
    );

    // 3. Restart it and poll until it is in sync.
    let mut before = HashMap::new();
    let mut log_start = HashMap::new();
    let mut hwm_base = HashMap::new();
    for n in &nodes {
        log_start.insert(n.addr, n.log_text().len());
        if n.addr != victim {
            before.insert(n.addr, moved_at(n.addr).await?.0);
        }
    }
    for n in &nodes {
        if n.addr != victim {
            let pid = n.pid() as u32;
            hwm_base.insert(
                n.addr,
                reset_hwm(pid).then(|| proc_kib(pid, "VmRSS")).flatten(),
            );
        }
    }
    let down = stopped_at.elapsed();
    let t0 = Instant::now();
    nodes[v].launch();
    let pid = nodes[v].pid() as u32;
    let sampler = RssSampler::start(pid);
    println!(
        "restarting {victim} on its directory after {:.1} s down",
        down.as_secs_f64()
    );
    let sample: Vec<(HashKey, Write)> = changes.iter().take(s.samples).copied().collect();
    // The arcs each node holds as copies: those of its `replicas` successors, in id order.
    let want_copies = s.replicas.min(s.nodes - 1);
    let held: Vec<(usize, Vec<PeerAddr>)> = (0..s.nodes)
        .map(|i| {
            let owners = (1..=want_copies).map(|j| ring[(i + j) % s.nodes]).collect();
            (i, owners)
        })
        .collect();
    let mut c = CatchUp::default();
    let mut others_peak = HashMap::new();
    let mut last = String::new();
    loop {
        let el = t0.elapsed();
        if el > s.limit {
            let _ = sampler.finish();
            return Err(format!(
                "{victim} not in sync {:.0} s after its restart: {last}",
                el.as_secs_f64()
            ));
        }
        if !nodes[v].running() {
            return Err(format!("{victim} exited: {}", nodes[v].log_text()));
        }
        if c.serving.is_none() {
            let pul = async {
                Client::connect(victim, AddressEncoding::Compact)
                    .await?
                    .pul()
                    .await
            };
            if let Ok(Status::T) = pul.await {
                c.serving = Some(el);
                c.rss_serving_kib = proc_kib(pid, "VmRSS").unwrap_or(0);
                c.peaks[0] = sampler.take_peak();
            }
        } else if c.in_sync.is_none() {
            let log = nodes[v].log_text();
            if c.rejoined.is_none() && log[log_start[&victim]..].contains("joined again through") {
                c.rejoined = Some(el);
                c.peaks[1] = sampler.take_peak();
                c.rss_rejoined_kib = proc_kib(pid, "VmRSS").unwrap_or(0);
            }
            // Every node's last comparison of each copy it holds, since the restart, succeeded.
            last.clear();
            for (i, owners) in &held {
                let n = &nodes[*i];
                let log = n.log_text();
                let since = &log[log_start[&n.addr].min(log.len())..];
                for o in owners {
                    if sync_logged(since, *o) != Some(true) {
                        last = format!("{}: its copy of {o}'s arc not synced yet", n.addr);
                    }
                }
                if *i == v && last.is_empty() && c.own_copies.is_none() {
                    c.own_copies = Some(el);
                }
            }
            if last.is_empty() {
                match samples_wrong(victim, &sample, s.value).await? {
                    0 => {
                        c.in_sync = Some(el);
                        c.peaks[2] = sampler.take_peak();
                        for n in nodes.iter().filter(|n| n.addr != victim) {
                            others_peak.insert(n.addr, proc_kib(n.pid() as u32, "VmHWM"));
                        }
                    }
                    w => last = format!("{w} of {} sampled changes not at {victim}", sample.len()),
                }
            }
        } else {
            let d = digests_differing(&ring, s.replicas).await?;
            if d == 0 {
                c.digests_equal = Some(t0.elapsed());
                break;
            }
            last = format!("{d} segments differ between owners and replicas (VDG)");
            tokio::time::sleep(Duration::from_millis(750)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.peaks[3] = sampler.finish();
    let hwm = proc_kib(pid, "VmHWM").unwrap_or(0);

    // 4. Figures.
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!();
    println!("== catch-up of {victim} (times from its exec)");
    println!(
        "serving (PUL T) {}; rejoin handoff done {}; its own copies synced {}; in sync (every node's copies synced since the restart, and {} VGT samples at {victim}) {}; every arc's digests equal at owner and replicas {}",
        secs(c.serving),
        secs(c.rejoined),
        secs(c.own_copies),
        sample.len(),
        secs(c.in_sync),
        secs(c.digests_equal)
    );
    let victim_log = nodes[v].log_text();
    let victim_new = &victim_log[log_start[&victim]..];
    let rejoin: Vec<&str> = lines_with(victim_new, &["handoff done"]);
    let rejoin_mib: f64 = rejoin.iter().filter_map(|l| handoff_mib(l)).sum();
    // A VCC moves its entries by comparison: they are in `sync moved`, not in a stream.
    let compared = victim_new.contains("under its fence");
    match (rejoin.is_empty(), compared) {
        (true, _) => println!("rejoin handoff: none (the ring still routed its id to it)"),
        (false, true) => {
            println!("rejoin by comparison (VCC): its entries are counted in `sync moved` below, nothing streamed:");
            for l in lines_with(victim_new, &["handoff done", "compared with"]) {
                println!("   {l}");
            }
        }
        (false, false) => {
            println!("rejoin handoff (VCN from its predecessor, the whole arc it owns again): {rejoin_mib:.1} MiB on the wire, apart from anti-entropy:");
            for l in &rejoin {
                println!("   {l}");
            }
        }
    }
    println!("anti-entropy since the restart (INF `sync moved`; in = taken + digests and key lists, out = given):");
    let mut moved_total = 0;
    let mut inf_times = Vec::new();
    for n in &nodes {
        let (now, took) = moved_at(n.addr).await?;
        inf_times.push(format!("{:.2} s", took.as_secs_f64()));
        let d = match before.get(&n.addr) {
            Some(b) => now.minus(b),
            None => now,
        };
        moved_total += d.in_bytes + d.out_bytes;
        println!(
            "   {}{}: in {} entries {} ({} B), out {} entries {} ({} B)",
            n.addr,
            if n.addr == victim { " (returned)" } else { "" },
            d.in_entries,
            bytes_text(d.in_bytes),
            d.in_bytes,
            d.out_entries,
            bytes_text(d.out_bytes),
            d.out_bytes
        );
    }
    println!(
        "changed: {changed} entries, {} of new values ({overwritten} overwrites) + {} removals; total {}",
        bytes_text(changed_bytes),
        changed - overwritten,
        bytes_text(total)
    );
    let per = |b: f64| {
        if changed_bytes > 0 {
            format!("{:.2}x the changed bytes", b / changed_bytes as f64)
        } else {
            "-".into()
        }
    };
    println!(
        "moved by anti-entropy (all nodes, in + out, each byte counted at both ends where both count it): {} = {}, {:.2}% of the total",
        bytes_text(moved_total),
        per(moved_total as f64),
        100.0 * moved_total as f64 / total as f64
    );
    if !rejoin.is_empty() && !compared {
        let b = rejoin_mib * MIB;
        println!(
            "moved by the rejoin handoff: {rejoin_mib:.1} MiB = {}, {:.1}% of the total",
            per(b),
            100.0 * b / total as f64
        );
    }
    let budget = s.cache_mb as f64 + 64.0;
    let base = c.rss_serving_kib;
    let sync_peak = c.peaks[1].max(c.peaks[2]);
    let growth = sync_peak.saturating_sub(base);
    println!(
        "memory of {victim} (VmRSS sampled every 20 ms; spans as the 250 ms polls saw them): {:.1} MiB when it first served; peak {:.1} MiB until then, {:.1} MiB during the rejoin handoff, {:.1} MiB from there to in sync, {:.1} MiB during the bench's digest check; VmHWM {:.1} MiB",
        mib(base),
        mib(c.peaks[0]),
        mib(c.peaks[1]),
        mib(c.peaks[2]),
        mib(c.peaks[3]),
        mib(hwm)
    );
    println!(
        "peak RSS growth of {victim} from serving to in sync: {:.1} MiB, {} the handoff budget (sled cache {} MiB + 64 MiB = {budget:.0} MiB)",
        mib(growth),
        if mib(growth) <= budget { "within" } else { "OVER" },
        s.cache_mb
    );
    if c.rejoined.is_some() {
        println!(
            "after the rejoin handoff alone (VmRSS {:.1} MiB when it was seen, peak {:.1} MiB until in sync): growth {:.1} MiB",
            mib(c.rss_rejoined_kib),
            mib(c.peaks[2]),
            mib(c.peaks[2].saturating_sub(c.rss_rejoined_kib))
        );
    }
    for n in &nodes {
        if let (Some(Some(base)), Some(Some(peak))) =
            (hwm_base.get(&n.addr), others_peak.get(&n.addr))
        {
            println!(
                "memory of {} from the restart to in sync: VmRSS {:.1} MiB before, peak {:.1} MiB (growth {:.1} MiB)",
                n.addr,
                mib(*base),
                mib(*peak),
                mib(peak.saturating_sub(*base))
            );
        }
    }
    println!(
        "(INF, read once per node for these figures after the digest check, took {}: it counts the keys held for up to a second, so the bench does not poll it)",
        inf_times.join(", ")
    );
    println!("log lines of the catch-up:");
    for n in &nodes {
        let log = n.log_text();
        for l in lines_with(
            &log[log_start[&n.addr]..],
            &[
                "synced in",
                "not synced",
                "arc in sync",
                "handoff done",
                "compared with",
                "joined again",
                "replicas of our arc now",
                "kept the entries handed over",
            ],
        ) {
            println!("   {}: {l}", n.addr);
        }
    }
    if let Some(dir) = &s.keep_logs {
        let _ = std::fs::create_dir_all(dir);
        for (i, n) in nodes.iter().enumerate() {
            let _ = std::fs::copy(&n.log, Path::new(dir).join(format!("n{i}.log")));
        }
    }
    for n in &mut nodes {
        if n.running() {
            n.stop(libc::SIGTERM);
        }
    }
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> ExitCode {
    let s = Settings::from_env();
    print_machine();
    println!(
        "settings: BENCH_SYNC_BYTES={} BENCH_SYNC_VALUE={} BENCH_SYNC_CHANGE={} nodes={} replicas={} victim={} stop={} conns={} cache={} MiB",
        s.bytes,
        s.value,
        s.change,
        s.nodes,
        s.replicas,
        s.victim,
        if s.kill { "kill" } else { "term" },
        s.conns,
        s.cache_mb
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    install_signal_handler(&rt);
    let root = temp_dir("dht-store-sync-bench-");
    match rt.block_on(run(&s, root.path())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
