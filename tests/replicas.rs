//! Issue 17, K-safety, with real processes on real sled directories over real TCP: every entry
//! on its owner and its K predecessors (`replicas` = 2 here), so that
//!
//! - two adjacent nodes can die for good, directories and all, under a writer, and every
//!   acknowledged write is still served by its owner afterwards
//!   ([`two_adjacent_nodes_die_with_their_disks_and_nothing_is_lost`]);
//! - a node that joins between an owner and its predecessors ends with full copies of the arcs
//!   it now holds for its successors, the node that no longer needs them drops them only after,
//!   and no key has fewer than K + 1 copies meanwhile
//!   ([`a_joiner_between_an_owner_and_its_predecessors_gets_full_copies_and_the_old_holder_drops_them_after`]);
//! - a replica that was away while its arcs took 10,000 writes and deletes catches up moving
//!   about what changed, not the arcs
//!   ([`a_replica_that_was_away_catches_up_moving_what_changed_not_the_arc`]).
//!
//! The randomised run (kills, disk losses, joins, leaves under writers) is `tests/faults.rs`,
//! in its replicated mode. Each test prints what it measured; `REPLICAS_KEEP=1` keeps the data
//! directories and logs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::{book_insert, copies_right, verify_by, writer, Model, Read};
use common::{holders_of, owner_of, ring_check, settle, start_ring, wait_serving, TestNode};
use dht_store::client::{Client, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::{id_of, in_arc};

/// K, the copies of each entry besides its owner's.
const K: usize = 2;

/// Every node of these tests: K replicas, misplaced entries handed on within seconds, and
/// anti-entropy every 2 s (besides the runs after ring changes).
const ENV: &[(&str, &str)] = &[
    ("DHT_STORE_REPLICAS", "2"),
    ("DHT_STORE_REPAIR_INTERVAL_SECS", "2"),
    ("DHT_STORE_SYNC_INTERVAL_SECS", "2"),
];

fn env() -> Vec<(String, String)> {
    ENV.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn addrs(nodes: &[&TestNode]) -> Vec<PeerAddr> {
    nodes.iter().map(|n| n.addr).collect()
}

async fn ring_formed(what: &str, nodes: &[&TestNode], limit: Duration) -> Duration {
    let live = addrs(nodes);
    settle(what, limit, nodes, || ring_check(&live, 32)).await
}

/// The INF line `sync moved in E entries B bytes, out E entries B bytes` (cumulative since the
/// node started): `(in entries, in bytes, out entries, out bytes)`.
fn sync_moved(text: &str) -> Option<(u64, u64, u64, u64)> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("sync moved in "))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [ie, ib, oe, ob] => Some((ie, ib, oe, ob)),
        _ => None,
    }
}

/// Writes `count` keys `prefix-i` with values of `size` bytes through the ring, `tasks` at a
/// time; every INS must answer `T` (nothing is failing). The keys and values, by key.
async fn preload(
    entry: &[PeerAddr],
    prefix: &str,
    count: usize,
    size: usize,
    tasks: usize,
) -> BTreeMap<HashKey, Vec<u8>> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let entry = entry[t % entry.len()];
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            let mut r = Router::new(entry, AddressEncoding::Compact);
            let mut out = Vec::new();
            for i in (t..count).step_by(tasks) {
                let name = format!("{prefix}-{i}");
                let k = HashKey::of(name.as_bytes());
                let mut v = format!("{name} v1 ").into_bytes();
                v.resize(size.max(v.len()), b'a' + (i % 26) as u8);
                let stored = r.put(&k, &v).await;
                assert!(
                    matches!(stored, Ok(true)),
                    "INS {name} ({k}) through {entry}: {stored:?}"
                );
                out.push((k, v));
            }
            out
        }));
    }
    let mut all = BTreeMap::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Waits until the copies of `keys` are where they belong among `live` (see
/// [`copies_right`]); the time it took.
async fn copies_settle(
    what: &str,
    live: &[PeerAddr],
    keys: &[HashKey],
    nodes: &[&TestNode],
    limit: Duration,
) -> Duration {
    settle(what, limit, nodes, || async {
        copies_right(live, keys.iter(), K).await.map(|_| ())
    })
    .await
}

/// Five nodes, K = 2, 500 keys; two writers insert, overwrite and remove (their own keys and
/// the 500) while two nodes adjacent in the ring are SIGKILLed at once and their directories
/// deleted. After the ring of three settles, every acknowledged write is served by its owner
/// (GET at the owner, and through the ring from every node), none undone; then every key is
/// back on K + 1 nodes (all three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_adjacent_nodes_die_with_their_disks_and_nothing_is_lost() {
    let root = common::temp_root("REPLICAS_KEEP");
    let mut nodes = start_ring(root.path(), 5, ENV).await;
    let all: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    ring_formed(
        "a ring of 5",
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .await;
    let t = Instant::now();
    let pre = preload(&all, "pre", 500, 100, 4).await;
    println!("500 keys written in {:?}", t.elapsed());
    let model: Model = Arc::default();
    for (k, v) in &pre {
        book_insert(&model, *k, v.clone());
    }
    // Every key on K + 1 nodes before anything dies.
    let keys: Vec<HashKey> = pre.keys().copied().collect();
    copies_settle(
        "every key on its owner and 2 predecessors",
        &all,
        &keys,
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .await;

    let up = Arc::new(Mutex::new(all.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|id| {
            // Each writer its own half of the 500: one key, one writer (the model's order).
            let mine: Vec<HashKey> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u64 % 2 == id)
                .map(|(_, k)| *k)
                .collect();
            tokio::spawn(writer(
                id,
                17,
                up.clone(),
                stop.clone(),
                model.clone(),
                mine,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Two neighbours: nodes[1] and nodes[2] in id order; the first's ABD names the second.
    let (a, b) = (1, 2);
    let abd = Client::connect(all[a], AddressEncoding::Compact)
        .await
        .unwrap()
        .abd()
        .await
        .unwrap();
    assert_eq!(abd, all[b], "{} and {} are not adjacent", all[a], all[b]);
    *up.lock().unwrap() = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a && *i != b)
        .map(|(_, x)| *x)
        .collect();
    unsafe {
        libc::kill(nodes[a].pid(), libc::SIGKILL);
        libc::kill(nodes[b].pid(), libc::SIGKILL);
    }
    let killed = Instant::now();
    for i in [a, b] {
        nodes[i].stop(libc::SIGKILL);
        std::fs::remove_dir_all(&nodes[i].data).unwrap();
    }
    println!(
        "SIGKILLed {} and {} (adjacent) and deleted their directories",
        all[a], all[b]
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for w in writers {
        tallies.push(w.await.unwrap());
    }
    println!("writers: {tallies:?}");

    let live: Vec<PeerAddr> = up.lock().unwrap().clone();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let took = settle("a ring of 3", Duration::from_secs(60), &refs, || {
        ring_check(&live, 64)
    })
    .await;
    println!(
        "ring of 3 settled {took:?} after the writers stopped ({:?} after the kill)",
        killed.elapsed()
    );
    let model = std::mem::take(&mut *model.lock().unwrap());
    let v = settle(
        "every acknowledged write at its owner",
        Duration::from_secs(30),
        &refs,
        || async { verify_by(&live, &model, Read::AtOwner).await.map(|_| ()) },
    )
    .await;
    let seen = verify_by(&live, &model, Read::Routed)
        .await
        .unwrap_or_else(|e| panic!("through the ring: {e}"));
    println!(
        "every acknowledged write served by its owner {v:?} after the ring settled, and \
         through the ring from each node: {} keys checked, {} acknowledged, {} unsure",
        seen.checked, seen.acked, seen.unsure
    );
    let all_keys: Vec<HashKey> = model.keys().copied().collect();
    let took = copies_settle(
        "every key on the 3 nodes left (K + 1 = 3)",
        &live,
        &all_keys,
        &refs,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "every key back on its owner and 2 predecessors {took:?} after that ({:?} after the \
         kill)",
        killed.elapsed()
    );
}

/// A free address on a loopback host whose id lies in `[from, to)` and leaves at least
/// `min_keys` of `keys` in `[id, to)`, the arc it will own.
fn address_in_arc(from: &HashKey, to: &HashKey, keys: &[HashKey], min_keys: usize) -> PeerAddr {
    for host in 10..=250u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, host);
        for _ in 0..8 {
            let port = common::free_port_on(ip);
            let a = PeerAddr::new(ip, port);
            let id = id_of(&a);
            if in_arc(&id, from, to)
                && keys.iter().filter(|k| in_arc(k, &id, to)).count() >= min_keys
            {
                return a;
            }
        }
    }
    panic!("no loopback address with an id in [{from}, {to}) and {min_keys} keys above it");
}

/// Four nodes, K = 2, keys in every arc. A fifth, J, joins between an owner O and its
/// predecessor P. Throughout, every key must be held (VGT, at every node) by at least K + 1
/// nodes; at the end J holds every key of its arc and of its two successors' (O's and the
/// one after), and the nodes that no longer hold an arc (the third predecessor of its owner:
/// the one before P's predecessor for J's arc, P's predecessor for O's arc, P for the next one)
/// have dropped it, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_between_an_owner_and_its_predecessors_gets_full_copies_and_the_old_holder_drops_them_after(
) {
    let root = common::temp_root("REPLICAS_KEEP");
    let nodes = start_ring(root.path(), 4, ENV).await;
    let four: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    ring_formed("a ring of 4", &refs, Duration::from_secs(30)).await;
    let keys_values = preload(&four, "join", 600, 200, 4).await;
    let keys: Vec<HashKey> = keys_values.keys().copied().collect();
    copies_settle(
        "every key on its owner and 2 predecessors",
        &four,
        &keys,
        &refs,
        Duration::from_secs(30),
    )
    .await;
    let (p, o) = (four[1], four[2]);
    let ja = address_in_arc(&id_of(&p), &id_of(&o), &keys, 10);
    let mut five = four.clone();
    five.push(ja);
    // Who stops holding what (the third predecessor of each arc's owner): J's arc (P's until
    // now) leaves the predecessor of P's predecessor, O's arc leaves P's predecessor, and the
    // arc after O's leaves P.
    let leaves: Vec<(PeerAddr, PeerAddr)> = vec![(ja, four[3]), (o, four[0]), (four[3], p)];
    let per_arc = |owner: PeerAddr| keys.iter().filter(|k| owner_of(&five, k) == owner).count();
    println!(
        "J {ja} joins between P {p} and O {o}: keys in J's arc {}, O's {}, the next {}",
        per_arc(ja),
        per_arc(o),
        per_arc(four[3])
    );
    for (owner, old) in &leaves {
        assert!(
            per_arc(*owner) > 0,
            "no key in the arc of {owner} (holder {old})"
        );
    }

    let mut j = TestNode::new(&root.path().join("j"), ja, &["--join", &p.to_string()]);
    j.env = env();
    j.launch();
    let started = Instant::now();
    // Poll: each key's holders, old nodes first and J last (a copy moves from the old nodes to
    // J, so a key J got after its round asked J is still counted at its old holder).
    let order: Vec<PeerAddr> = four.iter().copied().chain([ja]).collect();
    let chunks = 8;
    let mut min_seen = usize::MAX;
    let mut below: Vec<String> = Vec::new();
    let mut rounds = 0;
    let mut vgt_failed = 0;
    let mut serving_after = None;
    let mut full_after = None;
    let mut dropped_after = None;
    let deadline = Duration::from_secs(90);
    loop {
        let mut handles = Vec::new();
        for c in 0..chunks {
            let mine: Vec<(HashKey, Vec<u8>)> = keys_values
                .iter()
                .enumerate()
                .filter(|(i, _)| i % chunks == c)
                .map(|(_, (k, v))| (*k, v.clone()))
                .collect();
            let order = order.clone();
            handles.push(tokio::spawn(async move {
                let started = started;
                let mut conns: Vec<Option<Client>> = order.iter().map(|_| None).collect();
                let mut counts = Vec::new();
                for (k, v) in mine {
                    let mut holders = Vec::new();
                    let mut unknown = false;
                    for (i, c) in conns.iter_mut().enumerate() {
                        // A connection that failed is opened again, and the key asked again
                        // once: a failed VGT says nothing about the copy (the answer is
                        // unknown, not "absent"), except at J before it listens.
                        let mut answer = None;
                        for _ in 0..2 {
                            if c.is_none() {
                                *c = Client::connect(order[i], AddressEncoding::Compact)
                                    .await
                                    .ok();
                            }
                            let Some(client) = c.as_mut() else { continue };
                            match client.vgt(&k).await {
                                Ok(a) => {
                                    answer = Some(a);
                                    break;
                                }
                                Err(_) => *c = None,
                            }
                        }
                        match answer {
                            Some(Some((_, Some(got)))) if got == v => holders.push(order[i]),
                            Some(_) => {}
                            None if order[i] == ja => {} // J not listening yet
                            None => unknown = true,
                        }
                    }
                    counts.push((k, holders, unknown, started.elapsed()));
                }
                counts
            }));
        }
        let mut holders: HashMap<HashKey, Vec<PeerAddr>> = HashMap::new();
        for h in handles {
            for (k, h, unknown, at) in h.await.unwrap() {
                if unknown {
                    vgt_failed += 1;
                } else {
                    min_seen = min_seen.min(h.len());
                    if h.len() < K + 1 && below.len() < 10 {
                        below.push(format!("{k} on {} nodes only ({h:?}) at +{at:?}", h.len()));
                    }
                }
                holders.insert(k, h);
            }
        }
        rounds += 1;
        if serving_after.is_none() {
            if let Some(child) = j.child.as_mut() {
                if wait_serving(child, ja, Duration::from_millis(1))
                    .await
                    .is_ok()
                {
                    serving_after = Some(started.elapsed());
                }
            }
        }
        if serving_after.is_some() {
            let want_at_j = keys
                .iter()
                .filter(|k| holders_of(&five, k, K).contains(&ja))
                .count();
            let at_j = holders.values().filter(|h| h.contains(&ja)).count();
            if full_after.is_none() && at_j == want_at_j {
                full_after = Some(started.elapsed());
            }
            let still = leaves
                .iter()
                .map(|(owner, old)| {
                    holders
                        .iter()
                        .filter(|(k, h)| owner_of(&five, k) == *owner && h.contains(old))
                        .count()
                })
                .sum::<usize>();
            if dropped_after.is_none() && still == 0 {
                dropped_after = Some(started.elapsed());
            }
            if full_after.is_some() && dropped_after.is_some() {
                break;
            }
            if started.elapsed() > deadline {
                let mut all_refs = refs.clone();
                all_refs.push(&j);
                let logs: Vec<String> = all_refs
                    .iter()
                    .map(|n| format!("== {}\n{}", n.addr, n.log_text()))
                    .collect();
                panic!(
                    "{deadline:?} after J started: J holds {at_j} of the {want_at_j} keys it \
                     should; {still} keys still at the node that no longer holds their arc; \
                     fewest copies seen {min_seen}: {below:?}\n--- logs ---\n{}",
                    logs.join("\n")
                );
            }
        } else if started.elapsed() > Duration::from_secs(30) {
            panic!("J {ja} not serving 30 s after its start: {}", j.log_text());
        }
    }
    println!(
        "J serving after {serving_after:?}; J held every key of its 3 arcs after \
         {full_after:?}; the old holders had dropped theirs after {dropped_after:?}; \
         {rounds} rounds of VGT at every node ({vgt_failed} keys whose VGT failed twice at a \
         node, not counted); fewest copies of a key seen: {min_seen}"
    );
    let mut all_refs = refs.clone();
    all_refs.push(&j);
    if !below.is_empty() {
        let logs: Vec<String> = all_refs
            .iter()
            .map(|n| format!("== {}\n{}", n.addr, n.log_text()))
            .collect();
        panic!(
            "keys on fewer than K + 1 = 3 nodes during the join (ring order {four:?}, J {ja}): \
             {below:?}\n--- logs ---\n{}",
            logs.join("\n")
        );
    }
    // And at rest: every copy the owner's, nowhere else.
    copies_settle(
        "every key on its owner and 2 predecessors, in the ring of 5",
        &five,
        &keys,
        &all_refs,
        Duration::from_secs(30),
    )
    .await;
}

/// Bytes a changed entry stands for: its key, its version and its value (none for a
/// tombstone).
fn entry_bytes(value: Option<&[u8]>) -> u64 {
    20 + 8 + value.map_or(0, |v| v.len() as u64)
}

/// Four nodes, K = 2, 5000 keys of 1 KiB. R, the owner of one arc and a replica of two more, is
/// SIGKILLed; the ring heals (R's predecessor takes R's arc); the three arcs take 10,000 writes
/// and deletes over a few hundred keys; R restarts on its directory and joins again by
/// comparison (VCC: docs/EXTENSIONS.md, `compared-join/1`). Once its copies equal the owners',
/// what comparisons moved to R (its INF `sync moved in ... bytes`: the rejoin's and its
/// copies'; and what the others' `sync moved out` grew by: their comparisons with R) must be
/// at most 4 times the bytes that changed (plus 64 KiB), far below the arcs' size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_away_catches_up_moving_what_changed_not_the_arc() {
    const BASE: usize = 5000;
    const SIZE: usize = 1024;
    const OPS: usize = 10_000;
    const CHANGED_KEYS: usize = 300;
    const TASKS: usize = 8;
    let root = common::temp_root("REPLICAS_KEEP");
    let mut nodes = start_ring(root.path(), 4, ENV).await;
    let four: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    ring_formed(
        "a ring of 4",
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .await;
    let t = Instant::now();
    let base = preload(&four, "base", BASE, SIZE, TASKS).await;
    println!(
        "{BASE} keys of {SIZE} B written in {:?} with K = 2",
        t.elapsed()
    );
    // R = four[1] owns its arc and holds copies of the arcs of four[2] and four[3].
    let r = 1;
    let ra = four[r];
    let arcs = [four[1], four[2], four[3]];
    let in_arcs = |k: &HashKey| arcs.contains(&owner_of(&four, k));
    let base_keys: Vec<HashKey> = base.keys().copied().collect();
    copies_settle(
        "every key on its owner and 2 predecessors",
        &four,
        &base_keys,
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .await;

    nodes[r].stop(libc::SIGKILL);
    let three: Vec<PeerAddr> = four.iter().copied().filter(|a| *a != ra).collect();
    let refs: Vec<&TestNode> = nodes.iter().filter(|n| n.addr != ra).collect();
    let took = ring_formed("the ring of 3", &refs, Duration::from_secs(30)).await;
    println!("R {ra} SIGKILLed; the ring of 3 settled in {took:?}");

    // The keys that change: base keys of the two arcs and as many new ones, split among the
    // tasks (one key, one task).
    let mut changing: Vec<HashKey> = base_keys
        .iter()
        .copied()
        .filter(|k| in_arcs(k))
        .take(CHANGED_KEYS / 2)
        .collect();
    changing.extend(
        (0..)
            .map(|i| HashKey::of(format!("new-{i}").as_bytes()))
            .filter(|k| in_arcs(k))
            .take(CHANGED_KEYS - changing.len()),
    );
    let t = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let mine: Vec<HashKey> = changing.iter().skip(task).step_by(TASKS).copied().collect();
        let entry = three[task % three.len()];
        let before: HashMap<HashKey, Option<Vec<u8>>> =
            mine.iter().map(|k| (*k, base.get(k).cloned())).collect();
        handles.push(tokio::spawn(async move {
            let mut rng = common::Rng::new(task as u64 + 1);
            let mut router = Router::new(entry, AddressEncoding::Compact);
            let mut state = before;
            let mut retried = 0u64;
            for op in 0..OPS / TASKS {
                let k = mine[rng.index(mine.len())];
                let present = state[&k].is_some();
                let value = if present && rng.chance(0.3) {
                    None
                } else {
                    let mut v = format!("{k} op {task}/{op} ").into_bytes();
                    v.resize(SIZE, b'A' + (op % 26) as u8);
                    Some(v)
                };
                // Nothing is failing now: a write answered F (a replica late) is made again.
                let mut tries = 0;
                loop {
                    tries += 1;
                    let done = match &value {
                        Some(v) => router.put(&k, v).await,
                        // A retried REM may find the key removed by the try before.
                        None => router.remove(&k).await.map(|t| t || tries > 1),
                    };
                    match done {
                        Ok(true) => break,
                        other => {
                            retried += 1;
                            assert!(tries < 5, "{k}: {other:?} five times");
                            router = Router::new(entry, AddressEncoding::Compact);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                state.insert(k, value);
            }
            (state, retried)
        }));
    }
    let mut now: HashMap<HashKey, Option<Vec<u8>>> = HashMap::new();
    let mut retried = 0;
    for h in handles {
        let (s, n) = h.await.unwrap();
        now.extend(s);
        retried += n;
    }
    let write_time = t.elapsed();
    // What R's copies miss: each key whose state differs from what R held.
    let mut changed_bytes = 0;
    let mut changed_entries = 0;
    for (k, v) in &now {
        if base.get(k) != v.as_ref() {
            changed_entries += 1;
            changed_bytes += entry_bytes(v.as_deref());
        }
    }
    let mut finals: BTreeMap<HashKey, Option<Vec<u8>>> =
        base.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
    finals.extend(now.clone());
    let arc_bytes: u64 = finals
        .iter()
        .filter(|(k, _)| in_arcs(k))
        .map(|(_, v)| v.as_deref().map_or(0, |v| entry_bytes(Some(v))))
        .sum();
    let arc_entries = finals
        .iter()
        .filter(|(k, v)| in_arcs(k) && v.is_some())
        .count();
    println!(
        "{OPS} writes and deletes over {} keys of R's arc and copied arcs in {write_time:?} ({retried} \
         made again after an F): {changed_entries} entries changed, {changed_bytes} B; the \
         arcs hold {arc_entries} entries, {arc_bytes} B",
        changing.len()
    );

    // What the others have given by comparisons so far: what they give R from now on counts.
    let mut given_before = HashMap::new();
    for a in &three {
        let text = common::inf_at(*a).await.unwrap();
        given_before.insert(*a, sync_moved(&text).map_or(0, |m| m.3));
    }
    let back = Instant::now();
    nodes[r].restart().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    ring_formed("the ring of 4 again", &refs, Duration::from_secs(60)).await;
    // R's copies equal the owners' (and every other copy where it belongs).
    let keys: Vec<HashKey> = finals.keys().copied().collect();
    let took = copies_settle(
        "R's copies equal to the owners'",
        &four,
        &keys,
        &refs,
        Duration::from_secs(120),
    )
    .await;
    let text = common::inf_at(ra).await.unwrap();
    let Some((in_e, in_b, out_e, out_b)) = sync_moved(&text) else {
        panic!("INF at R has no `sync moved` line: {text}");
    };
    let copy_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("copy of ")).collect();
    // The others' comparisons with R push it what it lacks of their arcs (the only copy
    // behind): those bytes count too.
    let mut given = 0;
    for a in &three {
        let text = common::inf_at(*a).await.unwrap();
        given += sync_moved(&text).map_or(0, |m| m.3) - given_before[a];
    }
    println!(
        "R caught up {:?} after its restart (copies checked {took:?} after the ring formed); \
         R's sync moved in {in_e} entries {in_b} B, out {out_e} entries {out_b} B; the others \
         gave {given} B; changed {changed_entries} entries {changed_bytes} B; the arcs \
         {arc_entries} entries {arc_bytes} B; moved to R / changed = {:.2}, moved to R / arcs = \
         {:.3}; {copy_lines:?}",
        back.elapsed(),
        (in_b + given) as f64 / changed_bytes.max(1) as f64,
        (in_b + given) as f64 / arc_bytes.max(1) as f64,
    );
    // R's own arc came back by comparison (counted in that line), not by a stream of the
    // whole arc (VCN), which the line would not count.
    let log = nodes[r].log_text();
    assert!(
        log.contains("under its fence"),
        "R did not join again by comparison; R's log:\n{log}"
    );
    let bound = 4 * changed_bytes + (64 << 10);
    assert!(
        in_b + given <= bound,
        "R's sync moved in {in_b} B and the others gave {given} B for {changed_bytes} B changed \
         (bound {bound} B; the arcs are {arc_bytes} B); R's log:\n{}",
        nodes[r].log_text()
    );
}
