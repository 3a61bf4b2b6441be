//! Routing benchmark: `cargo bench --bench routing`.
//!
//! How many OWN hops a lookup takes in rings of 8, 16, 32 and 64 real `dht-store` processes,
//! against ½·log₂N (what Chord-style fingers give).
//!
//! For each case (ring size N, fingers F):
//!
//! 1. N nodes on distinct loopback hosts 127.0.0.2, 127.0.0.3, ... (free ports), each with
//!    its own fresh data directory, `DHT_STORE_MAINTENANCE_INTERVAL_MS=100` and
//!    `DHT_STORE_FINGERS=F`. The first starts alone; each further one is started with
//!    `--join` through a random earlier node, and the next starts once it answers PUL (a node
//!    serves only after its join completed).
//! 2. Ring check: every node's ABD (successor) must be the next id round the circle.
//! 3. After `ROUTING_SETTLE_MS` (default 3000) the walks are measured: `ROUTING_WALKS`
//!    (default 2000) OWN walks from a random node to a random key. hops = the number of OWN
//!    answers naming another peer before a peer named itself. The end of every walk is checked
//!    against the owner computed here from the node ids (the largest id ≤ key, wrapping):
//!    mismatches must be 0. After `ROUTING_AGAIN_MS` more (default 3000) the same walks are
//!    measured again, to show that the figures are stable (fingers refreshed).
//! 4. Model: the same walks on ideal ring states built here (the successor list at its default
//!    length, predecessor, F fingers each the true owner of id + 2^(159-i)) answered with the node's own
//!    `RingState::own_answer`. Walks whose measured hops differ from the model's are counted:
//!    0 means every node's fingers were fresh and exact. The model is also tabulated for more
//!    ring sizes and finger counts (no processes).
//!
//! Environment: `ROUTING_SIZES` (default `8,16,32,64`), `ROUTING_FINGERS` (fingers for every
//! size, default `8`), `ROUTING_EXTRA` (further `N:F` cases, default `64:16,64:5`),
//! `ROUTING_WALKS`, `ROUTING_SETTLE_MS`, `ROUTING_AGAIN_MS`, `ROUTING_SEED`,
//! `ROUTING_KEEP_LOGS=DIR` (copy the nodes' logs there).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dht_store::client::Client;
use dht_store::config::Config;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::{finger_targets, id_of, owner_of, successor_list, Peer, RingState};

use common::process::Reaped;
use common::{dht_store_command, loopback_addrs, wait_serving, Rng};

const ENC: AddressEncoding = AddressEncoding::Compact;
/// A walk longer than this is a failure (the nodes' own limit).
const MAX_HOPS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Small helpers

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A ring of node processes

/// The node processes of one ring, all SIGKILLed when dropped (every exit path, panics
/// included); each is also bound to die with the bench (PR_SET_PDEATHSIG).
struct Ring {
    children: Vec<Reaped>,
    addrs: Vec<PeerAddr>,
    logs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Ring {
    fn drop(&mut self) {
        for c in &mut self.children {
            c.kill();
        }
    }
}

fn spawn_node(
    data: &Path,
    me: PeerAddr,
    join: Option<PeerAddr>,
    fingers: usize,
    log: &Path,
) -> Child {
    let mut cmd = dht_store_command();
    cmd.arg("--data")
        .arg(data)
        .arg("--port")
        .arg(me.port().to_string())
        .arg("--host")
        .arg(me.ip().to_string());
    if let Some(j) = join {
        cmd.arg("--join").arg(j.to_string());
    }
    let f = std::fs::File::create(log).expect("node log");
    cmd.env("DHT_STORE_MAINTENANCE_INTERVAL_MS", "100")
        .env("DHT_STORE_FINGERS", fingers.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(f);
    cmd.spawn().expect("spawn dht-store")
}

async fn wait_ready(child: &mut Child, addr: PeerAddr, log: &Path) {
    if let Err(e) = wait_serving(child, addr, Duration::from_secs(60)).await {
        panic!("{e}: {}", std::fs::read_to_string(log).unwrap_or_default());
    }
}

/// Starts `n` nodes one after the other, each joining through a random earlier one.
async fn start_ring(n: usize, fingers: usize, rng: &mut Rng) -> Ring {
    let dir = tempfile::Builder::new()
        .prefix("routing-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let addrs = loopback_addrs(n);
    let mut ring = Ring {
        children: Vec::new(),
        addrs: Vec::new(),
        logs: Vec::new(),
        _dir: dir,
    };
    for (i, &addr) in addrs.iter().enumerate() {
        let join = (i > 0).then(|| ring.addrs[rng.index(i)]);
        let data = ring._dir.path().join(format!("n{i}"));
        let log = ring._dir.path().join(format!("n{i}.log"));
        let child = spawn_node(&data, addr, join, fingers, &log);
        // Reaped from here, should it never be ready.
        ring.children
            .push(Reaped::new(format!("node {addr}"), child));
        let node = ring.children.last_mut().expect("just pushed");
        wait_ready(&mut node.child, addr, &log).await;
        ring.addrs.push(addr);
        ring.logs.push(log);
    }
    ring
}

/// Nodes whose successor (ABD) is not the next id round the circle.
async fn wrong_successors(addrs: &[PeerAddr]) -> usize {
    let mut peers: Vec<Peer> = addrs.iter().copied().map(Peer::new).collect();
    peers.sort_by_key(|p| p.id);
    let mut wrong = 0;
    for (i, p) in peers.iter().enumerate() {
        let next = peers[(i + 1) % peers.len()].addr;
        let got = match Client::connect(p.addr, ENC).await {
            Ok(mut c) => c.abd().await.ok(),
            Err(_) => None,
        };
        if got != Some(next) {
            wrong += 1;
        }
    }
    wrong
}

// ---------------------------------------------------------------------------------------------
// Walks

/// One walk to measure: where it starts and the key.
#[derive(Clone, Copy)]
struct Walk {
    start: PeerAddr,
    key: HashKey,
}

/// What a batch of walks gave.
#[derive(Clone, Debug, Default)]
struct Measured {
    hops: Vec<usize>,
    mismatches: usize,
    failures: usize,
    elapsed: Duration,
}

impl Measured {
    fn mean(&self) -> f64 {
        self.hops.iter().sum::<usize>() as f64 / self.hops.len().max(1) as f64
    }

    fn max(&self) -> usize {
        self.hops.iter().copied().max().unwrap_or(0)
    }
}

fn true_owner(addrs: &[PeerAddr], key: &HashKey) -> PeerAddr {
    let ids: Vec<(HashKey, PeerAddr)> = addrs.iter().map(|a| (id_of(a), *a)).collect();
    let owner = owner_of(key, ids.iter().map(|(id, _)| id)).expect("nodes");
    ids.iter().find(|(id, _)| *id == owner).expect("owner").1
}

/// OWN from `cur`, on a kept connection (reopened once if it was closed).
async fn own(
    conns: &mut HashMap<PeerAddr, Client>,
    cur: PeerAddr,
    key: &HashKey,
) -> Option<PeerAddr> {
    for _ in 0..2 {
        let client = match conns.entry(cur) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(Client::connect(cur, ENC).await.ok()?),
        };
        match client.own(key).await {
            Ok(a) => return Some(a),
            Err(_) => {
                conns.remove(&cur);
            }
        }
    }
    None
}

async fn measure(addrs: &[PeerAddr], walks: &[Walk]) -> Measured {
    let mut conns: HashMap<PeerAddr, Client> = HashMap::new();
    let mut m = Measured::default();
    let t0 = Instant::now();
    for w in walks {
        let mut cur = w.start;
        let mut hops = 0;
        let end = loop {
            let Some(next) = own(&mut conns, cur, &w.key).await else {
                break None;
            };
            if next == cur {
                break Some(cur);
            }
            hops += 1;
            if hops > MAX_HOPS {
                break None;
            }
            cur = next;
        };
        match end {
            None => m.failures += 1,
            Some(end) => {
                if end != true_owner(addrs, &w.key) {
                    m.mismatches += 1;
                }
                m.hops.push(hops);
            }
        }
    }
    m.elapsed = t0.elapsed();
    m
}

/// Where fingers point, for the model.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// The node's: id + 2^(159-i), i < F.
    Binary(usize),
    /// Base-4 digits: id + j·2^(158-2i), j in 1..=3, i < levels (3 fingers per level).
    Base4(usize),
    /// F targets evenly round the circle: id + j·2^160/F.
    Uniform(usize),
    /// The node's binary fingers plus the next S successors (a successor list).
    BinaryPlusSuccessors(usize, usize),
}

impl Layout {
    fn label(&self) -> String {
        match *self {
            Layout::Binary(f) => format!("binary {f}"),
            Layout::Base4(l) => format!("base-4 {} ({l} levels)", 3 * l),
            Layout::Uniform(f) => format!("uniform {f}"),
            Layout::BinaryPlusSuccessors(f, s) => format!("binary {f} + {s} successors"),
        }
    }

    /// Finger targets of a node at `id`.
    fn targets(&self, id: &HashKey) -> Vec<HashKey> {
        match *self {
            Layout::Binary(f) | Layout::BinaryPlusSuccessors(f, _) => finger_targets(id, f),
            Layout::Base4(levels) => (0..levels.min(79))
                .flat_map(|i| {
                    let step = HashKey::pow2(158 - 2 * i as u32);
                    let mut t = *id;
                    (1..=3).map(move |_| {
                        t = t.wrapping_add(&step);
                        t
                    })
                })
                .collect(),
            Layout::Uniform(f) => {
                // 2^160 / f by long division of the 21-byte number 2^160.
                let mut step = [0u8; 20];
                let mut rem: u64 = 1;
                for b in step.iter_mut() {
                    let cur = rem * 256;
                    *b = (cur / f as u64) as u8;
                    rem = cur % f as u64;
                }
                let step = HashKey(step);
                let mut t = *id;
                (0..f)
                    .map(|_| {
                        t = t.wrapping_add(&step);
                        t
                    })
                    .collect()
            }
        }
    }
}

/// The owner of `key` among sorted `ids`: the largest id <= key, else the largest id.
fn sorted_owner(ids: &[HashKey], key: &HashKey) -> HashKey {
    match ids.partition_point(|id| id <= key) {
        0 => ids[ids.len() - 1],
        i => ids[i - 1],
    }
}

/// Ideal ring states for these addresses: exact successor, second successor, predecessor, and
/// each finger the true owner of its target.
fn ideal_states(addrs: &[PeerAddr], layout: Layout) -> HashMap<PeerAddr, RingState> {
    let mut peers: Vec<Peer> = addrs.iter().copied().map(Peer::new).collect();
    peers.sort_by_key(|p| p.id);
    let ids: Vec<HashKey> = peers.iter().map(|p| p.id).collect();
    let by_id: HashMap<HashKey, Peer> = peers.iter().map(|p| (p.id, *p)).collect();
    let n = peers.len();
    (0..n)
        .map(|i| {
            let me = peers[i];
            let mut fingers: Vec<Peer> = layout
                .targets(&me.id)
                .iter()
                .map(|t| by_id[&sorted_owner(&ids, t)])
                .collect();
            if let Layout::BinaryPlusSuccessors(_, s) = layout {
                fingers.extend((1..=s).map(|k| peers[(i + k) % n]));
            }
            let state = RingState {
                me,
                // As long a list as a node keeps by default.
                successors: successor_list(
                    &me,
                    (1..n).map(|d| peers[(i + d) % n]),
                    Config::default().successors,
                ),
                predecessor: (n > 1).then(|| peers[(i + n - 1) % n]),
                fingers,
            };
            (me.addr, state)
        })
        .collect()
}

/// Hops of each walk on the ideal ring states.
fn model_hops(states: &HashMap<PeerAddr, RingState>, walks: &[Walk]) -> Vec<usize> {
    walks
        .iter()
        .map(|w| {
            let mut cur = w.start;
            let mut hops = 0;
            loop {
                let next = states[&cur].own_answer(&w.key, &[]);
                if next == cur || hops > 100_000 {
                    return hops;
                }
                hops += 1;
                cur = next;
            }
        })
        .collect()
}

fn random_walks(addrs: &[PeerAddr], n: usize, rng: &mut Rng) -> Vec<Walk> {
    (0..n)
        .map(|_| Walk {
            start: addrs[rng.index(addrs.len())],
            key: rng.key(),
        })
        .collect()
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len().max(1) as f64
}

/// Histogram "h0:c0 h1:c1 ...".
fn histogram(v: &[usize]) -> String {
    let max = v.iter().copied().max().unwrap_or(0);
    (0..=max)
        .map(|h| format!("{h}:{}", v.iter().filter(|&&x| x == h).count()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------

/// One row of the results.
struct Row {
    n: usize,
    fingers: usize,
    form: Duration,
    wrong_succ: usize,
    at_formation: Measured,
    differ_at_formation: usize,
    first: Measured,
    second: Measured,
    model: Vec<usize>,
    differ_first: usize,
    differ_second: usize,
}

async fn run_case(
    n: usize,
    fingers: usize,
    walks_n: usize,
    settle: Duration,
    again: Duration,
    rng: &mut Rng,
) -> Row {
    let t0 = Instant::now();
    let ring = start_ring(n, fingers, rng).await;
    let formed = Instant::now();
    let form = formed - t0;
    let wrong_succ = wrong_successors(&ring.addrs).await;
    let walks = random_walks(&ring.addrs, walks_n, rng);
    let model = model_hops(&ideal_states(&ring.addrs, Layout::Binary(fingers)), &walks);
    let on_this_ring: Vec<String> = [3, 5, 8, 16]
        .iter()
        .map(|&f| {
            let h = model_hops(&ideal_states(&ring.addrs, Layout::Binary(f)), &walks);
            format!("F={f}: {:.3}", mean(&h))
        })
        .collect();
    // Right after the ring formed: fingers still converging (joiners start with none).
    let at_formation = measure(&ring.addrs, &walks).await;
    tokio::time::sleep((formed + settle).saturating_duration_since(Instant::now())).await;
    let first = measure(&ring.addrs, &walks).await;
    tokio::time::sleep((formed + settle + again).saturating_duration_since(Instant::now())).await;
    let second = measure(&ring.addrs, &walks).await;
    let differ = |m: &Measured| {
        if m.hops.len() != model.len() {
            return usize::MAX;
        }
        m.hops.iter().zip(&model).filter(|(a, b)| a != b).count()
    };
    let row = Row {
        n,
        fingers,
        form,
        wrong_succ,
        differ_at_formation: differ(&at_formation),
        at_formation,
        differ_first: differ(&first),
        differ_second: differ(&second),
        first,
        second,
        model,
    };
    if let Ok(dir) = std::env::var("ROUTING_KEEP_LOGS") {
        let dir = PathBuf::from(dir).join(format!("n{n}-f{fingers}"));
        let _ = std::fs::create_dir_all(&dir);
        for (i, log) in ring.logs.iter().enumerate() {
            let _ = std::fs::copy(log, dir.join(format!("n{i}.log")));
        }
    }
    drop(ring);
    println!(
        "N={n:>2} F={fingers:>2}: ring formed in {:.1} s, {} wrong successors; \
         after {:.1} s: mean {:.3} max {} ({} mismatches, {} failures, {:.0} µs/OWN, {} walks differ from the model); \
         after {:.1} s more: mean {:.3} max {} ({} mismatches, {} failures, {} differ); model mean {:.3}",
        row.form.as_secs_f64(),
        row.wrong_succ,
        settle.as_secs_f64(),
        row.first.mean(),
        row.first.max(),
        row.first.mismatches,
        row.first.failures,
        row.first.elapsed.as_secs_f64() * 1e6 / row.first.hops.iter().map(|h| h + 1).sum::<usize>().max(1) as f64,
        row.differ_first,
        again.as_secs_f64(),
        row.second.mean(),
        row.second.max(),
        row.second.mismatches,
        row.second.failures,
        row.differ_second,
        mean(&row.model),
    );
    println!(
        "      right after formation: mean {:.3} max {} ({} mismatches, {} failures, {} differ \
         from the model)",
        row.at_formation.mean(),
        row.at_formation.max(),
        row.at_formation.mismatches,
        row.at_formation.failures,
        row.differ_at_formation
    );
    println!(
        "      hops histogram (2nd measurement): {}",
        histogram(&row.second.hops)
    );
    println!(
        "      model on this ring and these walks: {}",
        on_this_ring.join(", ")
    );
    row
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench())
}

async fn bench() -> ExitCode {
    let started = Instant::now();
    let sizes = env_list("ROUTING_SIZES", "8,16,32,64");
    let fingers = env_u64("ROUTING_FINGERS", 8) as usize;
    let walks_n = env_u64("ROUTING_WALKS", 2000) as usize;
    let settle = Duration::from_millis(env_u64("ROUTING_SETTLE_MS", 3000));
    let again = Duration::from_millis(env_u64("ROUTING_AGAIN_MS", 3000));
    let mut rng = Rng::new(env_u64("ROUTING_SEED", 0x5eed));
    let mut cases: Vec<(usize, usize)> = sizes.iter().map(|&n| (n, fingers)).collect();
    let extra = std::env::var("ROUTING_EXTRA").unwrap_or_else(|_| "64:16,64:5".into());
    for c in extra.split(',').filter(|s| !s.trim().is_empty()) {
        let mut it = c.split(':');
        if let (Some(Ok(n)), Some(Ok(f))) = (
            it.next().map(|s| s.trim().parse()),
            it.next().map(|s| s.trim().parse()),
        ) {
            cases.push((n, f));
        }
    }
    assert!(
        cases.iter().all(|&(n, _)| (1..=250).contains(&n)),
        "ring sizes must be 1..=250 (one loopback host each)"
    );
    println!(
        "routing bench: cases {cases:?} (N:fingers), {walks_n} walks, maintenance every 100 ms, \
         measured {:.1} s and {:.1} s after the ring formed",
        settle.as_secs_f64(),
        (settle + again).as_secs_f64()
    );
    let mut rows = Vec::new();
    for &(n, f) in &cases {
        rows.push(run_case(n, f, walks_n, settle, again, &mut rng).await);
    }

    println!();
    println!(
        "| N | fingers | ½·log₂N | target ½·log₂N+1 | mean hops at formation | mean hops \
         +{:.0} s | mean hops +{:.0} s | max | model mean | model max | wrong owner / failed \
         walks | walks ≠ model (formation/1st/2nd) | ring formed in |",
        settle.as_secs_f64(),
        (settle + again).as_secs_f64()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    for r in &rows {
        let half_log = 0.5 * (r.n as f64).log2();
        let wrong = r.first.mismatches + r.second.mismatches;
        let failed = r.first.failures + r.second.failures;
        ok &= wrong + failed + r.at_formation.mismatches + r.at_formation.failures == 0;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {} | {} / {} \
             (formation: {} / {}) | {}/{}/{} | {:.1} s |",
            r.n,
            r.fingers,
            half_log,
            half_log + 1.0,
            r.at_formation.mean(),
            r.first.mean(),
            r.second.mean(),
            r.first.max().max(r.second.max()),
            mean(&r.model),
            r.model.iter().copied().max().unwrap_or(0),
            wrong,
            failed,
            r.at_formation.mismatches,
            r.at_formation.failures,
            r.differ_at_formation,
            r.differ_first,
            r.differ_second,
            r.form.as_secs_f64(),
        );
    }
    for r in rows.iter().filter(|r| r.n == 64 && r.fingers == fingers) {
        let target = 0.5 * 64f64.log2() + 1.0;
        println!(
            "target at 64 nodes, {} fingers: mean {:.3} <= {target:.2}: {}",
            r.fingers,
            r.second.mean(),
            if r.second.mean() <= target {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    // The model alone, for more sizes and finger counts (same kind of addresses and walks).
    println!();
    const MODEL_RINGS: usize = 5;
    println!(
        "Model (ideal ring states, exact fingers; no processes): mean / max hops over \
         {MODEL_RINGS} random rings x {walks_n} walks per size"
    );
    let sizes_m = [8usize, 16, 32, 64, 128, 256, 1024, 4096];
    print!("| fingers (known peers besides the successor list and pred) |");
    for n in sizes_m {
        print!(" N={n} |");
    }
    println!();
    print!("|---|");
    for _ in sizes_m {
        print!("---|");
    }
    println!();
    print!("| ½·log₂N |");
    for n in sizes_m {
        print!(" {:.2} |", 0.5 * (n as f64).log2());
    }
    println!();
    let layouts = [
        Layout::Binary(0),
        Layout::Binary(3),
        Layout::Binary(5),
        Layout::Binary(8),
        Layout::Binary(12),
        Layout::Binary(16),
        Layout::BinaryPlusSuccessors(8, 4),
        Layout::Base4(4),
        Layout::Base4(6),
        Layout::Uniform(16),
        Layout::Uniform(32),
    ];
    let mut mrng = Rng::new(env_u64("ROUTING_SEED", 0x5eed) ^ 0xa5a5);
    let model_rings: Vec<Vec<(Vec<PeerAddr>, Vec<Walk>)>> = sizes_m
        .iter()
        .map(|&n| {
            (0..MODEL_RINGS)
                .map(|_| {
                    let addrs = loopback_addrs_model(n, &mut mrng);
                    let walks = random_walks(&addrs, walks_n, &mut mrng);
                    (addrs, walks)
                })
                .collect()
        })
        .collect();
    for layout in layouts {
        print!("| {} |", layout.label());
        for rings in &model_rings {
            let mut all = Vec::new();
            for (addrs, walks) in rings {
                all.extend(model_hops(&ideal_states(addrs, layout), walks));
            }
            print!(" {:.2} / {} |", mean(&all), all.iter().max().unwrap_or(&0));
        }
        println!();
    }
    println!();
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: some walks did not end at the true owner");
        ExitCode::FAILURE
    }
}

/// Addresses like the real rings' (127.x.y.z, random high ports), without binding anything.
fn loopback_addrs_model(n: usize, rng: &mut Rng) -> Vec<PeerAddr> {
    (0..n)
        .map(|i| {
            SocketAddrV4::new(
                Ipv4Addr::new(
                    127,
                    (i / 62500) as u8,
                    (i / 250 % 250) as u8,
                    2 + (i % 250) as u8,
                ),
                32768 + rng.index(28000) as u16,
            )
        })
        .collect()
}
