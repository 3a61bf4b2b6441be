//! Issue 16: an acknowledged REM is never undone, with real processes. Two ways an older copy
//! of a key outlived a later write at its owner:
//!
//! - **A**: a joiner stopped dead after storing the arc it received and its ring state, before
//!   its CON's final `T` (`DHT_STORE_FAULT=con-join:before-ack`), then SIGKILLed. The serving
//!   side aborts the CON and keeps the range; keys of the joiner's would-be arc are removed and
//!   overwritten there; the joiner restarts on the same directory and address and joins again.
//!   Fresh (it held nothing before) and not fresh (a node given up and rejoining).
//! - **B**: a node SIGKILLed and down past its failure detection: its predecessor takes its arc
//!   and acknowledges writes there (an INS then a REM of a key, an overwrite); the node returns
//!   on the same directory and address and joins again, keeping its data.
//!
//! Afterwards, once the ring has settled: every key reads as its last acknowledged write
//! through the ring (an OWN walk from every node), directly at its owner (GET and EXI), and
//! `N` at every other node; every node holds (INF `keys` and `copies`) exactly the keys it owns
//! that should exist and, with replicas, the copies of its K successors' keys that should;
//! every copy (VGT) is the owner's; still so a few maintenance rounds and repair passes later;
//! and, with the nodes stopped, no data directory holds a removed key, an older value, or a key
//! its node should not hold.
//!
//! Each test runs twice: with `replicas = 0` (one copy, the behaviour of before issue 17) and
//! with `replicas = 2` (issue 17: a key removed while one of its replicas was away must not come
//! back when that replica returns, nor after its arc changes hands).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::model::copies_right;
use common::{
    held_at, held_on_disk, holders_of, keys_held_at, loopback_addrs, owner_of, ring_check, settle,
    TestNode,
};
use dht_store::client::{Client, Lookup, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr, Status};
use dht_store::ring::id_of;

/// Every node of these tests: misplaced entries go to their owners within a second or two
/// (maintenance rounds are every 200 ms, `common::TestNode::spawn`), and anti-entropy runs every
/// 2 s when there are replicas.
const ENV: &[(&str, &str)] = &[
    ("DHT_STORE_REPAIR_INTERVAL_SECS", "1"),
    ("DHT_STORE_SYNC_INTERVAL_SECS", "2"),
];

const FAULT: &str = "con-join:before-ack";

/// How long a settled ring must keep every key right: several repair passes (1 s) and over a
/// dozen maintenance rounds.
const STILL_RIGHT_AFTER: Duration = Duration::from_secs(3);

fn env(fault: bool, k: usize) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("DHT_STORE_REPLICAS".into(), k.to_string()));
    if fault {
        env.push(("DHT_STORE_FAULT".into(), FAULT.into()));
    }
    env
}

/// A node on `addr` in `root/name` with [`ENV`] and `k` replicas, started and serving.
async fn node(
    root: &Path,
    name: &str,
    addr: PeerAddr,
    join: Option<PeerAddr>,
    k: usize,
) -> TestNode {
    let join = join.map(|a| a.to_string());
    let args: Vec<&str> = match &join {
        Some(j) => vec!["--join", j],
        None => vec![],
    };
    let mut n = TestNode::new(&root.join(name), addr, &args);
    n.env = env(false, k);
    n.restart().await;
    n
}

/// What every key written should hold at the end, by name (`None`: removed), in name order.
#[derive(Default)]
struct Book(BTreeMap<String, (HashKey, Option<Vec<u8>>)>);

impl Book {
    fn set(&mut self, name: &str, key: HashKey, value: Option<Vec<u8>>) {
        self.0.insert(name.to_string(), (key, value));
    }

    fn key(&self, name: &str) -> HashKey {
        self.0[name].0
    }
}

/// `count` key names `prefix-i` (the first ones found) whose keys `owner` owns in the ring of
/// `addrs`.
fn names_owned_by(prefix: &str, count: usize, addrs: &[PeerAddr], owner: PeerAddr) -> Vec<String> {
    let names: Vec<String> = (0..1_000_000)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|n| owner_of(addrs, &HashKey::of(n.as_bytes())) == owner)
        .take(count)
        .collect();
    assert_eq!(names.len(), count, "the arc of {owner} is tiny");
    names
}

fn value(name: &str, version: u32) -> Vec<u8> {
    format!("{name} v{version}").into_bytes()
}

fn show_lookup(l: &Lookup) -> String {
    match l {
        Lookup::Found(v) => format!("T {}", show(Some(v))),
        Lookup::Absent => "F (absent)".into(),
        Lookup::NotMine => "N (not mine)".into(),
    }
}

fn show(v: Option<&[u8]>) -> String {
    match v {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "absent".into(),
    }
}

/// Writes each name's value 1 through `entry` (routed to its owner) and books it.
async fn write_all(entry: PeerAddr, names: &[String], book: &mut Book) {
    let mut r = Router::new(entry, AddressEncoding::Compact);
    for name in names {
        let k = HashKey::of(name.as_bytes());
        let v = value(name, 1);
        assert!(r.put(&k, &v).await.unwrap(), "INS {name} not stored");
        book.set(name, k, Some(v));
    }
}

/// INS directly at `at`, which must own the key and answer `T`; booked.
async fn ins_at(c: &mut Client, name: &str, version: u32, book: &mut Book) {
    let k = HashKey::of(name.as_bytes());
    let v = value(name, version);
    let s = c.ins(&k, &v).await.unwrap();
    assert_eq!(s, Status::T, "INS {name} ({k}) v{version} at {}", c.peer());
    book.set(name, k, Some(v));
}

/// REM directly at `at`, which must own the key and answer `T`; booked as removed.
async fn rem_at(c: &mut Client, name: &str, book: &mut Book) {
    let k = HashKey::of(name.as_bytes());
    let s = c.rem(&k).await.unwrap();
    assert_eq!(s, Status::T, "REM {name} ({k}) at {}", c.peer());
    book.set(name, k, None);
}

/// One look at the ring `live` (every node of it) with `replicas` copies: what is wrong, one line
/// each.
async fn look(live: &[PeerAddr], book: &Book, replicas: usize) -> Vec<String> {
    let mut wrong = Vec::new();
    // Directly at each node: the owner answers with the key's state, every other node N; and
    // the node holds just the keys it owns that should exist (INF keys) and the copies it
    // should hold of its K successors' keys (INF copies).
    for &at in live {
        let mut c = match Client::connect(at, AddressEncoding::Compact).await {
            Ok(c) => c,
            Err(e) => {
                wrong.push(format!("{at}: {e}"));
                continue;
            }
        };
        let (mut should_hold, mut should_copy) = (0, 0);
        for (name, (k, want)) in &book.0 {
            let owner = owner_of(live, k);
            if owner != at && want.is_some() && holders_of(live, k, replicas).contains(&at) {
                should_copy += 1;
            }
            let (want_get, want_exi) = match want {
                _ if owner != at => (Lookup::NotMine, Status::N),
                Some(v) => (Lookup::Found(v.clone()), Status::T),
                None => (Lookup::Absent, Status::F),
            };
            if owner == at && want.is_some() {
                should_hold += 1;
            }
            let role = if owner == at {
                "its owner"
            } else {
                "not its owner"
            };
            match c.get(k).await {
                Ok(got) if got == want_get => {}
                Ok(got) => wrong.push(format!(
                    "{name} ({k}) GET at {at} ({role}): {}, expected {}",
                    show_lookup(&got),
                    show_lookup(&want_get)
                )),
                Err(e) => wrong.push(format!("{name} ({k}) GET at {at} ({role}): {e}")),
            }
            match c.exi(k).await {
                Ok(got) if got == want_exi => {}
                got => wrong.push(format!(
                    "{name} ({k}) EXI at {at} ({role}): {got:?}, expected {want_exi:?}"
                )),
            }
        }
        match held_at(at).await {
            Ok(held) if held.owned == should_hold && held.copies == should_copy => {}
            Ok(held) => wrong.push(format!(
                "{at} holds {} entries of its arc (INF keys) and {} copies, and owns \
                 {should_hold} keys that should exist and should hold {should_copy} copies: an \
                 entry more is a key it should not hold, or one removed",
                held.owned, held.copies
            )),
            Err(e) => wrong.push(e),
        }
    }
    // Every copy where it belongs, the owner's (VGT).
    if replicas > 0 {
        let keys: Vec<HashKey> = book.0.values().map(|(k, _)| *k).collect();
        if let Err(e) = copies_right(live, keys.iter(), replicas).await {
            wrong.push(e);
        }
    }
    // Through the ring: an OWN walk from every node, then GET at the end of it.
    for &entry in live {
        let mut r = Router::new(entry, AddressEncoding::Compact);
        for (name, (k, want)) in &book.0 {
            match r.get(k).await {
                Ok(got) if got == *want => {}
                Ok(got) => wrong.push(format!(
                    "{name} ({k}) through the ring from {entry}: {}, expected {}",
                    show(got.as_deref()),
                    show(want.as_deref())
                )),
                Err(e) => wrong.push(format!("{name} ({k}) through the ring from {entry}: {e}")),
            }
        }
    }
    wrong
}

/// Waits until `node` logs `needle` after the first `from` bytes of its log (a line from
/// before the step waited for does not count).
async fn wait_log_after(node: &TestNode, from: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.log_text().get(from..).unwrap_or("").contains(needle) {
        assert!(
            Instant::now() < deadline,
            "node {} never logged {needle:?}: {}",
            node.addr,
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the ring of `nodes` is the one their ids make (a loaded machine can make a
/// node take its new successor for dead while the ring forms).
async fn ring_formed(nodes: &[&TestNode]) {
    let addrs: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    settle("the ring formed", Duration::from_secs(30), nodes, || {
        ring_check(&addrs, 16)
    })
    .await;
}

fn report(wrong: &[String]) -> String {
    let shown = wrong.len().min(30);
    let mut s = wrong[..shown].join("\n  ");
    if wrong.len() > shown {
        s += &format!("\n  ... and {} more", wrong.len() - shown);
    }
    s
}

fn logs(nodes: &[&TestNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("== {}\n{}", n.addr, n.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for the ring of `nodes` to settle and every key in `book` to be right (see [`look`]);
/// checks it is still right [`STILL_RIGHT_AFTER`] later; then stops the nodes and checks what
/// their directories hold.
async fn converge(what: &str, nodes: &mut [&mut TestNode], book: &Book, replicas: usize) {
    let started = Instant::now();
    let live: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    {
        let refs: Vec<&TestNode> = nodes.iter().map(|n| &**n).collect();
        settle(
            &format!("{what}: a settled ring"),
            Duration::from_secs(30),
            &refs,
            || ring_check(&live, 32),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wrong = look(&live, book, replicas).await;
        if wrong.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let refs: Vec<&TestNode> = nodes.iter().map(|n| &**n).collect();
            panic!(
                "{what}: {} wrong 20 s after the ring settled:\n  {}\n--- logs ---\n{}",
                wrong.len(),
                report(&wrong),
                logs(&refs)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let right_after = started.elapsed();
    tokio::time::sleep(STILL_RIGHT_AFTER).await;
    let wrong = look(&live, book, replicas).await;
    if !wrong.is_empty() {
        let refs: Vec<&TestNode> = nodes.iter().map(|n| &**n).collect();
        panic!(
            "{what}: right {right_after:?} after the restart, but {} wrong {STILL_RIGHT_AFTER:?} \
             later:\n  {}\n--- logs ---\n{}",
            wrong.len(),
            report(&wrong),
            logs(&refs)
        );
    }
    // What each directory holds: nothing but the keys its node owns or holds copies of, at
    // their last value.
    for n in nodes.iter_mut() {
        n.stop(libc::SIGTERM);
    }
    let mut wrong = Vec::new();
    for n in nodes.iter() {
        let keys = book.0.values().map(|(k, _)| k);
        let held = match held_on_disk(&n.data, keys) {
            Ok(h) => h,
            Err(e) => {
                wrong.push(e);
                continue;
            }
        };
        for (name, (k, want)) in &book.0 {
            let owner = owner_of(&live, k);
            let holds = holders_of(&live, k, replicas).contains(&n.addr);
            let should = if holds { want.as_ref() } else { None };
            let got = held.get(k);
            if got != should {
                let role = if owner == n.addr {
                    "its owner"
                } else if holds {
                    "a replica"
                } else {
                    "not its owner"
                };
                wrong.push(format!(
                    "{name} ({k}) in the directory of {} ({role}): {}, expected {}",
                    n.addr,
                    show(got.map(|v| &v[..])),
                    show(should.map(|v| &v[..]))
                ));
            }
        }
    }
    if !wrong.is_empty() {
        let refs: Vec<&TestNode> = nodes.iter().map(|n| &**n).collect();
        panic!(
            "{what}: the data directories, nodes stopped:\n  {}\n--- logs ---\n{}",
            report(&wrong),
            logs(&refs)
        );
    }
    println!(
        "{what}: every key right {right_after:?} after the restart, still {STILL_RIGHT_AFTER:?} \
         later, and on disk"
    );
}

/// Launches `j` with the fault pause, waits until it stops dead there, SIGKILLs it, and waits
/// until `p` (serving the CON) has aborted it.
async fn kill_at_the_fault(j: &mut TestNode, p: &TestNode, replicas: usize) {
    let from = p.log_text().len();
    j.env = env(true, replicas);
    j.launch();
    j.wait_log(
        &format!("fault point {FAULT} reached"),
        Duration::from_secs(30),
    )
    .await;
    j.stop(libc::SIGKILL);
    j.env = env(false, replicas);
    wait_log_after(p, from, "CON aborted").await;
}

/// A: Q and P in a ring (ids in that order); J (id above P's) joins through P, stops dead after
/// storing the arc and its ring state, before its `T`, and is SIGKILLed. P aborts the CON and
/// keeps the range; there, keys of J's would-be arc are removed and overwritten. J restarts on
/// its directory and address, without the fault, and joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_joiner_killed_before_its_t_brings_back_no_key_removed_meanwhile() {
    a_fresh_joiner(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_fresh_joiner_killed_before_its_t_brings_back_no_key_removed_meanwhile() {
    a_fresh_joiner(2).await;
}

async fn a_fresh_joiner(k: usize) {
    let root = common::temp_root("DELETES_KEEP");
    let mut a = loopback_addrs(3);
    a.sort_by_key(id_of);
    let (qa, pa, ja) = (a[0], a[1], a[2]);
    let mut q = node(root.path(), "q", qa, None, k).await;
    let mut p = node(root.path(), "p", pa, Some(qa), k).await;
    ring_formed(&[&q, &p]).await;
    let mut book = Book::default();
    // In the ring of three: 14 keys J owns (all P's until J joins), 4 P keeps, 4 of Q's.
    let js = names_owned_by("a-j", 14, &a, ja);
    let mut names = js.clone();
    names.extend(names_owned_by("a-p", 4, &a, pa));
    names.extend(names_owned_by("a-q", 4, &a, qa));
    write_all(qa, &names, &mut book).await;

    let mut j = TestNode::new(&root.path().join("j"), ja, &["--join", &pa.to_string()]);
    kill_at_the_fault(&mut j, &p, k).await;
    // P kept the range: 6 keys of J's arc removed, 5 overwritten, 3 left alone.
    let mut c = p.client().await;
    for name in &js[..6] {
        rem_at(&mut c, name, &mut book).await;
    }
    for name in &js[6..11] {
        ins_at(&mut c, name, 2, &mut book).await;
    }
    drop(c);
    j.restart().await;
    converge(
        &format!("A, a fresh joiner, replicas {k}"),
        &mut [&mut q, &mut p, &mut j],
        &book,
        k,
    )
    .await;
}

/// A, the joiner not fresh: J, a member, is SIGKILLed and given up (P adopts Q); at P, keys of
/// J's arc are written (new ones, overwrites of J's). J restarts, joins again through P keeping
/// its entries (not fresh), stops dead before its `T` and is SIGKILLed; P keeps the range and
/// there keys J received in that CON are removed and overwritten. J restarts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_node_killed_before_its_t_brings_back_no_key_removed_meanwhile() {
    a_rejoining_node(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_rejoining_node_killed_before_its_t_brings_back_no_key_removed_meanwhile() {
    a_rejoining_node(2).await;
}

async fn a_rejoining_node(k: usize) {
    let root = common::temp_root("DELETES_KEEP");
    let mut a = loopback_addrs(3);
    a.sort_by_key(id_of);
    let (qa, pa, ja) = (a[0], a[1], a[2]);
    let mut q = node(root.path(), "q", qa, None, k).await;
    let mut p = node(root.path(), "p", pa, Some(qa), k).await;
    let mut j = node(root.path(), "j", ja, Some(pa), k).await;
    ring_formed(&[&q, &p, &j]).await;
    let mut book = Book::default();
    let old = names_owned_by("an-j", 8, &a, ja);
    let new = names_owned_by("an-new", 6, &a, ja);
    let mut names = old.clone();
    names.extend(names_owned_by("an-p", 4, &a, pa));
    names.extend(names_owned_by("an-q", 4, &a, qa));
    write_all(qa, &names, &mut book).await;

    let from = p.log_text().len();
    j.stop(libc::SIGKILL);
    wait_log_after(&p, from, &format!("successor {ja} is dead: adopted")).await;
    // While J is away, P owns its arc: 6 new keys, 4 of J's overwritten.
    let mut c = p.client().await;
    for name in &new {
        ins_at(&mut c, name, 1, &mut book).await;
    }
    for name in &old[..4] {
        ins_at(&mut c, name, 2, &mut book).await;
    }
    drop(c);

    kill_at_the_fault(&mut j, &p, k).await;
    // J holds all of those now, from the CON P aborted. At P: 3 new keys and 2 of the
    // overwritten removed, one of each overwritten again.
    let mut c = p.client().await;
    for name in new[..3].iter().chain(&old[..2]) {
        rem_at(&mut c, name, &mut book).await;
    }
    ins_at(&mut c, &new[3], 2, &mut book).await;
    ins_at(&mut c, &old[2], 3, &mut book).await;
    drop(c);
    j.restart().await;
    converge(
        &format!("A, a rejoining node, replicas {k}"),
        &mut [&mut q, &mut p, &mut j],
        &book,
        k,
    )
    .await;
}

/// B: a ring of four; N is SIGKILLed and given up (its predecessor P adopts a successor past N
/// and owns N's arc, about half a second later with 200 ms rounds and `dead_after` 3). Through P: `k` written again and removed, `r` removed, `o` overwritten, `n`
/// written anew, all in N's arc. N restarts on its directory and address and joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_node_given_up_and_back_brings_back_no_key_removed_while_it_was_away() {
    b_a_node_given_up(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_b_a_node_given_up_and_back_brings_back_no_key_removed_while_it_was_away() {
    b_a_node_given_up(2).await;
}

async fn b_a_node_given_up(replicas: usize) {
    let root = common::temp_root("DELETES_KEEP");
    let env = env(false, replicas);
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut nodes = common::start_ring(root.path(), 4, &env).await;
    ring_formed(&nodes.iter().collect::<Vec<_>>()).await;
    let all: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    let (pa, na) = (all[1], all[2]);
    let mut book = Book::default();
    // N's arc: k, r, o and three left alone; two keys in each other arc.
    let ns = names_owned_by("b-n", 6, &all, na);
    let mut names = ns.clone();
    for (i, &owner) in all.iter().enumerate().filter(|(_, &a)| a != na) {
        names.extend(names_owned_by(&format!("b-{i}"), 2, &all, owner));
    }
    write_all(all[0], &names, &mut book).await;
    let (k, r, o) = (&ns[0], &ns[1], &ns[2]);

    let t = Instant::now();
    let from = nodes[1].log_text().len();
    nodes[2].stop(libc::SIGKILL);
    wait_log_after(&nodes[1], from, &format!("successor {na} is dead: adopted")).await;
    println!("B: P gave N up {:?} after the kill", t.elapsed());
    let mut c = nodes[1].client().await;
    ins_at(&mut c, k, 2, &mut book).await;
    rem_at(&mut c, k, &mut book).await;
    // P does not hold r (N does): a REM there answers F (absent), which acknowledges no
    // removal: r keeps the value its INS stored. A T would be a removal, booked as such.
    let rk = book.key(r);
    match c.rem(&rk).await.unwrap() {
        Status::T => book.set(r, rk, None),
        Status::F => println!("B: REM {r} ({rk}) at P, N away: F (absent there); it keeps v1"),
        s => panic!("REM {r} ({rk}) at {pa}: {s:?}"),
    }
    ins_at(&mut c, o, 2, &mut book).await;
    let n = &names_owned_by("b-new", 1, &all, na)[0];
    ins_at(&mut c, n, 1, &mut book).await;
    drop(c);
    nodes[2].restart().await;
    let mut refs: Vec<&mut TestNode> = nodes.iter_mut().collect();
    converge(
        &format!("B, a node given up and back, replicas {replicas}"),
        &mut refs,
        &book,
        replicas,
    )
    .await;
}

/// A node's INF `tombstones` line.
async fn tombstones_at(addr: PeerAddr) -> u64 {
    let text = Client::connect(addr, AddressEncoding::Compact)
        .await
        .unwrap()
        .inf()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tombstones "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("INF at {addr} has no tombstones line: {text}"))
}

/// A REM leaves a tombstone, invisible to GET, EXI and the key count, and kept for
/// `tombstone_retention_secs`: collected after 2 s on one node, still there after as long on a
/// node that keeps them for a day.
#[tokio::test]
async fn tombstones_are_invisible_and_collected_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs(2);
    let mut nodes = Vec::new();
    for (i, retention) in ["2", "86400"].iter().enumerate() {
        let mut n = TestNode::new(&dir.path().join(format!("n{i}")), addrs[i], &[]);
        n.env.push((
            "DHT_STORE_TOMBSTONE_RETENTION_SECS".into(),
            retention.to_string(),
        ));
        n.restart().await;
        nodes.push(n);
    }
    for n in &nodes {
        let mut c = n.client().await;
        let k = HashKey::of(b"tombstone");
        assert_eq!(c.ins(&k, b"v").await.unwrap(), Status::T);
        assert_eq!(c.rem(&k).await.unwrap(), Status::T);
        assert_eq!(
            c.rem(&k).await.unwrap(),
            Status::F,
            "a second REM finds it absent"
        );
        assert!(matches!(c.get(&k).await.unwrap(), Lookup::Absent));
        assert_eq!(c.exi(&k).await.unwrap(), Status::F);
        assert_eq!(keys_held_at(n.addr).await.unwrap(), 0);
    }
    assert_eq!(tombstones_at(nodes[1].addr).await, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while tombstones_at(nodes[0].addr).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the tombstone of a node keeping them 2 s is still there after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        tombstones_at(nodes[1].addr).await,
        1,
        "a node keeping tombstones for a day collected one"
    );
}
