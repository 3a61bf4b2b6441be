//! Request benchmark (issue 2): `cargo bench --bench requests`.
//!
//! Starts a real `dht-store` node (the binary cargo built for this bench, so a release-like
//! build) on a free loopback port with a temporary data directory, then, for each number of
//! persistent connections N, runs N tokio tasks that each hold one [`Client`] and
//!
//! 1. INS 100-byte values under distinct keys for `BENCH_SECS` seconds (default 3), then
//! 2. GET the keys they inserted (round robin) for as long, then
//! 3. EXI the same keys (each must answer `T`) for as long, then
//! 4. REM the keys they inserted, each once, in the order inserted (each must answer `T`), for
//!    as long or until a task has removed all of its keys (the phase's time is then shorter),
//!
//! timing every request. It prints ops/s and latency percentiles per (operation, N).
//!
//! Every INS and REM must answer `T` (stored durably), every EXI `T`, and every GET must return
//! exactly the value that was inserted: failures are counted, printed, and make the bench exit
//! non-zero.
//!
//! **A/B against another build.** With `BENCH_BASELINE_BIN=/path/to/dht-store` (for example
//! the release binary of the commit before a change, copied aside), a second node is started
//! from that binary (its own fresh data directory, the same flags and environment), and for each
//! N the four phases run `BENCH_AB_ROUNDS` times (default 2) against this build (A) and the
//! baseline (B), each phase on both nodes one after the other (A B in odd rounds, B A in even
//! ones: INS A, INS B, GET A, GET B, ..., then INS B, INS A, ...), so that drift on a shared
//! machine hits both and neither always goes first. Keys differ per round. Both nodes stay up
//! for the whole run (the idle one only does its maintenance and background flushing). It then
//! prints, per (operation, N), the ops/s of both (all rounds pooled: requests over time, and each
//! round's) and the ratio this/baseline, and per operation the median of those ratios over N,
//! and the median and range of the ratios of single rounds (each A phase against the B phase
//! next to it in time: the spread of those is the noise of the machine).
//! The baseline is driven only with flags (`--data --port --host`) and requests (INS, GET,
//! EXI, REM, PUL) that the build at `4545ce8` has. A/B runs of this build against itself give
//! the noise floor of the machine (BENCHMARKS.md).
//!
//! **Replicas (issue 17).** With `BENCH_REPLICAS=K` the bench starts two rings of
//! `BENCH_RING` nodes (default 3) of this build, on loopback addresses 127.0.0.2, .3, ...
//! (distinct ports per ring): A with `--replicas K`, B with `--replicas 0`, and runs them A/B
//! as above. Task `t` holds one connection to node `t mod BENCH_RING` and uses only keys that
//! node owns (computed from the nodes' ids, [`common::owner_of`]), so every request is served
//! by its owner without a redirect, the same requests for both rings. Before the phases, each
//! ring must be whole and, in A, every node must name its replicas in INF
//! ([`common::wait_replicas`]). `BENCH_REPLICAS` and `BENCH_BASELINE_BIN` are one comparison
//! each: not both at once.
//!
//! Every phase line also gives the CPU time the measured node (or ring: all its nodes) used
//! per request (`node cpu/op`, from /proc), which tells a slower build that works more per
//! request from one that waits more.
//!
//! If `redis-server` and `redis-benchmark` are on PATH, the same load is run against Redis with
//! `--appendonly yes --appendfsync always` as a baseline, and our/Redis ratios are printed.
//!
//! Environment:
//! - `BENCH_SECS`    seconds per (operation, N) phase (default 3)
//! - `BENCH_CONNS`   comma-separated connection counts (default `1,8,32,128`)
//! - `BENCH_VALUE`   value size in bytes (default 100; BENCHMARKS.md also runs 4096)
//! - `BENCH_THREADS` worker threads of the bench's tokio runtime (default: number of cores)
//! - `BENCH_REDIS=0` skip the Redis baseline even if Redis is installed
//! - `BENCH_BASELINE_BIN` a `dht-store` binary to compare with, A/B (above)
//! - `BENCH_AB_ROUNDS` A/B rounds per N (default 2)
//! - `BENCH_REPLICAS` replicas K of ring A, against 0 in ring B (above)
//! - `BENCH_RING`    nodes per ring with `BENCH_REPLICAS` (default 3)
//!
//! The node inherits the environment, so `RUST_LOG` and `DHT_STORE_*` variables (e.g.
//! `DHT_STORE_CACHE_MB`) apply to it (to both nodes in an A/B run, to every node of a ring;
//! `--replicas` overrides `DHT_STORE_REPLICAS`); its log goes to a file that is printed on
//! failure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_store::client::{Client, Lookup};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr, Status};
use tokio::sync::Barrier;

use common::process::dht_store_command_for;
use common::process::Reaped;
use common::sample::{print_machine, proc_cpu};
use common::{loopback_addrs, owner_of, wait_replicas, wait_serving};

/// Settings read from the environment.
#[derive(Clone, Debug)]
struct Settings {
    secs: f64,
    conns: Vec<usize>,
    value_size: usize,
    threads: usize,
    redis: bool,
    /// `BENCH_BASELINE_BIN`: a build to compare with, A/B.
    baseline: Option<PathBuf>,
    /// Rounds of A then B per connection count (1 without a baseline).
    rounds: usize,
    /// `BENCH_REPLICAS`: A/B of a ring with these replicas against one with none.
    replicas: Option<usize>,
    /// `BENCH_RING`: nodes of each ring in a `BENCH_REPLICAS` run.
    ring: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let secs = var("BENCH_SECS")
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .expect("BENCH_SECS: a number of seconds")
            })
            .unwrap_or(3.0);
        let conns = var("BENCH_CONNS")
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().parse::<usize>().expect("BENCH_CONNS: e.g. 1,8,32"))
                    .filter(|&n| n > 0)
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 8, 32, 128]);
        let value_size = var("BENCH_VALUE")
            .map(|v| v.trim().parse().expect("BENCH_VALUE: bytes"))
            .unwrap_or(100);
        let threads = var("BENCH_THREADS")
            .map(|v| v.trim().parse().expect("BENCH_THREADS: a count"))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let redis = var("BENCH_REDIS").is_none_or(|v| v != "0");
        let baseline = var("BENCH_BASELINE_BIN").map(|v| PathBuf::from(v.trim()));
        let replicas = var("BENCH_REPLICAS").map(|v| {
            v.trim()
                .parse::<usize>()
                .expect("BENCH_REPLICAS: a count of replicas")
        });
        let ring = var("BENCH_RING")
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .expect("BENCH_RING: a count of nodes")
            })
            .unwrap_or(3)
            .max(1);
        let rounds = match (&baseline, replicas) {
            (None, None) => 1,
            _ => var("BENCH_AB_ROUNDS")
                .map(|v| v.trim().parse().expect("BENCH_AB_ROUNDS: a count"))
                .unwrap_or(2usize)
                .max(1),
        };
        Settings {
            secs,
            conns,
            value_size,
            threads: threads.max(1),
            redis,
            baseline,
            rounds,
            replicas,
            ring,
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.secs.max(0.1))
    }
}

/// The operation a phase measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ins,
    Get,
    Exi,
    Rem,
}

impl Op {
    /// The phases of one round, in order.
    const ALL: [Op; 4] = [Op::Ins, Op::Get, Op::Exi, Op::Rem];

    fn name(self) -> &'static str {
        match self {
            Op::Ins => "INS",
            Op::Get => "GET",
            Op::Exi => "EXI",
            Op::Rem => "REM",
        }
    }
}

/// The outcome of one phase: one operation at one connection count.
#[derive(Clone, Debug)]
struct PhaseResult {
    /// Index of the node measured: 0 this build, 1 the baseline.
    side: usize,
    op: Op,
    conns: usize,
    /// Requests that succeeded (timed).
    ok: u64,
    /// Requests that did not (INS, EXI or REM not `T`, GET not the inserted value, or an
    /// error).
    failures: u64,
    /// Wall time of the phase, from the common start to the last task's end.
    elapsed: Duration,
    /// Latency percentiles of the successful requests.
    lat: Latency,
    /// CPU seconds the measured node (all nodes of a ring) used during the phase, if /proc
    /// told.
    node_cpu: Option<f64>,
}

impl PhaseResult {
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// CPU seconds used so far by all of `pids`, if /proc tells for each.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| proc_cpu(p)).sum()
}

#[derive(Clone, Copy, Debug, Default)]
struct Latency {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

impl Latency {
    /// Percentiles (nearest rank) of latencies in nanoseconds; sorts them.
    fn of(nanos: &mut [u64]) -> Latency {
        if nanos.is_empty() {
            return Latency::default();
        }
        nanos.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * nanos.len() as f64).ceil() as usize).clamp(1, nanos.len()) - 1;
            Duration::from_nanos(nanos[i])
        };
        Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max: Duration::from_nanos(nanos[nanos.len() - 1]),
        }
    }
}

/// What one task did in one phase.
#[derive(Default)]
struct TaskOutcome {
    /// Latency of every successful request, nanoseconds.
    nanos: Vec<u64>,
    failures: u64,
    /// First few failure descriptions, for the report.
    errors: Vec<String>,
    /// INS phase: indices of the keys answered `T`, for the GET phase to read back.
    inserted: Vec<u64>,
}

impl TaskOutcome {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.errors.len() < 3 {
            self.errors.push(what);
        }
    }
}

/// The key of request `i` of task `task` in round `round` of the run with `conns`
/// connections: distinct across tasks, phases, rounds and runs (round 0 keeps the keys of the
/// bench before rounds existed).
fn key_for(conns: usize, round: usize, task: usize, i: u64) -> HashKey {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(b"bnch");
    b[4..8].copy_from_slice(&((conns as u32 & 0x00ff_ffff) | ((round as u32) << 24)).to_be_bytes());
    b[8..16].copy_from_slice(&(task as u64).to_be_bytes());
    b[16..24].copy_from_slice(&i.to_be_bytes());
    HashKey::of(&b)
}

/// The value stored under `key`: derived from it, so a GET can check it got the right one.
fn value_for(key: &HashKey, size: usize) -> Vec<u8> {
    (0..size)
        .map(|j| key.0[j % 20] ^ (j as u8).wrapping_mul(31))
        .collect()
}

/// What one task of a phase is to do.
struct TaskSpec {
    /// The node this task talks to.
    addr: PeerAddr,
    /// Every node of its ring (one for a single node): INS keys are those `addr` owns.
    ring: Arc<[PeerAddr]>,
    op: Op,
    conns: usize,
    round: usize,
    task: usize,
    value_size: usize,
    /// GET, EXI and REM phases: indices of the keys this task inserted.
    to_read: Vec<u64>,
    duration: Duration,
    /// Passed by every task and the phase once connected, so that all start together.
    start: Arc<Barrier>,
}

/// One connection's loop for one phase.
async fn run_task(spec: TaskSpec) -> TaskOutcome {
    let TaskSpec {
        addr,
        ring,
        op,
        conns,
        round,
        task,
        value_size,
        to_read,
        duration,
        start,
    } = spec;
    let mut out = TaskOutcome::default();
    let mut client = match Client::connect(addr, AddressEncoding::Compact).await {
        Ok(c) => Some(c),
        Err(e) => {
            out.fail(format!("connect: {e}"));
            None
        }
    };
    start.wait().await;
    let began = Instant::now();
    let mut i: u64 = 0;
    // INS: the index of the next key to insert (in a ring, the next one `addr` owns).
    let mut next_key: u64 = 0;
    while began.elapsed() < duration {
        let Some(c) = client.as_mut() else {
            // Lost the connection: try again (and count it) rather than measure nothing.
            match Client::connect(addr, AddressEncoding::Compact).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    out.fail(format!("reconnect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        match op {
            Op::Ins => {
                let mut key = key_for(conns, round, task, next_key);
                while ring.len() > 1 && owner_of(&ring, &key) != addr {
                    next_key += 1;
                    key = key_for(conns, round, task, next_key);
                }
                let idx = next_key;
                next_key += 1;
                let value = value_for(&key, value_size);
                let t0 = Instant::now();
                let res = c.ins(&key, &value).await;
                let dt = t0.elapsed();
                match res {
                    Ok(Status::T) => {
                        out.nanos.push(dt.as_nanos() as u64);
                        out.inserted.push(idx);
                    }
                    Ok(s) => out.fail(format!("INS {key} answered {s:?}, not T")),
                    Err(e) => {
                        out.fail(format!("INS {key}: {e}"));
                        client = None;
                    }
                }
            }
            Op::Rem => {
                // Each key once: the phase ends early for a task that removed all of its keys.
                if to_read.is_empty() {
                    out.fail("REM: this task inserted no key to remove".into());
                    break;
                }
                let Some(&idx) = to_read.get(i as usize) else {
                    break;
                };
                let key = key_for(conns, round, task, idx);
                let t0 = Instant::now();
                let res = c.rem(&key).await;
                let dt = t0.elapsed();
                match res {
                    Ok(Status::T) => out.nanos.push(dt.as_nanos() as u64),
                    Ok(s) => out.fail(format!("REM {key} answered {s:?}, not T")),
                    Err(e) => {
                        out.fail(format!("REM {key}: {e}"));
                        client = None;
                    }
                }
            }
            Op::Exi => {
                if to_read.is_empty() {
                    out.fail("EXI: this task inserted no key to ask for".into());
                    break;
                }
                let idx = to_read[(i % to_read.len() as u64) as usize];
                let key = key_for(conns, round, task, idx);
                let t0 = Instant::now();
                let res = c.exi(&key).await;
                let dt = t0.elapsed();
                match res {
                    Ok(Status::T) => out.nanos.push(dt.as_nanos() as u64),
                    Ok(s) => out.fail(format!("EXI {key} answered {s:?}, not T")),
                    Err(e) => {
                        out.fail(format!("EXI {key}: {e}"));
                        client = None;
                    }
                }
            }
            Op::Get => {
                if to_read.is_empty() {
                    out.fail("GET: this task inserted no key to read".into());
                    break;
                }
                let idx = to_read[(i % to_read.len() as u64) as usize];
                let key = key_for(conns, round, task, idx);
                let t0 = Instant::now();
                let res = c.get(&key).await;
                let dt = t0.elapsed();
                match res {
                    Ok(Lookup::Found(v)) if v == value_for(&key, value_size) => {
                        out.nanos.push(dt.as_nanos() as u64);
                    }
                    Ok(Lookup::Found(v)) => out.fail(format!(
                        "GET {key}: a {}-byte value that is not the one inserted",
                        v.len()
                    )),
                    Ok(other) => out.fail(format!("GET {key} answered {other:?}")),
                    Err(e) => {
                        out.fail(format!("GET {key}: {e}"));
                        client = None;
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// Runs one phase: `conns` tasks doing `op` for the configured time, task `t` at node
/// `t mod n` of the `n` nodes of `ring` (their addresses, and their pids for their CPU time).
async fn run_phase(
    (ring, pids): (&[PeerAddr], &[u32]),
    op: Op,
    (conns, round): (usize, usize),
    settings: &Settings,
    mut to_read: Vec<Vec<u64>>,
) -> (PhaseResult, Vec<Vec<u64>>, Vec<String>) {
    let start = Arc::new(Barrier::new(conns + 1));
    let ring: Arc<[PeerAddr]> = ring.into();
    let mut handles = Vec::with_capacity(conns);
    // Phases that read hand their keys on to the next phase.
    let mut passed_on = Vec::with_capacity(conns);
    for task in 0..conns {
        let reads = to_read
            .get_mut(task)
            .map(std::mem::take)
            .unwrap_or_default();
        passed_on.push(reads.clone());
        handles.push(tokio::spawn(run_task(TaskSpec {
            addr: ring[task % ring.len()],
            ring: ring.clone(),
            op,
            conns,
            round,
            task,
            value_size: settings.value_size,
            to_read: reads,
            duration: settings.duration(),
            start: start.clone(),
        })));
    }
    start.wait().await;
    let began = Instant::now();
    let cpu_before = cpu_of(pids);
    let mut nanos = Vec::new();
    let mut failures = 0;
    let mut errors = Vec::new();
    let mut inserted = Vec::with_capacity(conns);
    for h in handles {
        match h.await {
            Ok(mut o) => {
                nanos.append(&mut o.nanos);
                failures += o.failures;
                errors.extend(o.errors);
                inserted.push(o.inserted);
            }
            Err(e) => {
                failures += 1;
                errors.push(format!("task panicked: {e}"));
                inserted.push(Vec::new());
            }
        }
    }
    let elapsed = began.elapsed();
    let node_cpu = cpu_of(pids)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    if op != Op::Ins {
        inserted = passed_on;
    }
    let result = PhaseResult {
        side: 0,
        op,
        conns,
        ok: nanos.len() as u64,
        failures,
        elapsed,
        lat: Latency::of(&mut nanos),
        node_cpu,
    };
    (result, inserted, errors)
}

fn us(d: Duration) -> String {
    format!("{:.0}us", d.as_secs_f64() * 1e6)
}

/// One phase's line; `label` names the node (A/B runs) or is empty.
fn print_result(label: &str, r: &PhaseResult) {
    println!(
        "{label}{:<4} conns={:<3} ops/s={:>8.0}  p50={:>7}  p99={:>7}  p999={:>7}  max={:>8}  n={:<8} failures={}  node cpu/op={}",
        r.op.name(),
        r.conns,
        r.ops_per_sec(),
        us(r.lat.p50),
        us(r.lat.p99),
        us(r.lat.p999),
        us(r.lat.max),
        r.ok,
        r.failures,
        r.node_cpu
            .filter(|_| r.ok > 0)
            .map_or("?".into(), |c| format!("{:.1}us", c * 1e6 / r.ok as f64))
    );
}

/// Starts the node from `bin` on `addr` with `extra` flags and waits until it answers PUL with
/// `T`.
async fn start_node(
    bin: &Path,
    (data, log): (&Path, &Path),
    addr: PeerAddr,
    extra: &[String],
) -> Result<Reaped, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = dht_store_command_for(bin);
    // The caller's DHT_STORE_* settings apply to the node here (module doc).
    cmd.envs(std::env::vars().filter(|(k, _)| k.starts_with("DHT_STORE_")));
    let child = cmd
        .arg("--data")
        .arg(data)
        .args(["--port", &addr.port().to_string()])
        .args(["--host", &addr.ip().to_string()])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut node = Reaped::new("dht-store", child);
    wait_serving(&mut node.child, addr, Duration::from_secs(30)).await?;
    Ok(node)
}

/// Starts `target`'s node or ring; a ring is returned once it is whole and, with replicas,
/// every node has found its replicas.
async fn start_target(target: &Target) -> Result<(Vec<Reaped>, Vec<PeerAddr>), String> {
    let mut extra = Vec::new();
    if let Some(k) = target.replicas {
        extra.extend(["--replicas".to_string(), k.to_string()]);
    }
    if target.nodes == 1 {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, common::free_port());
        let (data, log) = target.paths(0);
        let node = start_node(&target.bin, (&data, &log), addr, &extra).await?;
        return Ok((vec![node], vec![addr]));
    }
    let mut addrs = loopback_addrs(target.nodes);
    addrs.sort_by_key(dht_store::ring::id_of);
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut args = extra.clone();
        if i > 0 {
            args.extend(["--join".to_string(), addrs[0].to_string()]);
        }
        let (data, log) = target.paths(i);
        nodes.push(start_node(&target.bin, (&data, &log), *addr, &args).await?);
    }
    let k = target.replicas.unwrap_or(0);
    wait_replicas(&addrs, k, Duration::from_secs(60))
        .await
        .map_err(|e| format!("ring not ready: {e}"))?;
    Ok((nodes, addrs))
}

/// Redis figures for one connection count, as `redis-benchmark --csv` reports them.
#[derive(Clone, Copy, Debug)]
struct RedisFigures {
    set: f64,
    get: f64,
    set_p50_ms: f64,
    set_p99_ms: f64,
    get_p50_ms: f64,
    get_p99_ms: f64,
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(cmd);
            p.is_file()
        })
    })
}

/// One `redis-benchmark --csv` test: the numbers of its row (rps, avg, min, p50, p95, p99,
/// max; milliseconds).
fn redis_benchmark(
    port: u16,
    test: &str,
    conns: usize,
    value_size: usize,
    n: u64,
    keyspace: u64,
) -> Result<Vec<f64>, String> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", test])
        .args(["-c", &conns.to_string(), "-d", &value_size.to_string()])
        .args(["-n", &n.to_string(), "-r", &keyspace.to_string(), "--csv"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark -t {test} failed ({}): {}{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let name = format!("\"{}\"", test.to_uppercase());
    text.lines()
        .find(|l| l.starts_with(&name))
        .map(|l| {
            l.split(',')
                .skip(1)
                .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
                .collect()
        })
        .ok_or_else(|| format!("unexpected redis-benchmark output:\n{text}"))
}

/// Runs Redis (AOF, fsync always) on a free port and `redis-benchmark` at each connection
/// count. `Ok(None)` when Redis is not installed.
fn redis_baseline(
    settings: &Settings,
    ours: &[PhaseResult],
) -> Result<Option<Vec<(usize, RedisFigures)>>, String> {
    if !on_path("redis-server") || !on_path("redis-benchmark") {
        return Ok(None);
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = common::free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    let mut redis = Reaped::new("redis-server", child);
    // Wait for PONG.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b)?;
            Ok(&b == b"+PONG\r\n")
        });
        if let Ok(true) = pong {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "redis-server did not answer PING on port {port} within 10s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut figures = Vec::new();
    for &conns in &settings.conns {
        // About BENCH_SECS per test, from our own rate at this N (Redis is usually in the same
        // range), with a floor so that short runs still mean something.
        let requests = |op: Op| {
            let rate = ours
                .iter()
                .find(|r| r.side == 0 && r.op == op && r.conns == conns)
                .map_or(10_000.0, |r| r.ops_per_sec());
            ((rate * settings.secs) as u64).clamp(10_000, 2_000_000)
        };
        let (n_set, n_get) = (requests(Op::Ins), requests(Op::Get));
        // SETs draw their keys from n/5 names, so that nearly all of them are set (1 - e^-5)
        // before the GETs, which draw from the same names: GETs hit, as ours do.
        let keyspace = (n_set / 5).max(1000);
        let set = redis_benchmark(port, "set", conns, settings.value_size, n_set, keyspace)?;
        let get = redis_benchmark(port, "get", conns, settings.value_size, n_get, keyspace)?;
        // Columns after the test name: rps, avg, min, p50, p95, p99, max.
        let col = |r: &[f64], i: usize| r.get(i).copied().unwrap_or(f64::NAN);
        let f = RedisFigures {
            set: col(&set, 0),
            get: col(&get, 0),
            set_p50_ms: col(&set, 3),
            set_p99_ms: col(&set, 5),
            get_p50_ms: col(&get, 3),
            get_p99_ms: col(&get, 5),
        };
        println!(
            "redis conns={conns:<3} SET/s={:>8.0} (p50={:.0}us p99={:.0}us)  GET/s={:>8.0} (p50={:.0}us p99={:.0}us)  n={n_set}/{n_get}",
            f.set,
            f.set_p50_ms * 1e3,
            f.set_p99_ms * 1e3,
            f.get,
            f.get_p50_ms * 1e3,
            f.get_p99_ms * 1e3,
        );
        figures.push((conns, f));
    }
    redis.stop();
    Ok(Some(figures))
}

/// A node (or ring) the phases run against: this build's (A) or the baseline's (B); with
/// `BENCH_REPLICAS`, a ring with replicas (A) or without (B).
struct Target {
    /// "this" or "base", or "K=2" and "K=0", in the lines of an A/B run.
    label: String,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Nodes: 1, or a ring of `BENCH_RING`.
    nodes: usize,
    /// `--replicas` of every node (`None`: not passed).
    replicas: Option<usize>,
}

impl Target {
    /// Data directory and log of node `i` (`data` and `log` themselves for a single node).
    fn paths(&self, i: usize) -> (PathBuf, PathBuf) {
        if self.nodes == 1 {
            return (self.data.clone(), self.log.clone());
        }
        let suffixed = |p: &Path, ext: &str| {
            let stem = p.file_stem().map_or("node".into(), |s| s.to_string_lossy());
            p.with_file_name(format!("{stem}-n{i}{ext}"))
        };
        (suffixed(&self.data, ""), suffixed(&self.log, ".log"))
    }
}

/// Requests over time of every round of `side` at (`op`, `conns`), and each round's ops/s.
fn pooled(results: &[PhaseResult], side: usize, op: Op, conns: usize) -> Option<(f64, Vec<f64>)> {
    let rs: Vec<&PhaseResult> = results
        .iter()
        .filter(|r| r.side == side && r.op == op && r.conns == conns)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let ok: u64 = rs.iter().map(|r| r.ok).sum();
    let secs: f64 = rs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    Some((
        ok as f64 / secs,
        rs.iter().map(|r| r.ops_per_sec()).collect(),
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The A/B table: per (operation, N) both nodes' ops/s and this/baseline; per operation the
/// median ratio over N.
fn print_ab(settings: &Settings, targets: &[Target], results: &[PhaseResult]) {
    let what = |t: &Target| match (&settings.replicas, t.nodes) {
        (Some(_), n) => format!("{} (ring of {n})", t.label),
        (None, _) => format!("{} {}", t.label, t.bin.display()),
    };
    println!(
        "== A/B: ops/s of A = {} and B = {}, {} round(s) each per N; \
         pooled = requests / time over the rounds, [each round]",
        what(&targets[0]),
        what(&targets[1]),
        settings.rounds
    );
    let rates = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut summary = Vec::new();
    for op in Op::ALL {
        let mut ratios = Vec::new();
        let mut round_ratios = Vec::new();
        for &conns in &settings.conns {
            let (Some((a, ar)), Some((b, br))) =
                (pooled(results, 0, op, conns), pooled(results, 1, op, conns))
            else {
                continue;
            };
            let ratio = a / b;
            ratios.push(ratio);
            let per_round: Vec<f64> = ar.iter().zip(&br).map(|(a, b)| a / b).collect();
            round_ratios.extend(per_round.iter().copied());
            println!(
                "{:<4} conns={conns:<3} this {a:>8.0} [{}]  baseline {b:>8.0} [{}]  this/baseline {ratio:.3}  (rounds {})",
                op.name(),
                rates(&ar),
                rates(&br),
                per_round
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rlo = round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let rhi = round_ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        summary.push(format!(
            "{}: this/baseline median {:.3} over N={:?} (pooled {lo:.3}..{hi:.3}); \
             paired rounds: median {:.3}, {rlo:.3}..{rhi:.3}",
            op.name(),
            median(&mut ratios),
            settings.conns,
            median(&mut round_ratios)
        ));
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}

fn print_log_tail(target: &Target, lines: usize) {
    for i in 0..target.nodes {
        let log = target.paths(i).1;
        let Ok(l) = std::fs::read_to_string(&log) else {
            continue;
        };
        if !l.trim().is_empty() {
            eprintln!(
                "node log of {} ({}, {}, last {lines} lines):",
                target.label,
                target.bin.display(),
                log.display()
            );
            let all: Vec<&str> = l.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                eprintln!("  {line}");
            }
        }
    }
}

fn main() -> ExitCode {
    let settings = Settings::from_env();
    print_machine();
    println!(
        "settings: BENCH_SECS={} conns={:?} value={}B bench runtime threads={}",
        settings.secs, settings.conns, settings.value_size, settings.threads
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let this_bin = PathBuf::from(env!("CARGO_BIN_EXE_dht-store"));
    let target =
        |label: &str, bin: &Path, name: &str, nodes: usize, replicas: Option<usize>| Target {
            label: label.to_string(),
            bin: bin.to_path_buf(),
            data: dir.path().join(format!("{name}data")),
            log: dir.path().join(format!("{name}node.log")),
            nodes,
            replicas,
        };
    let mut targets = Vec::new();
    match (&settings.baseline, settings.replicas) {
        (Some(_), Some(_)) => {
            eprintln!("BENCH_BASELINE_BIN and BENCH_REPLICAS: one comparison at a time");
            return ExitCode::FAILURE;
        }
        (Some(bin), None) => {
            if !bin.is_file() {
                eprintln!("BENCH_BASELINE_BIN={}: no such file", bin.display());
                return ExitCode::FAILURE;
            }
            targets.push(target("this", &this_bin, "", 1, None));
            targets.push(target("base", bin, "baseline-", 1, None));
            println!(
                "A/B: this build against BENCH_BASELINE_BIN={}, BENCH_AB_ROUNDS={} (per N and round, each phase on A and B in turn; B first in even rounds)",
                bin.display(),
                settings.rounds
            );
        }
        (None, Some(k)) => {
            let n = settings.ring;
            targets.push(target(&format!("K={k}"), &this_bin, "k-", n, Some(k)));
            targets.push(target("K=0", &this_bin, "k0-", n, Some(0)));
            println!(
                "A/B: a ring of {n} with replicas {k} against the same ring with replicas 0 \
                 (BENCH_REPLICAS={k} BENCH_RING={n}), BENCH_AB_ROUNDS={} (per N and round, each \
                 phase on A and B in turn; B first in even rounds); task t talks to node t mod {n} \
                 with keys that node owns",
                settings.rounds
            );
        }
        (None, None) => targets.push(target("this", &this_bin, "", 1, None)),
    }
    let ab = targets.len() > 1;

    let outcome: Result<(Vec<PhaseResult>, Vec<String>), String> = rt.block_on(async {
        let mut nodes = Vec::new();
        for t in &targets {
            let (node, addrs) = start_target(t)
                .await
                .map_err(|e| format!("{} node ({}): {e}", t.label, t.bin.display()))?;
            for (i, addr) in addrs.iter().enumerate() {
                println!(
                    "node{}: {} on {addr}, data {}",
                    if ab {
                        format!(" {}", t.label)
                    } else {
                        String::new()
                    },
                    t.bin.display(),
                    t.paths(i).0.display()
                );
            }
            nodes.push((node, addrs));
        }
        println!();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for &conns in &settings.conns {
            for round in 0..settings.rounds {
                // Each phase hands the keys inserted on to the next, per node.
                let mut keys = vec![Vec::new(); targets.len()];
                for op in Op::ALL {
                    // A then B in odd rounds, B then A in even ones: neither always goes first.
                    let mut order: Vec<usize> = (0..targets.len()).collect();
                    if round % 2 == 1 {
                        order.reverse();
                    }
                    for side in order {
                        let t = &targets[side];
                        let label = if ab {
                            format!("{} r{} ", t.label, round + 1)
                        } else {
                            String::new()
                        };
                        let pids: Vec<u32> = nodes[side].0.iter().map(Reaped::pid).collect();
                        let (mut r, next, e) = run_phase(
                            (&nodes[side].1, &pids),
                            op,
                            (conns, round),
                            &settings,
                            std::mem::take(&mut keys[side]),
                        )
                        .await;
                        keys[side] = next;
                        r.side = side;
                        print_result(&label, &r);
                        errors.extend(e.into_iter().map(|e| format!("{label}{e}")));
                        results.push(r);
                    }
                }
            }
        }
        // The nodes must still be alive after the load.
        for (t, (ring, addrs)) in targets.iter().zip(nodes.iter_mut()) {
            for (node, addr) in ring.iter_mut().zip(addrs.iter()) {
                let alive = match Client::connect(*addr, AddressEncoding::Compact).await {
                    Ok(mut c) => matches!(c.pul().await, Ok(Status::T)),
                    Err(_) => false,
                };
                if !alive {
                    errors.push(format!(
                        "the {} node {addr} did not answer PUL after the run",
                        t.label
                    ));
                }
                node.stop();
            }
        }
        Ok((results, errors))
    });

    let (results, errors) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark could not run: {e}");
            for t in &targets {
                print_log_tail(t, 200);
            }
            return ExitCode::FAILURE;
        }
    };

    if ab {
        println!();
        print_ab(&settings, &targets, &results);
    }

    println!();
    if settings.redis {
        match redis_baseline(&settings, &results) {
            Ok(None) => println!("redis-server not installed: no baseline in this run"),
            Ok(Some(figures)) => {
                println!();
                for (conns, f) in figures {
                    let ratio = |op: Op, theirs: f64| {
                        pooled(&results, 0, op, conns).map_or(f64::NAN, |(r, _)| r / theirs)
                    };
                    println!(
                        "ours/redis conns={conns:<3} INS/SET={:.2}  GET/GET={:.2}",
                        ratio(Op::Ins, f.set),
                        ratio(Op::Get, f.get)
                    );
                }
            }
            Err(e) => println!("redis baseline failed: {e}"),
        }
    } else {
        println!("BENCH_REDIS=0: no Redis baseline in this run");
    }

    let failures: u64 = results.iter().map(|r| r.failures).sum();
    if failures > 0 || !errors.is_empty() {
        eprintln!();
        eprintln!("FAILED: {failures} request(s) failed");
        for e in errors.iter().take(20) {
            eprintln!("  {e}");
        }
        for t in &targets {
            print_log_tail(t, 40);
        }
        return ExitCode::FAILURE;
    }
    println!(
        "all requests succeeded (every INS, EXI and REM answered T, every GET returned its value)"
    );
    ExitCode::SUCCESS
}
