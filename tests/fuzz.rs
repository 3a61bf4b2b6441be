//! The fuzz targets under plain `cargo test`, on stable: every input of the checked-in corpus
//! (`fuzz/corpus/<target>/`, seeds and what the libFuzzer runs kept, crashes included as
//! regressions) and the seeds written here by the real writers, then a few seeded mutations of
//! each. An input fails the test if its harness panics (a reader panicked, or a property of
//! `tests/fuzzing` broke) or if one allocation while reading it was larger than the harness's
//! bound (a length from the wire or the file was trusted). The longer libFuzzer run is
//! `cargo +nightly fuzz run <target>` (README.md, "Fuzzing").

mod fuzzing;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dht_store::backup;
use dht_store::protocol::{
    AddressEncoding, Connection, HashKey, Limits, PeerAddr, Request, Status,
};
use dht_store::ring::{Peer, RingState};
use dht_store::storage::{Storage, StorageOptions};
use fuzzing::Asked;

/// Counts the largest single allocation of the thread that asks, so that the replay can check
/// that no reader allocates a length it read before checking it.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The largest allocation `f` made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of the checked-in corpus of `target`, by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    // A lost corpus must fail here, not replay nothing.
    assert!(
        files.len() >= 5,
        "{} holds {} files: the corpus is missing",
        dir.display(),
        files.len()
    );
    files
}

/// xorshift64*: the mutations are the same on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Lengths a hostile peer or a damaged file would carry.
const INTERESTING: [u64; 8] = [0, 1, 20, 64, 65, 65_537, 1 << 30, u64::MAX];

/// One seeded change of `input`: a byte flipped or set, a cut, bytes inserted or repeated, or an
/// 8-byte big-endian length overwritten.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(v.len());
        match rng.below(6) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[at] = [0, 0xff, 0x7f, 0x80, b'T', b'N'][rng.below(6)],
            2 => v.truncate(at),
            3 => {
                let n = rng.below(16);
                v.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
            4 if v.len() > at + 8 => {
                let n = INTERESTING[rng.below(INTERESTING.len())];
                v[at..at + 8].copy_from_slice(&n.to_be_bytes());
            }
            _ if !v.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// Runs `check` on every seed, every corpus file and `mutations` mutations of each; fails
/// naming every input that failed (and keeps the failing bytes in `target/fuzz-failures/`).
fn replay(
    target: &str,
    seeds: Vec<(String, Vec<u8>)>,
    mutations: usize,
    check: impl Fn(&[u8]) -> Result<(), String>,
) {
    let started = Instant::now();
    let mut inputs = seeds;
    inputs.extend(corpus(target));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    let mut run = 0usize;
    let mut one = |name: String, bytes: &[u8]| {
        run += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| check(bytes)))
            .unwrap_or_else(|_| Err("panicked (message above)".into()));
        if let Err(why) = outcome {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{target}-{}", failures.len()));
            std::fs::write(&file, bytes).unwrap();
            failures.push(format!("{name}: {why} (input kept in {})", file.display()));
        }
    };
    for (name, bytes) in &inputs {
        one(name.clone(), bytes);
        for m in 0..mutations {
            one(format!("{name} mutation {m}"), &mutate(bytes, &mut rng));
        }
    }
    eprintln!(
        "{target}: {run} inputs ({} corpus and seeds), {} decoded, in {:?}",
        inputs.len(),
        fuzzing::decoded(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{target}: {failures:#?}");
}

/// A wire harness's check: no panic, and no allocation over its bound.
fn wire_check(harness: fn(&[u8])) -> impl Fn(&[u8]) -> Result<(), String> {
    move |bytes| {
        let largest = largest_allocation(|| harness(bytes));
        let bound = fuzzing::wire_allocation_bound(bytes.len());
        if largest > bound {
            return Err(format!(
                "allocated {largest} bytes at once from {} bytes of input (bound {bound})",
                bytes.len()
            ));
        }
        Ok(())
    }
}

#[test]
fn request_frames_corpus() {
    replay(
        "frames",
        frame_seeds(),
        40,
        wire_check(fuzzing::request_frames),
    );
}

#[test]
fn answers_corpus() {
    replay("answers", answer_seeds(), 40, wire_check(fuzzing::answers));
}

/// The archive check: `verify` within its allocation bound, then the `archive` harness.
fn archive_check(scratch: &Path, bytes: &[u8]) -> Result<(), String> {
    let largest = largest_allocation(|| {
        fuzzing::verify_only(bytes, scratch);
    });
    let bound = fuzzing::archive_allocation_bound(bytes.len());
    if largest > bound {
        return Err(format!(
            "verify allocated {largest} bytes at once from {} bytes (bound {bound})",
            bytes.len()
        ));
    }
    fuzzing::archive(bytes, scratch);
    Ok(())
}

#[test]
fn archive_corpus() {
    let scratch = tempfile::tempdir().unwrap();
    let seeds = archive_seeds(scratch.path());
    replay("archive", seeds, 2, |bytes| {
        archive_check(scratch.path(), bytes)
    });
}

#[test]
fn archive_sealed_corpus() {
    let scratch = tempfile::tempdir().unwrap();
    let seeds = sealed_seeds(scratch.path());
    replay("archive_sealed", seeds, 2, |bytes| {
        archive_check(scratch.path(), &fuzzing::seal(bytes))
    });
}

/// The sealing target makes real archives out of their inputs: a real archive, unsealed and
/// sealed again, is itself (else that target would only test its own mistakes).
#[test]
fn sealing_a_real_archive_gives_it_back() {
    let scratch = tempfile::tempdir().unwrap();
    for (name, archive) in archive_seeds(scratch.path()) {
        if name.contains("bad-checksum") {
            continue;
        }
        assert!(
            fuzzing::seal(&fuzzing::unseal(&archive)) == archive,
            "{name}"
        );
    }
}

/// The replay is a real check: an input whose harness panics fails it, and so does an
/// allocation over the bound.
#[test]
fn replay_reports_a_panicking_input() {
    let result = catch_unwind(|| {
        replay("frames", vec![("boom".into(), vec![])], 0, |bytes| {
            if bytes.is_empty() {
                panic!("deliberate");
            }
            Ok(())
        })
    });
    assert!(result.is_err(), "a panicking input went unnoticed");
    let big = wire_check(|_| drop(vec![0u8; 8 << 20]));
    assert!(big(&[0]).is_err(), "an 8 MiB allocation went unnoticed");
}

// ---- Seeds, written with the real writers. ----

/// One field of a seed, written with the writer of its kind.
enum Part {
    Req(Request),
    Val(Vec<u8>),
    Int(u64),
    Addr(PeerAddr),
    Key(HashKey),
    St(Status),
    Raw(Vec<u8>),
}

use Part::*;

/// `parts` as `encoding` puts them on the wire, after a setting byte for `max_value` and
/// `chunk` (and the script bytes `script` when it is `Some`: the answers harness).
fn wire(
    encoding: AddressEncoding,
    max_value: u64,
    chunk: usize,
    script: Option<&[Asked]>,
    parts: &[Part],
) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = rt.block_on(async {
        let mut c = Connection::new(Cursor::new(Vec::new()), encoding, Limits::default());
        for p in parts {
            match p {
                Req(r) => c.write_request(r).await,
                Val(v) => c.write_value(v).await,
                Int(n) => c.write_int(*n).await,
                Addr(a) => c.write_addr(a).await,
                Key(k) => c.write_key(k).await,
                St(s) => c.write_status(*s).await,
                Raw(b) => c.write_raw(b).await,
            }
            .unwrap();
        }
        c.flush().await.unwrap();
        c.get_ref().get_ref().clone()
    });
    let mut out = vec![fuzzing::setting_byte(encoding, max_value, chunk)];
    if let Some(script) = script {
        out.push(script.len() as u8);
        out.extend(script.iter().map(|a| a.byte()));
    }
    out.extend(body);
    out
}

const DEFAULT: u64 = 64 << 20;
const WHOLE: usize = usize::MAX;

fn addr(s: &str) -> PeerAddr {
    s.parse().unwrap()
}

fn key(n: u8) -> HashKey {
    let mut k = [0u8; 20];
    k[0] = n;
    k[19] = n;
    HashKey(k)
}

/// What follows each request on the wire when its exchange goes on (INS's value, the `T` that
/// ends a CON at the server, a DIS's successors and entries).
fn request_with_rest(req: Request) -> Vec<Part> {
    let mut parts = vec![Req(req)];
    match req {
        Request::Ins(_) => parts.push(Val(b"red".to_vec())),
        Request::Con(_) => parts.push(St(Status::T)),
        Request::Dis(_) => parts.extend([
            Addr(addr("127.0.0.1:5001")),
            Addr(addr("127.0.0.2:5002")),
            Int(2),
            Key(key(1)),
            Val(b"one".to_vec()),
            Key(key(2)),
            Val(vec![b'v'; 7 << 10]),
        ]),
        _ => {}
    }
    parts
}

fn every_request() -> Vec<Request> {
    Request::one_of_each(HashKey::of(b"apple"), addr("127.0.0.1:5000")).to_vec()
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for enc in [AddressEncoding::Compact, AddressEncoding::Text] {
        let mut all = Vec::new();
        for req in every_request() {
            let parts = request_with_rest(req);
            seeds.push((
                format!("{enc}-{}", req.name()),
                wire(enc, DEFAULT, WHOLE, None, &parts),
            ));
            all.extend(parts);
        }
        seeds.push((format!("{enc}-all"), wire(enc, DEFAULT, WHOLE, None, &all)));
        seeds.push((
            format!("{enc}-all-bytewise"),
            wire(enc, DEFAULT, 1, None, &all),
        ));
        let ins = |v: Part| vec![Req(Request::Ins(key(9))), v];
        let more = [
            ("ins-empty", DEFAULT, ins(Val(vec![]))),
            ("ins-at-limit", 20, ins(Val(vec![1; 20]))),
            ("ins-over-limit", 20, ins(Val(vec![1; 21]))),
            ("ins-limit-0", 0, ins(Val(vec![1]))),
            ("ins-valsize-max", u64::MAX, ins(Int(u64::MAX))),
            ("ins-over-64k", 65_536, {
                let mut p = ins(Int(65_537));
                p.push(Raw(vec![7; 100]));
                p
            }),
            ("ins-large-truncated", 1 << 20, {
                let mut p = ins(Int(70_000));
                p.push(Raw(vec![7; 100]));
                p
            }),
            ("ins-large-whole", 1 << 20, ins(Val(vec![5; 65_600]))),
            (
                "get-truncated",
                DEFAULT,
                vec![Raw(b"GET\x01\x02\x03\x04\x05".to_vec())],
            ),
            ("command-truncated", DEFAULT, vec![Raw(b"CO".to_vec())]),
            ("unknown-command", DEFAULT, vec![Raw(b"XYZ".to_vec())]),
            (
                "lowercase-command",
                DEFAULT,
                vec![Raw(b"get".to_vec()), Key(key(3))],
            ),
            ("dis-count-max", DEFAULT, {
                let mut p = request_with_rest(Request::Dis(addr("10.0.0.1:7")));
                p[3] = Int(u64::MAX);
                p.truncate(6);
                p
            }),
            ("dis-entry-over-limit", 20, {
                let mut p = request_with_rest(Request::Dis(addr("10.0.0.1:7")));
                p[7] = Val(vec![1; 21]);
                p
            }),
            (
                "con-unspecified",
                DEFAULT,
                request_with_rest(Request::Con(addr("0.0.0.0:0"))),
            ),
            (
                "con-broadcast",
                DEFAULT,
                request_with_rest(Request::Con(addr("255.255.255.255:65535"))),
            ),
        ];
        for (name, limit, parts) in more {
            seeds.push((
                format!("{enc}-{name}"),
                wire(enc, limit, WHOLE, None, &parts),
            ));
        }
    }
    // Text addresses as old peers (or hostile ones) send them: an Int length, then bytes.
    let text = AddressEncoding::Text;
    let con = |len: u64, body: &[u8]| {
        vec![
            Raw(b"CON".to_vec()),
            Int(len),
            Raw(body.to_vec()),
            St(Status::T),
        ]
    };
    let texts: [(&str, Vec<Part>); 8] = [
        ("text-64", con(64, &[b'1'; 64])),
        ("text-65", con(65, &[b'1'; 65])),
        ("text-len-max", con(u64::MAX, b"127.0.0.1:5000")),
        ("text-not-utf8", con(4, &[0xff, 0xfe, b':', b'1'])),
        ("text-port-too-big", con(15, b"127.0.0.1:99999")),
        ("text-port-plus", con(15, b"127.0.0.1:+5000")),
        ("text-ipv6", con(9, b"[::1]:500")),
        ("text-no-port", con(9, b"127.0.0.1")),
    ];
    for (name, parts) in texts {
        seeds.push((name.into(), wire(text, DEFAULT, WHOLE, None, &parts)));
    }
    seeds
}

fn answer_seeds() -> Vec<(String, Vec<u8>)> {
    let s1 = addr("127.0.0.1:5001");
    let s2 = addr("127.0.0.2:5002");
    let range = |n: u64| {
        let mut p = vec![St(Status::T), Addr(s1), Addr(s2), Int(n)];
        for i in 0..n.min(3) {
            p.push(Key(key(i as u8 + 1)));
            p.push(Val(vec![i as u8; 10 * i as usize]));
        }
        p
    };
    let cases: Vec<(&str, Asked, u64, Vec<Part>)> = vec![
        ("pul", Asked::Pul, DEFAULT, vec![St(Status::T)]),
        ("own", Asked::Own, DEFAULT, vec![Addr(s1)]),
        ("abd", Asked::Abd, DEFAULT, vec![Addr(s2)]),
        ("exi-t", Asked::Exi, DEFAULT, vec![St(Status::T)]),
        ("rem-n", Asked::Rem, DEFAULT, vec![St(Status::N)]),
        (
            "ins-tt",
            Asked::Ins,
            DEFAULT,
            vec![St(Status::T), St(Status::T)],
        ),
        (
            "ins-tf",
            Asked::Ins,
            DEFAULT,
            vec![St(Status::T), St(Status::F)],
        ),
        ("ins-n", Asked::Ins, DEFAULT, vec![St(Status::N)]),
        (
            "get-t",
            Asked::Get,
            DEFAULT,
            vec![St(Status::T), Val(b"red".to_vec())],
        ),
        ("get-f", Asked::Get, DEFAULT, vec![St(Status::F)]),
        ("get-n", Asked::Get, DEFAULT, vec![St(Status::N)]),
        (
            "get-over-limit",
            Asked::Get,
            20,
            vec![St(Status::T), Val(vec![0; 21])],
        ),
        (
            "get-valsize-max",
            Asked::Get,
            u64::MAX,
            vec![St(Status::T), Int(u64::MAX)],
        ),
        (
            "get-bad-status",
            Asked::Get,
            DEFAULT,
            vec![Raw(b"X".to_vec())],
        ),
        (
            "inf",
            Asked::Inf,
            DEFAULT,
            vec![Val(b"127.0.0.1:5000 id 00ff keys 3".to_vec())],
        ),
        (
            "inf-not-utf8",
            Asked::Inf,
            DEFAULT,
            vec![Val(vec![0xff, 0xfe])],
        ),
        ("con-t", Asked::Con, DEFAULT, range(3)),
        ("con-count-max", Asked::Con, DEFAULT, range(u64::MAX)),
        ("con-n", Asked::Con, DEFAULT, vec![St(Status::N)]),
        ("dis-t", Asked::Dis, DEFAULT, vec![St(Status::T)]),
    ];
    let mut seeds = Vec::new();
    for enc in [AddressEncoding::Compact, AddressEncoding::Text] {
        let mut script = Vec::new();
        for (name, asked, limit, parts) in &cases {
            let parts: Vec<Part> = parts.iter().map(clone_part).collect();
            seeds.push((
                format!("{enc}-{name}"),
                wire(enc, *limit, WHOLE, Some(&[*asked]), &parts),
            ));
            if *limit == DEFAULT && !name.contains("max") && !name.contains("bad") {
                script.push(*asked);
            }
        }
        script.truncate(16);
        // The answers of the first 16 questions, in order: one connection asking them all.
        let n: usize = script.len();
        let parts: Vec<Part> = cases
            .iter()
            .filter(|(name, _, limit, _)| {
                *limit == DEFAULT && !name.contains("max") && !name.contains("bad")
            })
            .take(n)
            .flat_map(|(_, _, _, p)| p.iter().map(clone_part))
            .collect();
        seeds.push((
            format!("{enc}-all"),
            wire(enc, DEFAULT, WHOLE, Some(&script), &parts),
        ));
        seeds.push((
            format!("{enc}-all-bytewise"),
            wire(enc, DEFAULT, 1, Some(&script), &parts),
        ));
    }
    seeds
}

fn clone_part(p: &Part) -> Part {
    match p {
        Req(r) => Req(*r),
        Val(v) => Val(v.clone()),
        Int(n) => Int(*n),
        Addr(a) => Addr(*a),
        Key(k) => Key(*k),
        St(s) => St(*s),
        Raw(b) => Raw(b.clone()),
    }
}

/// Real archives: the v1 fixture, and v2 ones written by `backup::write_archive` from real
/// data directories (empty; small values with a ring of one; a ring with fingers and a
/// predecessor, a value in pieces), plus a copy of one with its checksum damaged.
fn archive_seeds(scratch: &Path) -> Vec<(String, Vec<u8>)> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-22-entries.backup");
    let mut seeds = vec![("v1-22-entries".to_string(), std::fs::read(fixture).unwrap())];
    let me = addr("127.0.0.1:5000");
    let mut ring = RingState::alone(me);
    ring.successors = vec![
        Peer::new(addr("127.0.0.1:5001")),
        Peer::new(addr("127.0.0.1:5002")),
    ];
    ring.predecessor = Some(Peer::new(addr("127.0.0.1:4999")));
    ring.fingers = vec![
        Peer::new(addr("127.0.0.3:6000")),
        Peer::new(addr("127.0.0.4:6001")),
    ];
    let cases = [
        ("v2-empty", None, vec![]),
        (
            "v2-alone-3",
            Some(RingState::alone(me)),
            vec![
                (key(1), b"one".to_vec()),
                (key(2), vec![]),
                (key(3), b"three".to_vec()),
            ],
        ),
        (
            "v2-ring-pieces",
            Some(ring),
            vec![(key(4), vec![b'p'; 7 << 10]), (key(5), b"x".to_vec())],
        ),
    ];
    for (name, ring, entries) in cases {
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let storage = Storage::open(&dir.path().join("data"), &StorageOptions::default()).unwrap();
        if let Some(ring) = &ring {
            let _ = storage.save_ring(ring).unwrap();
        }
        for (k, v) in entries {
            let _ = storage.insert(&k, v).unwrap();
        }
        let out = dir.path().join("out.backup");
        backup::write_archive(&storage, &out, &|_, _| {}).unwrap();
        seeds.push((name.to_string(), std::fs::read(&out).unwrap()));
    }
    let mut damaged = seeds[2].1.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    seeds.push(("v2-bad-checksum".into(), damaged));
    seeds
}

/// The archive seeds as inputs of the sealing target.
fn sealed_seeds(scratch: &Path) -> Vec<(String, Vec<u8>)> {
    archive_seeds(scratch)
        .into_iter()
        .map(|(name, a)| (name, fuzzing::unseal(&a)))
        .collect()
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-<name>`: run after changing a seed
/// (`cargo test --test fuzz -- --ignored write_seed_corpus`). Not a check.
#[test]
#[ignore]
fn write_seed_corpus() {
    let scratch = tempfile::tempdir().unwrap();
    for (target, seeds) in [
        ("frames", frame_seeds()),
        ("answers", answer_seeds()),
        ("archive", archive_seeds(scratch.path())),
        ("archive_sealed", sealed_seeds(scratch.path())),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
