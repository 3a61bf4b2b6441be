//! The fuzz harnesses, shared by the libFuzzer targets in `fuzz/` (which include this file with
//! `#[path]`) and by `tests/fuzz.rs`, which replays the checked-in corpus under `cargo test`.
//!
//! Each harness takes arbitrary bytes and drives the real reader over them the way the node,
//! the client or `dht-store verify`/`restore` does. A harness panics only when a property the
//! code promises fails (a value over the limit read, a decoded request that does not read back
//! as itself, a failed restore that left files behind); everything else is the reader's own
//! behaviour on hostile input, which must be an `Err`, never a panic or a hang.
//!
//! Input layout of the two wire harnesses: byte 0 picks the setting (bit 0 the address
//! encoding, bits 1–3 the value limit, bits 4–6 how many bytes each read of the stream gets);
//! the rest is what the peer sent.

#![allow(dead_code)] // Each includer uses some of it.

use std::cell::Cell;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use dht_store::backup::MAGIC;
use dht_store::protocol::{
    is_peer_address, AddressEncoding, Connection, HashKey, Limits, Request, Status,
};
use dht_store::storage::{Storage, StorageOptions};
use dht_store::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The value limits a harness may run with: 0, tiny, around the reader's 64 KiB switch from
/// exact to growing reads, the default 64 MiB, and no limit at all (an operator may set any).
const VALUE_LIMITS: [u64; 8] = [0, 1, 20, 65_536, 65_537, 1 << 20, 64 << 20, u64::MAX];
/// Bytes handed over per read of the stream: short reads must not change what is decoded.
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 64, 512, 8192, usize::MAX];

/// The largest single allocation a wire harness may make for an input of `len` bytes: the
/// reader allocates a value of up to 64 KiB at its checked size, a larger one 1 MiB at a time
/// as its bytes arrive (so at most about twice what arrived), and 8 KiB buffers. Anything
/// beyond means a length from the wire was trusted.
pub fn wire_allocation_bound(len: usize) -> usize {
    (1 << 20) + (64 << 10) + 2 * len
}

/// The setting byte 0 selects.
pub fn setting(b: u8) -> (AddressEncoding, u64, usize) {
    let encoding = if b & 1 == 0 {
        AddressEncoding::Compact
    } else {
        AddressEncoding::Text
    };
    (
        encoding,
        VALUE_LIMITS[usize::from(b >> 1) & 7],
        CHUNKS[usize::from(b >> 4) & 7],
    )
}

/// The byte 0 that selects `encoding`, the value limit `max_value` and reads of `chunk`
/// bytes (each must be one of `VALUE_LIMITS` and `CHUNKS`).
pub fn setting_byte(encoding: AddressEncoding, max_value: u64, chunk: usize) -> u8 {
    let enc = u8::from(encoding == AddressEncoding::Text);
    let limit = VALUE_LIMITS.iter().position(|l| *l == max_value);
    let chunk = CHUNKS.iter().position(|c| *c == chunk);
    let (Some(limit), Some(chunk)) = (limit, chunk) else {
        panic!("no setting for a limit of {max_value} and reads of {chunk:?}");
    };
    enc | (limit as u8) << 1 | (chunk as u8) << 4
}

/// A peer's side of a connection: it sends `input`, `chunk` bytes per read, then closes;
/// whatever we write is kept.
struct Wire {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
    written: Vec<u8>,
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.input.len() - self.at)
            .min(self.chunk)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn connection(
    input: &[u8],
    encoding: AddressEncoding,
    max_value: u64,
    chunk: usize,
) -> Connection<Wire> {
    let wire = Wire {
        input: input.to_vec(),
        at: 0,
        chunk,
        written: Vec::new(),
    };
    Connection::new(
        wire,
        encoding,
        Limits {
            max_value,
            ..Limits::default()
        },
    )
}

thread_local! {
    /// One runtime per thread (the connection's timeouts need tokio's timer), reused by every
    /// input: building one per input would cost more than the decoding.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    /// Requests and answers decoded on this thread, for the replay's report.
    static DECODED: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` to its end in one poll. Every byte of the input is there from the start, so a
/// reader that waits (for a timer, for bytes that will never come) would hang a real
/// connection until its timeout: that is a failure too.
fn run_to_end<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| {
        let _entered = rt.enter();
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the reader waited although the whole input was there"),
        }
    })
}

/// Requests and answers decoded on this thread so far.
pub fn decoded() -> u64 {
    DECODED.with(|d| d.get())
}

fn count() {
    DECODED.with(|d| d.set(d.get() + 1));
}

/// A value the reader handed back must respect the limit it was given.
fn check_value(v: &[u8], max_value: u64) {
    assert!(
        v.len() as u64 <= max_value,
        "a value of {} bytes was read with a limit of {max_value}",
        v.len()
    );
}

/// The node's side: requests as `node/server.rs` reads them, and what each command's handler
/// reads after its first answer (INS's value, the status that ends a CON served, the
/// successors and entries of a DIS received, as `handoff/dis.rs` and `handoff/stream.rs` read
/// them). Every request decoded is written again with the real writer and must read back as
/// itself.
pub fn request_frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let (encoding, max_value, chunk) = setting(first);
    run_to_end(async {
        let mut conn = connection(stream, encoding, max_value, chunk);
        // Ends: each turn consumes at least the 3 bytes of a command, or fails.
        while let Ok(Some(req)) = conn.read_request().await {
            count();
            rewrite_and_read_back(&req, encoding).await;
            let served = match req {
                Request::Ins(_) => match conn.read_value().await {
                    Ok(v) => {
                        check_value(&v, max_value);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Request::Con(_) => conn.read_status().await.map(drop),
                Request::Dis(_) => receive_range(&mut conn, max_value).await,
                _ => Ok(()),
            };
            if let Err(e) = served {
                if matches!(e, Error::ValueTooLarge { .. }) {
                    // What the node does (PROTOCOL.md 5): F, then close.
                    let _ = conn.write_status(Status::F).await;
                    let _ = conn.flush().await;
                }
                return;
            }
            if conn.write_status(Status::T).await.is_err() || conn.flush().await.is_err() {
                return;
            }
        }
    });
}

/// `req` written by `Connection::write_request` reads back as `req`, and nothing more.
async fn rewrite_and_read_back(req: &Request, encoding: AddressEncoding) {
    let mut out = connection(&[], encoding, 0, usize::MAX);
    out.write_request(req).await.expect("writing to memory");
    let bytes = out.get_ref().written.clone();
    let mut back = connection(&bytes, encoding, 0, usize::MAX);
    assert_eq!(back.read_request().await.ok().flatten().as_ref(), Some(req));
    assert!(matches!(back.read_request().await, Ok(None)));
}

/// The receiving end of a range (CON's joiner after its `T`, DIS's predecessor): the two
/// successors, the count, then every entry, as the node reads them. The count comes from the
/// wire: the loop ends anyway, as each entry consumes at least 20 bytes or fails.
async fn receive_range(conn: &mut Connection<Wire>, max_value: u64) -> dht_store::Result<()> {
    let s1 = conn.read_addr().await?;
    let s2 = conn.read_addr().await?;
    // The node refuses these (`walk::checked`); asking must not panic either.
    let _ = (is_peer_address(&s1), is_peer_address(&s2));
    let n = conn.read_int().await?;
    for _ in 0..n {
        let _key: HashKey = conn.read_key().await?;
        let len = conn.read_value_len().await?;
        assert!(
            len <= max_value,
            "valSize {len} passed a limit of {max_value}"
        );
        let v = conn.read_value_bytes(len).await?;
        assert_eq!(
            v.len() as u64,
            len,
            "a value read whole has its announced length"
        );
        count();
    }
    Ok(())
}

/// What the asking side had sent, so which answer it reads next.
#[derive(Clone, Copy, Debug)]
pub enum Asked {
    Pul,
    Own,
    Abd,
    Exi,
    Rem,
    /// INS: a status, and after a `T` (and the value sent) a second one.
    Ins,
    Get,
    Inf,
    /// CON at the joiner: a status, after a `T` the successors and the entries.
    Con,
    /// DIS at the leaver: a status.
    Dis,
}

const ASKED: [Asked; 10] = [
    Asked::Pul,
    Asked::Own,
    Asked::Abd,
    Asked::Exi,
    Asked::Rem,
    Asked::Ins,
    Asked::Get,
    Asked::Inf,
    Asked::Con,
    Asked::Dis,
];

impl Asked {
    /// The script byte that selects this question.
    pub fn byte(self) -> u8 {
        // Declared in the order of `ASKED`.
        self as u8
    }
}

/// The asking side (`client.rs`, the node's walks and handoffs): answers read as each of them
/// reads them. Input: byte 0 the setting; byte 1 the length k (mod 17) of a script of
/// questions, then k bytes each naming one (`ASKED`), asked in turn and round again; the rest
/// is what the peer answered.
pub fn answers(data: &[u8]) {
    let [first, k, rest @ ..] = data else {
        return;
    };
    let (encoding, max_value, chunk) = setting(*first);
    let k = usize::from(*k % 17).min(rest.len());
    let (script, stream) = rest.split_at(k);
    let script: Vec<Asked> = if script.is_empty() {
        vec![Asked::Get]
    } else {
        script
            .iter()
            .map(|b| ASKED[usize::from(*b) % ASKED.len()])
            .collect()
    };
    run_to_end(async {
        let mut conn = connection(stream, encoding, max_value, chunk);
        // Ends: every answer consumes at least one byte, or fails.
        for asked in script.iter().cycle() {
            if read_answer(&mut conn, *asked, max_value).await.is_err() {
                return;
            }
            count();
        }
    });
}

async fn read_answer(
    conn: &mut Connection<Wire>,
    asked: Asked,
    max_value: u64,
) -> dht_store::Result<()> {
    match asked {
        Asked::Pul | Asked::Exi | Asked::Rem | Asked::Dis => {
            conn.read_status().await?;
        }
        Asked::Own | Asked::Abd => {
            let a = conn.read_addr().await?;
            let _ = is_peer_address(&a);
        }
        Asked::Ins => {
            if conn.read_status().await? == Status::T {
                conn.read_status().await?;
            }
        }
        Asked::Get => {
            if conn.read_status().await? == Status::T {
                check_value(&conn.read_value().await?, max_value);
            }
        }
        Asked::Inf => {
            let v = conn.read_value().await?;
            check_value(&v, max_value);
            let _ = String::from_utf8(v);
        }
        Asked::Con => {
            if conn.read_status().await? == Status::T {
                receive_range(conn, max_value).await?;
            }
        }
    }
    Ok(())
}

/// `dht-store verify` and `restore` of arbitrary bytes, in a directory of their own under
/// `scratch`. verify and restore must agree; a restore that fails must leave the directory as
/// it found it (the archive alone); one that succeeds must put exactly the target there.
/// The largest single allocation `verify` may make for an archive of `len` bytes: its 1 MiB
/// read buffer, a header of at most 1 MiB, and a value grown 1 MiB at a time as its bytes
/// arrive (at most about twice what the file holds).
pub fn archive_allocation_bound(len: usize) -> usize {
    (2 << 20) + (64 << 10) + 2 * len
}

/// `verify` alone over `data` (in a file under `scratch`), for measuring what it allocates.
pub fn verify_only(data: &[u8], scratch: &Path) -> bool {
    let dir = tempfile::tempdir_in(scratch).expect("a scratch directory");
    let file = dir.path().join("a.backup");
    std::fs::write(&file, data).expect("writing the archive");
    dht_store::backup::verify(&file, &|_, _| {}).is_ok()
}

pub fn archive(data: &[u8], scratch: &Path) {
    let dir = tempfile::tempdir_in(scratch).expect("a scratch directory");
    let file = dir.path().join("a.backup");
    std::fs::write(&file, data).expect("writing the archive");
    let verified = dht_store::backup::verify(&file, &|_, _| {});
    let target = dir.path().join("restored");
    let restored = dht_store::backup::restore(&file, &target, false, &|_, _| {});
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("listing the scratch directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    match (&verified, &restored) {
        (Ok(v), Ok(r)) => {
            count();
            assert_eq!((v.entries, v.bytes), (r.entries, r.bytes));
            assert_eq!(names, ["a.backup", "restored"], "after a restore");
            // What a restore puts in place, a node can start on: it opens, with every entry
            // and a readable ring state.
            let storage = reopen(&target);
            assert_eq!(storage.count().expect("counting"), r.entries);
            storage
                .load_ring()
                .unwrap_or_else(|e| panic!("the restored ring state is unreadable: {e}"));
        }
        (Err(_), Err(_)) => assert_eq!(names, ["a.backup"], "after a failed restore"),
        _ => panic!(
            "verify and restore disagree: verify {:?}, restore {:?}",
            verified.map(|s| s.entries),
            restored.map(|s| s.entries)
        ),
    }
}

/// Opens a directory `restore` just put in place. sled's background I/O jobs may still hold
/// its log file, and the lock on it, for a moment after `restore` returned (found by the
/// archive_sealed run, BENCHMARKS.md, "Fuzzing"): a node starts in a process of its own, after
/// `dht-store restore` exited, so the lock is waited for here, up to 2 s; a lock held longer
/// is a leak, and fails.
fn reopen(target: &Path) -> Storage {
    let mut tries = 0;
    loop {
        match Storage::open(target, &StorageOptions::default()) {
            Ok(s) => return s,
            Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the restored directory does not open: {e}"),
        }
    }
}

/// [`archive`] over an archive whose framing is right whatever the input: the input gives the
/// version (byte 0: 0, 1 or 2 for versions 1 to 3, and on modulo 3), the header (a u16 length, then that many bytes) and the entries'
/// bytes (the rest); the header's length, the trailer's count (the header's own, when it is
/// long enough to hold one) and the checksum are computed here. Random bytes almost never
/// carry a matching SHA-256, so without this only the seeds would reach what a restore does
/// after the checksum (the ring state it saves, the rename): a damaged or hostile archive
/// whose checksum was made to match must still be refused or restored whole.
pub fn archive_sealed(data: &[u8], scratch: &Path) {
    archive(&seal(data), scratch)
}

/// The archive [`archive_sealed`] makes of `data`.
pub fn seal(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let [v, h0, h1, rest @ ..] = data else {
        return Vec::new();
    };
    let version = u32::from(v % 3) + 1;
    let h = usize::from(u16::from_be_bytes([*h0, *h1])).min(rest.len());
    let (header, entries) = rest.split_at(h);
    // Header: ..., entries u64, created_unix_secs u64 (fixed-width bincode).
    let count = header
        .len()
        .checked_sub(16)
        .map(|at| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes")))
        .unwrap_or(0);
    let digest = if version == 1 {
        sha2::Sha256::digest(entries).to_vec()
    } else {
        xxhash_rust::xxh3::xxh3_128(entries).to_be_bytes().to_vec()
    };
    let mut sum = sha2::Sha256::new();
    sum.update(MAGIC);
    sum.update(version.to_be_bytes());
    sum.update((header.len() as u32).to_be_bytes());
    sum.update(header);
    sum.update(&digest);
    let mut out = MAGIC.to_vec();
    out.extend(version.to_be_bytes());
    out.extend((header.len() as u32).to_be_bytes());
    out.extend(header);
    out.extend(entries);
    out.extend(b"DHTEND\0\0");
    out.extend(count.to_be_bytes());
    out.extend(sum.finalize());
    out
}

/// The input of [`archive_sealed`] that seals into `archive` (a well-formed one: the inverse of
/// [`seal`] for seeds).
pub fn unseal(archive: &[u8]) -> Vec<u8> {
    let version = u32::from_be_bytes(archive[16..20].try_into().expect("a version"));
    let h = u32::from_be_bytes(archive[20..24].try_into().expect("a header length")) as usize;
    let end = archive.len() - 48;
    let mut out = vec![(version - 1) as u8];
    out.extend((h as u16).to_be_bytes());
    out.extend(&archive[24..end]);
    out
}
