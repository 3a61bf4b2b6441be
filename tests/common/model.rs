//! The writers of the fault tests and what they were told: a model of acknowledged operations
//! per key, the check of a ring against it, and (issue 17) the check of where the copies of
//! each key are.
//!
//! An INS or REM answered `F`, or not answered, is *unsure*: either outcome is right (an `F`
//! can follow a write whose flush failed, or, with replicas, one a replica did not hold in
//! time while the owner and other replicas did), and the writer leaves the key alone from then
//! on, so that the unsure state stays one of the two that can be read at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dht_store::client::{Client, Lookup, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};

use super::{holders_of, owner_of, Rng};

/// What a key holds after an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Present(Vec<u8>),
    Absent,
}

/// One key's history as the writer saw it.
#[derive(Default)]
pub struct KeyLog {
    /// After the last acknowledged operation (`None`: none was acknowledged).
    pub acked: Option<State>,
    /// Every value an acknowledged INS stored under the key.
    pub values: Vec<Vec<u8>>,
    /// An operation after the last acknowledged one whose answer never came: either state may
    /// be the final one, and the writer leaves the key alone from then on.
    pub unsure: Option<State>,
}

pub type Model = Arc<Mutex<HashMap<HashKey, KeyLog>>>;

/// What a writer did.
#[derive(Default, Debug)]
pub struct Tally {
    pub inserts: u64,
    pub overwrites: u64,
    pub removes: u64,
    pub unanswered: u64,
    /// REMs answered `F`: absent, or not removed everywhere in time (unsure either way).
    pub removes_while_away: u64,
}

/// Books an INS answered `T` (the key was written before, through the model or a writer).
pub fn book_insert(model: &Model, key: HashKey, value: Vec<u8>) {
    let mut m = model.lock().unwrap();
    let log = m.entry(key).or_default();
    log.values.push(value.clone());
    log.acked = Some(State::Present(value));
}

/// Inserts, overwrites and removes its own keys (and those of `present`, keys already
/// written and booked in `model`) through random nodes of `up` until `stop`.
pub async fn writer(
    id: u64,
    seed: u64,
    up: Arc<Mutex<Vec<PeerAddr>>>,
    stop: Arc<AtomicBool>,
    model: Model,
    mut present: Vec<HashKey>,
) -> Tally {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(id));
    let mut tally = Tally::default();
    let mut next = 0u64;
    let mut router: Option<Router> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let r = match router.as_mut() {
            Some(r) => r,
            None => {
                let entries = up.lock().unwrap().clone();
                let entry = entries[rng.below(entries.len() as u64) as usize];
                router.insert(Router::new(entry, AddressEncoding::Compact))
            }
        };
        seq += 1;
        let roll = rng.below(100);
        let (key, is_new) = if present.is_empty() || roll < 45 {
            next += 1;
            (HashKey::of(format!("w{id}-{next}").as_bytes()), true)
        } else {
            (present[rng.below(present.len() as u64) as usize], false)
        };
        let intended = if !is_new && roll >= 80 {
            State::Absent
        } else {
            let mut v = format!("w{id} {key} #{seq}").into_bytes();
            if rng.below(25) == 0 {
                // Some values in pieces (over 6 KiB), so that handoffs move those too.
                v.resize(
                    (8 << 10) + rng.below(8 << 10) as usize,
                    b'a' + (seq % 26) as u8,
                );
            }
            State::Present(v)
        };
        let limit = Duration::from_secs(30);
        let answer = match &intended {
            State::Absent => tokio::time::timeout(limit, r.remove(&key)).await,
            State::Present(v) => tokio::time::timeout(limit, r.put(&key, v)).await,
        };
        let mut m = model.lock().unwrap();
        let log = m.entry(key).or_default();
        match (answer, intended) {
            // `F` to the REM of a key an INS stored. Without replicas: the node that holds it
            // is down, and its predecessor serves the arc without it until it is back, so
            // nothing was removed; or the router's first attempt removed it at a node that
            // died before answering, and its retry found it absent at the next owner (seed 2:
            // a tombstone of the first attempt, durable before the kill, reached the owner
            // later). With replicas also: a replica did not hold the tombstone in time, which
            // the owner and the others may hold. Either is right; the key is left alone from
            // here on.
            (Ok(Ok(false)), State::Absent) => {
                tally.removes_while_away += 1;
                log.unsure = Some(State::Absent);
                present.retain(|k| *k != key);
            }
            (Ok(Ok(true)), State::Absent) => {
                log.acked = Some(State::Absent);
                present.retain(|k| *k != key);
                tally.removes += 1;
            }
            (Ok(Ok(true)), State::Present(v)) => {
                log.values.push(v.clone());
                log.acked = Some(State::Present(v));
                if is_new {
                    present.push(key);
                    tally.inserts += 1;
                } else {
                    tally.overwrites += 1;
                }
            }
            // `F` to an INS, an error or no answer: the outcome is unknown (an F can follow a
            // write whose flush failed, or that a replica did not hold in time). The key is
            // left alone from here on.
            (_, intended) => {
                log.unsure = Some(intended);
                present.retain(|k| *k != key);
                tally.unanswered += 1;
                router = None;
            }
        }
    }
    tally
}

/// What [`verify`] counted.
#[derive(Default, Debug)]
pub struct Verified {
    /// Keys whose last operation was acknowledged (and nothing unsure after it).
    pub acked: u64,
    /// Keys with an unsure operation after the last acknowledged one.
    pub unsure: u64,
    /// Keys read at their owner.
    pub checked: u64,
    /// Keys each owner serves (present).
    pub served: HashMap<PeerAddr, u64>,
}

/// How [`verify`] reads a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// GET at its owner, computed from the ids of the live nodes (`N` there is an error).
    AtOwner,
    /// GET through the ring (`Router`: OWN walk, then GET), from each live node in turn.
    Routed,
}

/// Reads every key at its owner among `live`. `Err` if an acknowledged operation is lost (a
/// key missing, or a value nobody wrote), undone (a key back at a value from before its last
/// acknowledged REM or INS: an older copy won, issue 16), or the ring does not answer yet.
pub async fn verify(
    live: &[PeerAddr],
    model: &HashMap<HashKey, KeyLog>,
) -> Result<Verified, String> {
    verify_by(live, model, Read::AtOwner).await
}

/// [`verify`], reading as `how` says.
pub async fn verify_by(
    live: &[PeerAddr],
    model: &HashMap<HashKey, KeyLog>,
    how: Read,
) -> Result<Verified, String> {
    let mut clients = HashMap::new();
    let mut routers = Vec::new();
    for a in live {
        let c = Client::connect(*a, AddressEncoding::Compact)
            .await
            .map_err(|e| e.to_string())?;
        clients.insert(*a, c);
        routers
            .push(Router::new(*a, AddressEncoding::Compact).with_timeout(Duration::from_secs(10)));
    }
    let mut turn = 0usize;
    let (mut lost, mut undone) = (Vec::new(), Vec::new());
    let mut out = Verified::default();
    for (k, log) in model {
        let owner = owner_of(live, k);
        let seen = match how {
            Read::AtOwner => match clients
                .get_mut(&owner)
                .unwrap()
                .get(k)
                .await
                .map_err(|e| e.to_string())?
            {
                Lookup::Found(v) => State::Present(v),
                Lookup::Absent => State::Absent,
                Lookup::NotMine => return Err(format!("{owner} says it does not own {k}")),
            },
            Read::Routed => {
                turn += 1;
                let r = &mut routers[turn % live.len()];
                match r.get(k).await {
                    Ok(Some(v)) => State::Present(v),
                    Ok(None) => State::Absent,
                    Err(e) => return Err(format!("GET {k} through the ring: {e}")),
                }
            }
        };
        out.checked += 1;
        if log.unsure.is_some() {
            out.unsure += 1;
        } else {
            out.acked += 1;
        }
        if seen != State::Absent {
            *out.served.entry(owner).or_default() += 1;
        }
        let acked = log.acked.clone().unwrap_or(State::Absent);
        let fine: Vec<&State> = std::iter::once(&acked).chain(log.unsure.as_ref()).collect();
        if fine.contains(&&seen) {
            continue;
        }
        let expected = fine
            .iter()
            .map(|s| show(s))
            .collect::<Vec<_>>()
            .join(" or ");
        match &seen {
            State::Present(v) if log.values.contains(v) => undone.push(format!(
                "{k} at {owner}: {} again after {} answered T; expected {expected}",
                show(&seen),
                if acked == State::Absent {
                    "a REM"
                } else {
                    "a later INS"
                },
            )),
            _ => lost.push(format!(
                "{k} at {owner}: {}, expected {expected}",
                show(&seen),
            )),
        }
    }
    let mut wrong = Vec::new();
    if !lost.is_empty() {
        wrong.push(format!(
            "{} acknowledged operations lost, e.g. {}",
            lost.len(),
            lost[..lost.len().min(3)].join("; ")
        ));
    }
    if !undone.is_empty() {
        let removes = undone.iter().filter(|u| u.contains("after a REM")).count();
        wrong.push(format!(
            "{} acknowledged operations undone by an older copy ({removes} REMs, {} overwrites): {}",
            undone.len(),
            undone.len() - removes,
            undone[..undone.len().min(8)].join("; ")
        ));
    }
    if !wrong.is_empty() {
        return Err(wrong.join("\n"));
    }
    Ok(out)
}

pub fn show(s: &State) -> String {
    match s {
        State::Present(v) if v.len() > 64 => format!("a value of {} bytes", v.len()),
        State::Present(v) => format!("{:?}", String::from_utf8_lossy(v)),
        State::Absent => "absent".into(),
    }
}

/// An entry as VGT shows it: `None` nothing, `Some((version, None))` a tombstone.
pub type Entry = Option<(u64, Option<Vec<u8>>)>;

fn live_value(e: &Entry) -> Option<&Vec<u8>> {
    e.as_ref().and_then(|(_, v)| v.as_ref())
}

/// The entry of `key` at each node of `live` (VGT: what a node holds, owner or not).
pub async fn entries_at(
    clients: &mut [(PeerAddr, Client)],
    key: &HashKey,
) -> Result<HashMap<PeerAddr, Entry>, String> {
    let mut out = HashMap::new();
    for (a, c) in clients.iter_mut() {
        let e = c.vgt(key).await.map_err(|e| format!("VGT at {a}: {e}"))?;
        out.insert(*a, e);
    }
    Ok(out)
}

/// Connections to every node of `live`.
pub async fn clients(live: &[PeerAddr]) -> Result<Vec<(PeerAddr, Client)>, String> {
    let mut out = Vec::new();
    for a in live {
        let c = Client::connect(*a, AddressEncoding::Compact)
            .await
            .map_err(|e| format!("connect {a}: {e}"))?;
        out.push((*a, c));
    }
    Ok(out)
}

/// What [`copies_right`] saw.
#[derive(Default, Debug)]
pub struct Copies {
    /// Keys whose owner holds a value.
    pub present: u64,
    /// Live copies counted at every node (the owner's included).
    pub copies: u64,
}

/// One look at where the entries of `keys` are among `live` with `k` replicas: every key whose
/// owner holds a value is held by each of its holders ([`holders_of`]) with the owner's
/// version and value; a key the owner does not hold (absent or a tombstone) has no value at any
/// holder; and no other node holds a value of it (a copy not dropped). `Err` names what is not
/// so (the first few of each kind, and how many).
pub async fn copies_right(
    live: &[PeerAddr],
    keys: impl IntoIterator<Item = &HashKey>,
    k: usize,
) -> Result<Copies, String> {
    let mut clients = clients(live).await?;
    let mut out = Copies::default();
    let (mut missing, mut stale, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for key in keys {
        let holders = holders_of(live, key, k);
        let owner = holders[0];
        let at = entries_at(&mut clients, key).await?;
        let want = &at[&owner];
        let want_value = live_value(want);
        if want_value.is_some() {
            out.present += 1;
        }
        for (a, e) in &at {
            let v = live_value(e);
            if v.is_some() {
                out.copies += 1;
            }
            if !holders.contains(a) {
                if v.is_some() {
                    extra.push(format!("{key} at {a} (holders {holders:?})"));
                }
                continue;
            }
            match (want_value, v) {
                (None, None) => {}
                (Some(_), None) => missing.push(format!("{key} at {a} (owner {owner})")),
                (None, Some(_)) => stale.push(format!(
                    "{key} at {a}: a value the owner {owner} does not hold ({want:?})"
                )),
                (Some(w), Some(v)) => {
                    let (wv, gv) = (want.as_ref().unwrap().0, e.as_ref().unwrap().0);
                    if w != v || wv != gv {
                        stale.push(format!(
                            "{key} at {a}: version {gv}, the owner {owner} has {wv}"
                        ));
                    }
                }
            }
        }
    }
    let mut wrong = Vec::new();
    for (what, list) in [
        ("copies missing at a holder", &missing),
        ("copies that differ from the owner's", &stale),
        ("values at a node that should not hold the key", &extra),
    ] {
        if !list.is_empty() {
            wrong.push(format!(
                "{} {what}, e.g. {}",
                list.len(),
                list[..list.len().min(3)].join("; ")
            ));
        }
    }
    if wrong.is_empty() {
        Ok(out)
    } else {
        Err(wrong.join("\n"))
    }
}
