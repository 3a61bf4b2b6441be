//! Restart benchmark: `cargo bench --bench restart`.
//!
//! How long a node holding 1,000,000 entries takes to serve again after a crash (SIGKILL),
//! compared with how long sled alone takes to reopen the same directory after the same kind of
//! crash. Both are measured from the exec of a process, so both include process start.
//!
//! 1. A data directory is filled through the library: 1,000,000 entries (keys: SHA-1 of a
//!    counter, sorted; values: 100 bytes derived from the key), `Storage::insert_batch` in
//!    1000-entry batches, one `sync` at the end, then the ring state `RingState::alone(addr)` so
//!    that the node resumes as a ring of one. The storage is closed (dropped) afterwards. The
//!    import runs in a child process (`RESTART_HELPER=import`) so that the bench stays small:
//!    every process is spawned with fork (for PR_SET_PDEATHSIG), whose cost grows with the
//!    parent's memory.
//! 2. First open after the import: the directory is copied (`cp -a`, then fsynced); the node is
//!    started on the original, the sled helper (below) on the copy. sled 0.34 writes its
//!    snapshot only when it opens a database, so neither has one yet and both replay the whole
//!    log. The node then answers a few GETs and is SIGKILLed.
//! 3. `RESTART_RUNS` rounds (default 9), each: (a) the node: time from `spawn` of
//!    `dht-store --data DIR --port P --host 127.0.0.1` to the first `Found` with the right value
//!    for a known key (connect + GET polled every ~1 ms; the node binds its port before it
//!    serves, so a GET sent early simply waits), then SIGKILL; (b) the sled helper: this bench
//!    binary re-executed with `RESTART_HELPER=sled`, which opens `sled::Config::new()
//!    .path(DIR/db).cache_capacity(64 MiB).mode(HighThroughput)` (as `Storage::open` does),
//!    opens the trees "entries" and "ring", GETs the same key and prints its timings; the time is
//!    from `spawn` to that line; then SIGKILL; (c) the same with `RESTART_HELPER=storage`:
//!    `Storage::open` (lock file, sled, trees, flusher thread) + `load_ring` + get. Odd rounds
//!    run (b) and (c) before (a). Every open thus follows a SIGKILL of the previous process.
//! 4. Breakdown of the node's start from its own log (timestamps of "opened data directory",
//!    "resuming ring state", "serving") against the wall-clock time of the spawn.
//!
//! Also timed: `dht-store --version` (spawn to exit) and a helper that prints at once (spawn to
//! line): the bare process-start costs of the two binaries.
//!
//! The OS page cache is warm (the files were just written) unless `RESTART_COLD=1`, which drops
//! the directory's pages (`posix_fadvise(DONTNEED)`, this directory's files only) before every
//! open.
//!
//! Environment: `RESTART_ENTRIES` (default 1000000), `RESTART_RUNS` (default 9),
//! `RESTART_COLD=1`, `RESTART_DIR` (parent of the temporary data directory; default
//! `CARGO_TARGET_TMPDIR`), `RESTART_KEEP=1` (keep the data directory and logs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dht_store::client::{Client, Lookup};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::RingState;
use dht_store::storage::{BatchWrite, Storage, StorageOptions, Version, Versioned};

use common::dht_store_command;
use common::process::{die_with_parent, Reaped};
use common::sample::proc_cpu;

const VALUE_BYTES: usize = 100;
const BATCH: usize = 1000;
const CACHE: u64 = 64 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The i-th key: SHA-1 of the counter.
fn key_of(i: u64) -> HashKey {
    HashKey::of(&i.to_be_bytes())
}

/// The value stored under `key`: its 20 bytes repeated, cut to 100 bytes.
fn value_of(key: &HashKey) -> Vec<u8> {
    key.0.iter().copied().cycle().take(VALUE_BYTES).collect()
}

fn hex(key: &HashKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> HashKey {
    let mut k = [0u8; 20];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex key");
    }
    HashKey(k)
}

fn now_unix_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros()
}

/// CPU time (user + system, all threads) of a live process so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    proc_cpu(pid).map(Duration::from_secs_f64)
}

/// SIGKILLs every child of `reaper` now (the crash this bench restarts from), and reaps them.
fn kill_all(reaper: &mut Vec<Reaped>) {
    for mut r in reaper.drain(..) {
        r.kill();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// Helper modes (this binary re-executed)

/// `RESTART_HELPER=sled|storage|exec`: open the directory, GET the key, print one line of
/// timings (microseconds since main started, and main's start relative to the parent's spawn),
/// then wait to be killed.
fn helper(mode: &str) -> ExitCode {
    let t0 = Instant::now();
    let main_us = now_unix_us();
    let spawn_us: u128 = std::env::var("RESTART_SPAWN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(main_us);
    let exec_to_main = main_us.saturating_sub(spawn_us);
    if mode == "exec" {
        println!("ready exec_to_main_us={exec_to_main}");
        return wait_for_kill();
    }
    let dir = PathBuf::from(std::env::var("RESTART_HELPER_DIR").expect("RESTART_HELPER_DIR"));
    if mode == "import" {
        let n = env_usize("RESTART_ENTRIES", 1_000_000);
        let addr: PeerAddr = std::env::var("RESTART_IMPORT_ADDR")
            .expect("RESTART_IMPORT_ADDR")
            .parse()
            .expect("address");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keys = rt.block_on(preload(&dir, n, addr));
        println!("key {}", hex(&keys[keys.len() / 2 + 7.min(keys.len() / 2)]));
        for k in keys.iter().step_by((keys.len() / 5).max(1)) {
            println!("sample {}", hex(k));
        }
        return ExitCode::SUCCESS;
    }
    let key = unhex(&std::env::var("RESTART_HELPER_KEY").expect("RESTART_HELPER_KEY"));
    let (open, trees, get, ok);
    match mode {
        "sled" => {
            let db = sled::Config::new()
                .path(dir.join("db"))
                .cache_capacity(CACHE)
                .mode(sled::Mode::HighThroughput)
                .open()
                .expect("sled open");
            open = t0.elapsed();
            // The entries' tree of data layout 3 (`storage`'s module doc).
            let data = db.open_tree("entries").expect("tree entries");
            let _ring = db.open_tree("ring").expect("tree ring");
            trees = t0.elapsed();
            let v = data.get(key.as_bytes()).expect("get");
            get = t0.elapsed();
            // A whole entry: kind (u8), version (u64), then the value.
            ok = v.as_deref().and_then(|v| v.get(9..)) == Some(&value_of(&key)[..]);
            println!(
                "ready exec_to_main_us={exec_to_main} open_us={} trees_us={} get_us={} ok={ok}",
                open.as_micros(),
                trees.as_micros(),
                get.as_micros()
            );
            std::mem::forget(db); // never closed: the parent SIGKILLs us
        }
        "storage" => {
            let s = Storage::open(
                &dir,
                &StorageOptions {
                    cache_capacity: CACHE,
                },
            )
            .expect("Storage::open");
            open = t0.elapsed();
            let _ring = s.load_ring().expect("load_ring");
            trees = t0.elapsed();
            let v = s.get(&key).expect("get");
            get = t0.elapsed();
            ok = v.as_deref() == Some(&value_of(&key)[..]);
            println!(
                "ready exec_to_main_us={exec_to_main} open_us={} trees_us={} get_us={} ok={ok}",
                open.as_micros(),
                trees.as_micros(),
                get.as_micros()
            );
            std::mem::forget(s);
        }
        other => panic!("unknown RESTART_HELPER {other}"),
    }
    wait_for_kill()
}

fn wait_for_kill() -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Timings one helper printed.
#[derive(Clone, Copy, Debug, Default)]
struct HelperRun {
    /// Spawn to the helper's line, as seen by the parent.
    total: Duration,
    exec_to_main: Duration,
    open: Duration,
    trees: Duration,
    get: Duration,
    /// CPU time of the helper when its line arrived.
    cpu: Option<Duration>,
}

fn run_helper(mode: &str, dir: &Path, key: &HashKey, reaper: &mut Vec<Reaped>) -> HelperRun {
    run_helper_with(mode, dir, key, reaper, true)
}

fn run_helper_with(
    mode: &str,
    dir: &Path,
    key: &HashKey,
    reaper: &mut Vec<Reaped>,
    pdeathsig: bool,
) -> HelperRun {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env("RESTART_HELPER", mode)
        .env("RESTART_HELPER_DIR", dir)
        .env("RESTART_HELPER_KEY", hex(key))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if pdeathsig {
        die_with_parent(&mut cmd);
    }
    let spawn_us = now_unix_us();
    cmd.env("RESTART_SPAWN_US", spawn_us.to_string());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn helper");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    reaper.push(Reaped::new(format!("helper {mode}"), child));
    let mut line = String::new();
    out.read_line(&mut line).expect("helper line");
    let total = t0.elapsed();
    let cpu = reaper.last().and_then(|r| cpu_time(r.pid()));
    kill_all(reaper);
    assert!(line.starts_with("ready"), "helper {mode} said {line:?}");
    assert!(!line.contains("ok=false"), "helper {mode}: wrong value");
    let field = |name: &str| -> Duration {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .unwrap_or_default()
    };
    HelperRun {
        total,
        exec_to_main: field("exec_to_main_us"),
        open: field("open_us"),
        trees: field("trees_us"),
        get: field("get_us"),
        cpu,
    }
}

// ---------------------------------------------------------------------------------------------
// The node

/// One timed start of the node.
#[derive(Clone, Copy, Debug, Default)]
struct NodeRun {
    /// Spawn to the first correct GET answer.
    total: Duration,
    /// Spawn to the log line "opened data directory" (process start + Storage::open).
    opened: Option<Duration>,
    /// Spawn to "resuming ring state".
    resuming: Option<Duration>,
    /// Spawn to "serving".
    serving: Option<Duration>,
    /// Connection attempts refused before the port was bound.
    refused: u32,
    /// CPU time of the node when the GET was answered.
    cpu: Option<Duration>,
}

fn node_command(dir: &Path, addr: PeerAddr, log: &Path) -> Command {
    let mut cmd = dht_store_command();
    cmd.arg("--data")
        .arg(dir)
        .arg("--port")
        .arg(addr.port().to_string())
        .arg("--host")
        .arg(addr.ip().to_string());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("node log");
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(f);
    cmd
}

/// Seconds since midnight UTC of a tracing timestamp at the start of `line`
/// (`2025-01-01T12:34:56.123456Z ...`).
fn log_time_of_day(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Time of the first line of `text` containing `needle`, relative to
/// the wall-clock `spawn_us`.
fn log_offset(text: &str, needle: &str, spawn_us: u128) -> Option<Duration> {
    let line = text.lines().find(|l| l.contains(needle))?;
    let t = log_time_of_day(line)?;
    let spawn = (spawn_us % 86_400_000_000) as f64 / 1e6;
    let mut d = t - spawn;
    if d < -43_200.0 {
        d += 86_400.0; // midnight passed
    }
    Some(Duration::from_secs_f64(d.max(0.0)))
}

/// Starts the node and polls connect + GET until it answers `Found(value)`; the child is left
/// in `reaper`.
async fn start_node_timed(
    dir: &Path,
    addr: PeerAddr,
    key: &HashKey,
    log: &Path,
    reaper: &mut Vec<Reaped>,
) -> NodeRun {
    let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let expect = value_of(key);
    let mut cmd = node_command(dir, addr, log);
    let spawn_us = now_unix_us();
    let t0 = Instant::now();
    reaper.push(Reaped::new(
        "dht-store",
        cmd.spawn().expect("spawn dht-store"),
    ));
    let mut refused = 0;
    let total = loop {
        if let Some(status) = reaper.last_mut().and_then(|r| r.exited()) {
            panic!(
                "node exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        match Client::connect(addr, AddressEncoding::Compact).await {
            Ok(mut c) => match c.get(key).await {
                Ok(Lookup::Found(v)) if v == expect => break t0.elapsed(),
                Ok(other) => panic!("GET {key} answered {other:?}"),
                Err(_) => {}
            },
            Err(_) => refused += 1,
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "node never served");
        std::thread::sleep(Duration::from_millis(1));
    };
    let cpu = reaper.last().and_then(|r| cpu_time(r.pid()));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = text.get(log_start..).unwrap_or(&text);
    NodeRun {
        total,
        cpu,
        opened: log_offset(text, "opened data directory", spawn_us),
        resuming: log_offset(text, "resuming ring state", spawn_us),
        serving: log_offset(text, "serving ", spawn_us),
        refused,
    }
}

// ---------------------------------------------------------------------------------------------
// Setup

/// Fills `dir` with `n` entries and the ring state of a ring of one at `addr`; returns the
/// sorted keys.
async fn preload(dir: &Path, n: usize, addr: PeerAddr) -> Vec<HashKey> {
    let mut keys: Vec<HashKey> = (0..n as u64).map(key_of).collect();
    keys.sort_unstable();
    let t0 = Instant::now();
    let s = Storage::open(
        dir,
        &StorageOptions {
            cache_capacity: CACHE,
        },
    )
    .expect("open for import");
    let mut last = None;
    let mut batch = Vec::with_capacity(BATCH);
    for chunk in keys.chunks(BATCH) {
        batch.extend(
            chunk
                .iter()
                .map(|k| (*k, Versioned::value(Version::ZERO, value_of(k)))),
        );
        last = Some(
            s.insert_batch(&mut batch, BatchWrite::InPlace)
                .expect("insert_batch"),
        );
    }
    if let Some(t) = last {
        s.sync(t).await.expect("sync");
    }
    let t = s.save_ring(&RingState::alone(addr)).expect("save_ring");
    s.sync(t).await.expect("sync ring");
    drop(s);
    println!(
        "import: {n} entries x {VALUE_BYTES} B in {:.1} s; db {:.0} MiB",
        t0.elapsed().as_secs_f64(),
        dir_bytes(&dir.join("db")) as f64 / (1 << 20) as f64
    );
    keys
}

/// Runs [`preload`] in a child (this binary, `RESTART_HELPER=import`); returns the key the
/// restarts GET and a few more to check.
fn import(dir: &Path, n: usize, addr: PeerAddr) -> (HashKey, Vec<HashKey>) {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .env("RESTART_HELPER", "import")
        .env("RESTART_HELPER_DIR", dir)
        .env("RESTART_ENTRIES", n.to_string())
        .env("RESTART_IMPORT_ADDR", addr.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the import");
    assert!(out.status.success(), "import failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut key = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(k) = line.strip_prefix("key ") {
            key = Some(unhex(k));
        } else if let Some(k) = line.strip_prefix("sample ") {
            samples.push(unhex(k));
        } else {
            println!("{line}");
        }
    }
    (key.expect("import printed no key"), samples)
}

/// fsyncs every file under `dir`, so that no dirty page is left for a timed open to flush.
fn fsync_tree(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            fsync_tree(&p);
        } else if let Ok(f) = std::fs::File::open(&p) {
            let _ = f.sync_all();
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Drops the page cache of every file under `dir` (this directory only).
fn drop_cache(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            drop_cache(&p);
        } else if let Ok(f) = std::fs::File::open(&p) {
            use std::os::fd::AsRawFd;
            let _ = f.sync_all();
            // SAFETY: a valid fd; advice only.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn sled_files(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("db"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("{} ({} KiB)", e.file_name().to_string_lossy(), len >> 10)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[s.len() / 2]
}

fn min(v: &[Duration]) -> Duration {
    v.iter().copied().min().unwrap_or_default()
}

fn row(label: &str, v: &[Duration]) {
    println!(
        "| {label:<58} | {:>9.1} | {:>9.1} | {:>9.1} |",
        ms(median(v)),
        ms(min(v)),
        ms(v.iter().copied().max().unwrap_or_default())
    );
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var("RESTART_HELPER") {
        return helper(&mode);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench())
}

async fn bench() -> ExitCode {
    let started = Instant::now();
    let entries = env_usize("RESTART_ENTRIES", 1_000_000);
    let runs = env_usize("RESTART_RUNS", 9).max(1);
    let cold = std::env::var("RESTART_COLD").is_ok_and(|v| v == "1");
    let keep = std::env::var("RESTART_KEEP").is_ok_and(|v| v == "1");
    let base = std::env::var("RESTART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::Builder::new()
        .prefix("restart-")
        .tempdir_in(&base)
        .expect("temp dir");
    let root = if keep {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let dir = root.join("node");
    let copy = root.join("first-open-copy");
    let log = root.join("node.log");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, common::free_port());
    println!(
        "restart bench: {entries} entries, {runs} runs, page cache {}, dir {}",
        if cold {
            "dropped before each open"
        } else {
            "warm"
        },
        root.display()
    );
    // The import runs in a child process: the node and the helpers are spawned with fork
    // (pre_exec), whose cost grows with the parent's memory, so the parent stays small.
    let (key, keys) = import(&dir, entries, addr);
    println!("sled files after the import: {}", sled_files(&dir));
    let mut reaper = Vec::new();

    // Bare process starts.
    let mut version = Vec::new();
    let mut exec_helper = Vec::new();
    let mut exec_plain = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_dht-store"))
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .expect("dht-store --version");
        version.push(t0.elapsed());
        assert!(st.success());
        exec_helper.push(run_helper("exec", &dir, &key, &mut reaper).total);
        exec_plain.push(run_helper_with("exec", &dir, &key, &mut reaper, false).total);
    }

    // First open after the import: no sled snapshot yet, the whole log is replayed.
    let st = Command::new("cp")
        .arg("-a")
        .arg(&dir)
        .arg(&copy)
        .status()
        .expect("cp -a");
    assert!(st.success(), "cp -a failed");
    fsync_tree(&copy);
    if cold {
        drop_cache(&dir);
    }
    let first_node = start_node_timed(&dir, addr, &key, &log, &mut reaper).await;
    for k in &keys {
        let mut c = Client::connect(addr, AddressEncoding::Compact)
            .await
            .expect("connect");
        assert_eq!(c.get(k).await.expect("GET"), Lookup::Found(value_of(k)));
    }
    kill_all(&mut reaper);
    if cold {
        drop_cache(&copy);
    }
    let first_sled = run_helper("sled", &copy, &key, &mut reaper);
    let _ = std::fs::remove_dir_all(&copy);
    println!("sled files after the first open: {}", sled_files(&dir));

    // Restarts after SIGKILL.
    let mut nodes = Vec::new();
    let mut sleds = Vec::new();
    let mut storages = Vec::new();
    for i in 0..runs {
        // Odd rounds run the helpers first, so that neither side always follows the other.
        let node_first = i % 2 == 0;
        let mut n = None;
        if node_first {
            if cold {
                drop_cache(&dir);
            }
            n = Some(start_node_timed(&dir, addr, &key, &log, &mut reaper).await);
            kill_all(&mut reaper);
        }
        if cold {
            drop_cache(&dir);
        }
        let s = run_helper("sled", &dir, &key, &mut reaper);
        if cold {
            drop_cache(&dir);
        }
        let st = run_helper("storage", &dir, &key, &mut reaper);
        if !node_first {
            if cold {
                drop_cache(&dir);
            }
            n = Some(start_node_timed(&dir, addr, &key, &log, &mut reaper).await);
            kill_all(&mut reaper);
        }
        let n = n.expect("node run");
        println!(
            "run {i}: node {:.1} ms (opened {:.1}, resuming {:.1}, serving {:.1}; {} refused \
             connects) | sled {:.1} ms (main {:.1}, open {:.1}, trees {:.1}, get {:.1}) | \
             Storage {:.1} ms (main {:.1}, open {:.1}, ring {:.1}, get {:.1})",
            ms(n.total),
            n.opened.map(ms).unwrap_or(f64::NAN),
            n.resuming.map(ms).unwrap_or(f64::NAN),
            n.serving.map(ms).unwrap_or(f64::NAN),
            n.refused,
            ms(s.total),
            ms(s.exec_to_main),
            ms(s.open),
            ms(s.trees),
            ms(s.get),
            ms(st.total),
            ms(st.exec_to_main),
            ms(st.open),
            ms(st.trees),
            ms(st.get),
        );
        nodes.push(n);
        sleds.push(s);
        storages.push(st);
    }
    println!("sled files at the end: {}", sled_files(&dir));

    let col = |f: &dyn Fn(&NodeRun) -> Option<Duration>| -> Vec<Duration> {
        nodes.iter().filter_map(f).collect()
    };
    let node_total = col(&|n| Some(n.total));
    let sled_total: Vec<Duration> = sleds.iter().map(|s| s.total).collect();
    println!();
    println!(
        "| {:<58} | {:>9} | {:>9} | {:>9} |",
        "time from spawn (ms)", "median", "min", "max"
    );
    println!("|{:-<60}|{:->11}|{:->11}|{:->11}|", "", "", "", "");
    row("dht-store --version (spawn to exit)", &version);
    row(
        "bench helper that prints at once (spawn to line)",
        &exec_helper,
    );
    row(
        "  same, spawned without pre_exec (posix_spawn)",
        &exec_plain,
    );
    row(
        "FIRST open after import, node: to first correct GET",
        &[first_node.total],
    );
    row(
        "FIRST open after import, sled helper: open+trees+get",
        &[first_sled.total],
    );
    row("node: to first correct GET  (a)", &node_total);
    row(
        "  node: to log 'opened data directory'",
        &col(&|n| n.opened),
    );
    row(
        "  node: to log 'resuming ring state'",
        &col(&|n| n.resuming),
    );
    row("  node: to log 'serving'", &col(&|n| n.serving));
    row("  node: CPU time (user+sys) at the GET", &col(&|n| n.cpu));
    row("sled helper: open + trees + get  (b)", &sled_total);
    row(
        "  sled helper: exec to main",
        &sleds.iter().map(|s| s.exec_to_main).collect::<Vec<_>>(),
    );
    row(
        "  sled helper: sled open (in process)",
        &sleds.iter().map(|s| s.open).collect::<Vec<_>>(),
    );
    row(
        "  sled helper: open + trees + get (in process)",
        &sleds.iter().map(|s| s.get).collect::<Vec<_>>(),
    );
    row(
        "Storage helper: Storage::open + load_ring + get",
        &storages.iter().map(|s| s.total).collect::<Vec<_>>(),
    );
    row(
        "  Storage helper: Storage::open (in process)",
        &storages.iter().map(|s| s.open).collect::<Vec<_>>(),
    );
    row(
        "  sled helper: CPU time (user+sys) at its line",
        &sleds.iter().filter_map(|s| s.cpu).collect::<Vec<_>>(),
    );
    row(
        "  Storage helper: CPU time (user+sys) at its line",
        &storages.iter().filter_map(|s| s.cpu).collect::<Vec<_>>(),
    );
    println!();
    let ratio_med = ms(median(&node_total)) / ms(median(&sled_total));
    let ratio_min = ms(min(&node_total)) / ms(min(&sled_total));
    println!(
        "restart / sled reopen: {ratio_med:.2}x (medians), {ratio_min:.2}x (minimums); target <= 1.5x: {}",
        if ratio_med <= 1.5 { "met" } else { "NOT met" }
    );
    let sled_cpu: Vec<Duration> = sleds.iter().filter_map(|s| s.cpu).collect();
    println!(
        "CPU time (user+sys, 10 ms ticks) at the answer: node {:.0} ms vs sled helper {:.0} ms \
         (medians): wall-clock differences beyond that are waiting (fsync, scheduling)",
        ms(median(&col(&|n| n.cpu))),
        ms(median(&sled_cpu))
    );
    let after_open: Vec<Duration> = nodes
        .iter()
        .filter_map(|n| Some(n.serving?.saturating_sub(n.opened?)))
        .collect();
    let after_serving: Vec<Duration> = nodes
        .iter()
        .filter_map(|n| Some(n.total.saturating_sub(n.serving?)))
        .collect();
    println!(
        "node's own part after Storage::open: 'opened' -> 'serving' median {:.1} ms (max {:.1}; \
         bind, recover, the resume's ring-state write + fsync), 'serving' -> GET answered \
         median {:.1} ms",
        ms(median(&after_open)),
        ms(after_open.iter().copied().max().unwrap_or_default()),
        ms(median(&after_serving))
    );
    println!(
        "first open after import: node {:.1} ms vs sled {:.1} ms ({:.2}x)",
        ms(first_node.total),
        ms(first_sled.total),
        ms(first_node.total) / ms(first_sled.total)
    );
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    drop(reaper);
    if keep {
        println!("kept {}", root.display());
    }
    ExitCode::SUCCESS
}
