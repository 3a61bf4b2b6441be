//! Backup archives of a node's data directory: one file, written by streaming a point-in-time
//! cut of the entries ([`Storage::begin_cut`]), verified and restored by streaming it back.
//! Memory stays flat whatever the size.
//!
//! # Archive format, version 3
//!
//! ```text
//! magic         16 bytes  b"DHTSTORE-BACKUP\n"
//! version       u32       3 (all integers big-endian)
//! header_len    u32       length of the header that follows
//! header        bincode (big-endian, fixed-width integers) of `Header`: node address and id
//!               (absent for a directory without ring state), the ring state (RingRecord, see
//!               storage/meta.rs), the record count, the creation time
//! records       count × ( HashKey 20 bytes | u64 version | kind ), in increasing key order;
//!               kind: b'V' | u64 value length | value (an entry), or b'X' (a tombstone: the
//!               key was removed at that version)
//! trailer       b"DHTEND\0\0" | u64 count | 32-byte checksum
//! checksum      SHA-256( magic | version | header_len | header | digest(entries) )
//!               digest(entries): XXH3-128 of the entries' bytes, 16 bytes big-endian
//! ```
//!
//! Versions 1 and 2 have no versions or tombstones: each record is `HashKey | u64 value length
//! | value`, restored as unversioned entries (older than any version a live ring holds).
//! Version 1 differs from 2 only in `digest(entries)`, which is SHA-256 there (32 bytes). This
//! build writes version 3 and reads all three. The counts that `verify` and `restore` report
//! are of entries; tombstones are counted apart, as a node counts them. SHA-256 over the entries was a third of a backup's CPU
//! time, XXH3 a small part of it (BENCHMARKS.md, "Figures behind the code"). The entries'
//! digest is there to catch damage, not forgery, and 128 bits of XXH3 miss a random change with
//! odds of 2^-128; the outer SHA-256 still covers header and digest.
//!
//! The entry count is only known once the cut has been streamed, so the writer patches it into
//! the (fixed-length) header at the end; hashing the entries separately lets the checksum still
//! cover every byte of the file but the trailer's own.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::protocol::{HashKey, PeerAddr};
use crate::ring::RingState;
use crate::storage::{
    BatchWrite, Batcher, Import, RingRecord, Storage, StorageOptions, Version, Versioned,
};

pub const MAGIC: &[u8; 16] = b"DHTSTORE-BACKUP\n";
/// The format version written (see the module doc; versions 1 to 3 are read).
pub const VERSION: u32 = 3;
const TRAILER_MAGIC: &[u8; 8] = b"DHTEND\0\0";
/// Largest header accepted when reading (a real one is a few hundred bytes).
const MAX_HEADER: u32 = 1 << 20;
/// Largest value accepted when reading an archive: anything larger is corruption.
const MAX_VALUE: u64 = 1 << 30;
/// Restore writes a batch once it holds this many value bytes.
const BATCH_BYTES: usize = 1 << 20;

/// What an archive says about where it came from.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Header {
    /// The node's advertised address, if the directory held ring state.
    pub address: Option<PeerAddr>,
    /// Its id (SHA-1 of the address), written out for people reading `verify`.
    pub id: Option<[u8; 20]>,
    /// The ring state at the cut.
    pub ring: Option<RingRecord>,
    /// Entries in the archive.
    pub entries: u64,
    /// Seconds since the Unix epoch when the backup began.
    pub created_unix_secs: u64,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
}

/// [`config`] for reading a header: bincode allocates a `Vec` at the length it reads before
/// reading its elements unless a limit is set, so a damaged fingers count (`RingRecord`) asked
/// for petabytes and aborted `verify` and `restore` (found by fuzzing, BENCHMARKS.md). With the
/// limit a count is refused unless its elements could fit in a header.
fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_HEADER as usize }>()
}

/// Totals of an archive written, verified or restored.
#[derive(Clone, Debug)]
pub struct Summary {
    pub header: Header,
    /// Entries (values); the header's count is of records, tombstones included.
    pub entries: u64,
    /// Tombstones (removals, with their versions).
    pub tombstones: u64,
    /// Value bytes.
    pub bytes: u64,
    /// Size of the archive file.
    pub file_bytes: u64,
}

/// What a long archive operation reports as it goes.
pub trait Progress: Sync {
    /// After every entry, with the totals so far (entries, value bytes).
    fn entry(&self, entries: u64, bytes: u64);
    /// A step with no entries to count begins (restore's final sync): shown until the end.
    fn step(&self, _what: &str) {}
}

impl<F: Fn(u64, u64) + Sync> Progress for F {
    fn entry(&self, entries: u64, bytes: u64) {
        self(entries, bytes)
    }
}

/// Where progress goes.
pub type Tick<'a> = &'a dyn Progress;

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Archive(format!(
        "{} is not a valid dht-store backup: {what}",
        path.display()
    ))
}

/// Writes a backup of `storage` to `out`: a point-in-time cut, streamed. The archive is written
/// to `out.partial` and renamed into place only when complete.
pub fn write_archive(storage: &Storage, out: &Path, tick: Tick) -> Result<Summary> {
    let partial = partial_path(out);
    let result = write_partial(storage, &partial, tick);
    match result {
        Ok(summary) => {
            std::fs::rename(&partial, out).map_err(io_at(format!(
                "cannot rename {} into place",
                partial.display()
            )))?;
            // The rename itself must survive a crash too.
            sync_dir(parent_dir(out))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(match e {
                // Reading the node's data fails as Sled errors; Io ones are the archive's.
                Error::Io(io) => Error::Archive(format!("cannot write {}: {io}", out.display())),
                other => other,
            })
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn write_partial(storage: &Storage, path: &Path, tick: Tick) -> Result<Summary> {
    let file = File::create(path)
        .map_err(|e| Error::Archive(format!("cannot create {}: {e}", path.display())))?;
    let mut w = WriterThread::new(file)?;
    storage.begin_cut()?;
    let streamed = stream_cut(storage, &mut w, tick);
    storage.end_cut()?;
    let Streamed {
        header,
        head_final,
        entries: n,
        tombstones,
        bytes,
        entries_digest,
    } = streamed?;
    let checksum = final_checksum(VERSION, &head_final, &entries_digest);
    w.write_all(TRAILER_MAGIC)?;
    w.write_all(&header.entries.to_be_bytes())?;
    w.write_all(&checksum)?;
    let mut file = w.finish()?;
    // Patch the entry count into the header (same length: fixed-width integers).
    file.seek(SeekFrom::Start(24))?;
    file.write_all(&head_final)?;
    file.sync_all()?;
    let file_bytes = file.metadata()?.len();
    Ok(Summary {
        header,
        entries: n,
        tombstones,
        bytes,
        file_bytes,
    })
}

/// Bytes go out in chunks of this size.
const WRITE_CHUNK: usize = 1 << 20;

/// A buffered `Write` whose writes to the file happen on a thread of its own: a backup's scan of
/// sled and its copies into the page cache then run on two CPUs instead of taking turns on one
/// (the `write` calls were a large part of a backup's CPU time). At most four chunks exist at
/// once.
struct WriterThread {
    /// The chunk being filled.
    buf: Vec<u8>,
    /// Full chunks to the thread (two may wait); `None` once finished.
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Written chunks back from the thread, to be filled again instead of allocated.
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    /// The thread: gives the file back when all is written, or the first error.
    thread: Option<std::thread::JoinHandle<std::io::Result<File>>>,
}

impl WriterThread {
    fn new(mut file: File) -> std::io::Result<WriterThread> {
        let (full, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (spare, empty) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("dht-archive-writer".into())
            .spawn(move || {
                for mut chunk in chunks {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    let _ = spare.try_send(chunk);
                }
                Ok(file)
            })?;
        Ok(WriterThread {
            buf: Vec::with_capacity(WRITE_CHUNK),
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    /// Hands the current chunk to the thread.
    fn send(&mut self) -> std::io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(WRITE_CHUNK));
        let chunk = std::mem::replace(&mut self.buf, next);
        let sent = self.full.as_ref().map(|tx| tx.send(chunk).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its error says why.
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| std::io::Error::other("the archive writer stopped")))
    }

    fn join(&mut self) -> std::io::Result<File> {
        self.full = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the archive writer panicked")),
            None => Err(std::io::Error::other("the archive writer already stopped")),
        }
    }

    /// Writes out what is buffered and waits for the thread: the file, all written.
    fn finish(mut self) -> std::io::Result<File> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl Write for WriterThread {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() == WRITE_CHUNK {
            self.send()?;
        }
        let n = data.len().min(WRITE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Nothing to do: [`WriterThread::finish`] is the flush that matters.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

/// What streaming the cut produced.
struct Streamed {
    header: Header,
    /// The header with the final entry count, to patch in.
    head_final: Vec<u8>,
    entries: u64,
    tombstones: u64,
    bytes: u64,
    entries_digest: Vec<u8>,
}

/// The digest of an archive's entries: SHA-256 in format version 1, XXH3-128 from version 2.
enum EntriesDigest {
    Sha256(Box<Sha256>),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl EntriesDigest {
    fn new(version: u32) -> EntriesDigest {
        if version == 1 {
            EntriesDigest::Sha256(Box::default())
        } else {
            EntriesDigest::Xxh3(Box::default())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            EntriesDigest::Sha256(h) => h.update(bytes),
            EntriesDigest::Xxh3(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            EntriesDigest::Sha256(h) => h.finalize().to_vec(),
            EntriesDigest::Xxh3(h) => h.digest128().to_be_bytes().to_vec(),
        }
    }
}

/// Writes magic, version, header and every entry of the active cut; hashes the entries.
fn stream_cut(storage: &Storage, w: &mut impl Write, tick: Tick) -> Result<Streamed> {
    let ring = storage.load_ring()?;
    let mut header = Header {
        address: ring.as_ref().map(|r| r.me.addr),
        id: ring.as_ref().map(|r| r.me.id.0),
        ring: ring.as_ref().map(RingRecord::from),
        entries: 0,
        created_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let head = bincode::encode_to_vec(&header, config())?;
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_be_bytes())?;
    w.write_all(&(head.len() as u32).to_be_bytes())?;
    w.write_all(&head)?;
    let mut hasher = EntriesDigest::new(VERSION);
    let (mut n, mut tombstones, mut bytes) = (0u64, 0u64, 0u64);
    for entry in storage.cut_entries()? {
        let (k, e) = entry?;
        let version = e.version.0.to_be_bytes();
        let mut put = |part: &[u8]| -> Result<()> {
            hasher.update(part);
            w.write_all(part)?;
            Ok(())
        };
        put(&k.0)?;
        put(&version)?;
        match &e.value {
            Some(v) => {
                put(b"V")?;
                put(&(v.len() as u64).to_be_bytes())?;
                put(v)?;
                n += 1;
                bytes += v.len() as u64;
            }
            None => {
                put(b"X")?;
                tombstones += 1;
            }
        }
        tick.entry(n, bytes);
    }
    header.entries = n + tombstones;
    let head_final = bincode::encode_to_vec(&header, config())?;
    Ok(Streamed {
        header,
        head_final,
        entries: n,
        tombstones,
        bytes,
        entries_digest: hasher.finish(),
    })
}

fn final_checksum(version: u32, header: &[u8], entries_digest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(version.to_be_bytes());
    h.update((header.len() as u32).to_be_bytes());
    h.update(header);
    h.update(entries_digest);
    h.finalize().into()
}

/// Reads an archive entry by entry, checking everything it can as it goes; [`Reader::finish`]
/// checks the trailer and the checksum.
pub struct Reader {
    path: PathBuf,
    r: BufReader<File>,
    header: Header,
    header_bytes: Vec<u8>,
    /// The archive's format version (1 to 3).
    version: u32,
    hasher: EntriesDigest,
    /// Records read (entries and tombstones).
    read: u64,
    /// Of those, tombstones.
    tombstones: u64,
    bytes: u64,
    last: Option<HashKey>,
    file_bytes: u64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path)
            .map_err(|e| Error::Archive(format!("cannot open {}: {e}", path.display())))?;
        let meta = file.metadata().map_err(|source| Error::IoAt {
            what: format!("cannot read {}", path.display()),
            source,
        })?;
        if meta.is_dir() {
            return Err(Error::Archive(format!(
                "{} is a directory, not a backup archive",
                path.display()
            )));
        }
        let file_bytes = meta.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 16];
        read_exact(
            &mut r,
            &mut magic,
            path,
            "the file is shorter than the magic number",
        )?;
        if &magic != MAGIC {
            return Err(corrupt(
                path,
                "it does not start with the dht-store backup magic number",
            ));
        }
        let version = u32::from_be_bytes(read_array(&mut r, path, "it ends in its version")?);
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(
                path,
                format!(
                    "format version {version} is not supported (this dht-store reads 1 to {VERSION})"
                ),
            ));
        }
        let len = u32::from_be_bytes(read_array(&mut r, path, "it ends in its header")?);
        if len > MAX_HEADER {
            return Err(corrupt(path, format!("its header claims {len} bytes")));
        }
        let mut header_bytes = vec![0u8; len as usize];
        read_exact(&mut r, &mut header_bytes, path, "it ends inside its header")?;
        let (header, used): (Header, usize) =
            bincode::decode_from_slice(&header_bytes, decode_config())
                .map_err(|e| corrupt(path, format!("its header is unreadable ({e})")))?;
        if used != header_bytes.len() {
            return Err(corrupt(path, "its header has trailing bytes"));
        }
        Ok(Reader {
            path: path.to_path_buf(),
            r,
            header,
            header_bytes,
            version,
            hasher: EntriesDigest::new(version),
            read: 0,
            tombstones: 0,
            bytes: 0,
            last: None,
            file_bytes,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The next record, `None` once the header's count is reached: an entry or a tombstone
    /// with its version (`Version::ZERO` for every entry of an archive before version 3).
    pub fn next_entry(&mut self) -> Result<Option<(HashKey, Versioned<Vec<u8>>)>> {
        if self.read == self.header.entries {
            return Ok(None);
        }
        let at = format!(
            "it ends inside entry {} of {}",
            self.read + 1,
            self.header.entries
        );
        let key = HashKey(read_array(&mut self.r, &self.path, &at)?);
        if self.last.is_some_and(|l| key <= l) {
            return Err(corrupt(
                &self.path,
                format!("entry {} is out of key order", self.read + 1),
            ));
        }
        self.hasher.update(&key.0);
        let version = if self.version >= 3 {
            let v: [u8; 8] = read_array(&mut self.r, &self.path, &at)?;
            let kind: [u8; 1] = read_array(&mut self.r, &self.path, &at)?;
            self.hasher.update(&v);
            self.hasher.update(&kind);
            let version = Version(u64::from_be_bytes(v));
            match &kind {
                b"V" => version,
                b"X" => {
                    self.read += 1;
                    self.tombstones += 1;
                    self.last = Some(key);
                    return Ok(Some((key, Versioned::tombstone(version))));
                }
                _ => {
                    return Err(corrupt(
                        &self.path,
                        format!(
                            "entry {} is of kind {:#04x}, neither V nor X",
                            self.read + 1,
                            kind[0]
                        ),
                    ))
                }
            }
        } else {
            Version::ZERO
        };
        let len_bytes: [u8; 8] = read_array(&mut self.r, &self.path, &at)?;
        let len = u64::from_be_bytes(len_bytes);
        if len > MAX_VALUE {
            return Err(corrupt(
                &self.path,
                format!("entry {} claims a value of {len} bytes", self.read + 1),
            ));
        }
        // Grow as bytes arrive: a corrupt length costs no more than the file holds.
        let mut value = Vec::with_capacity((len as usize).min(1 << 20));
        let got = (&mut self.r).take(len).read_to_end(&mut value)?;
        if got as u64 != len {
            return Err(corrupt(&self.path, at));
        }
        self.hasher.update(&len_bytes);
        self.hasher.update(&value);
        self.read += 1;
        self.bytes += len;
        self.last = Some(key);
        Ok(Some((key, Versioned::value(version, value))))
    }

    /// Checks the trailer (count, checksum) and that nothing follows it.
    pub fn finish(mut self) -> Result<Summary> {
        while self.next_entry()?.is_some() {}
        let magic: [u8; 8] = read_array(&mut self.r, &self.path, "it ends before its trailer")?;
        if &magic != TRAILER_MAGIC {
            return Err(corrupt(
                &self.path,
                "its trailer is missing where the entries end",
            ));
        }
        let count = u64::from_be_bytes(read_array(
            &mut self.r,
            &self.path,
            "it ends inside its trailer",
        )?);
        let sum: [u8; 32] = read_array(&mut self.r, &self.path, "it ends inside its checksum")?;
        if count != self.header.entries {
            return Err(corrupt(
                &self.path,
                format!(
                    "the trailer counts {count} entries, the header {}",
                    self.header.entries
                ),
            ));
        }
        let mut extra = [0u8; 1];
        if self.r.read(&mut extra)? != 0 {
            return Err(corrupt(&self.path, "bytes follow its trailer"));
        }
        let digest = self.hasher.finish();
        if final_checksum(self.version, &self.header_bytes, &digest) != sum {
            return Err(corrupt(
                &self.path,
                "its checksum does not match its contents",
            ));
        }
        Ok(Summary {
            header: self.header,
            entries: self.read - self.tombstones,
            tombstones: self.tombstones,
            bytes: self.bytes,
            file_bytes: self.file_bytes,
        })
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(path, what),
        _ => Error::IoAt {
            what: format!("cannot read {}", path.display()),
            source: e,
        },
    })
}

fn read_array<const N: usize>(r: &mut impl Read, path: &Path, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    read_exact(r, &mut b, path, what)?;
    Ok(b)
}

/// Reads and checks a whole archive.
pub fn verify(path: &Path, tick: Tick) -> Result<Summary> {
    let mut r = Reader::open(path)?;
    // Progress counts records, as the header's count (the bar's total) does.
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some((_, e)) = r.next_entry()? {
        n += 1;
        bytes += e.value.as_ref().map_or(0, |v| v.len() as u64);
        tick.entry(n, bytes);
    }
    r.finish()
}

/// An I/O error naming its object and what was done to it.
fn io_at(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::IoAt { what, source }
}

/// Makes the entries of `dir` (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(format!(
            "cannot sync the directory {}",
            dir.display()
        )))
}

/// The directory `path` lies in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `dir` is missing or an empty directory.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Restores `archive` into the data directory `target`: verified while it is written into a
/// temporary directory beside `target`, which is renamed into place only when all is well. A
/// non-empty `target` is refused unless `force`; a target a node is running on, always.
pub fn restore(archive: &Path, target: &Path, force: bool, tick: Tick) -> Result<Summary> {
    if !is_empty_dir(target)? {
        if !force {
            return Err(Error::Archive(format!(
                "{} is not empty: give --force to replace it",
                target.display()
            )));
        }
        // Refuse to replace the directory of a running node (it holds the lock).
        Storage::open_lock_only(target)?;
    }
    let parent = parent_dir(target).to_path_buf();
    std::fs::create_dir_all(&parent)
        .map_err(io_at(format!("cannot create {}", parent.display())))?;
    let name = target
        .file_name()
        .ok_or_else(|| Error::Archive(format!("{} is not a directory name", target.display())))?
        .to_string_lossy()
        .to_string();
    let temp = parent.join(format!(".{name}.restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    let result = restore_into(archive, &temp, tick);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(e);
        }
    };
    if target.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(target, &old)
            .map_err(io_at(format!("cannot move {} aside", target.display())))?;
        std::fs::rename(&temp, target).map_err(io_at(format!(
            "cannot rename {} into place",
            temp.display()
        )))?;
        std::fs::remove_dir_all(&old).map_err(io_at(format!(
            "cannot remove the replaced {}",
            old.display()
        )))?;
    } else {
        std::fs::rename(&temp, target).map_err(io_at(format!(
            "cannot rename {} into place",
            temp.display()
        )))?;
    }
    sync_dir(&parent)?;
    Ok(summary)
}

/// Reads, checks and writes an archive into `dir`. This thread reads and hashes the archive
/// while the import's thread writes the batches to sled (`storage::Import`, the pipeline of a
/// handoff's receiver too), so that reading overlaps writing.
fn restore_into(archive: &Path, dir: &Path, tick: Tick) -> Result<Summary> {
    let mut reader = Reader::open(archive)?;
    let storage = std::sync::Arc::new(Storage::open(dir, &StorageOptions::default())?);
    // Made durable as a whole below, once it is complete.
    let import = Import::start(storage.clone(), BatchWrite::KeysFirst, None)?;
    let read = (|| -> Result<()> {
        let mut batcher = Batcher::new(BATCH_BYTES);
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some((k, e)) = reader.next_entry()? {
            // Progress counts records, as the header's count (the bar's total) does.
            n += 1;
            bytes += e.value.as_ref().map_or(0, |v| v.len() as u64);
            // Tombstones too: a restored node must not take back a key removed before the cut.
            if let Some(full) = batcher.push(k, e) {
                // A failed writer: its error is reported below.
                import.send_blocking(full)?;
            }
            tick.entry(n, bytes);
        }
        if let Some(last) = batcher.finish() {
            import.send_blocking(last)?;
        }
        Ok(())
    })();
    import.finish()?;
    read?;
    let header = reader.header().clone();
    // Only a complete, intact archive becomes a data directory.
    let summary = reader.finish()?;
    if let Some(rec) = &header.ring {
        let _ = storage.save_ring(&RingState::from(rec))?;
    }
    // Durable as a whole, blob files and directories too (`Storage::flush` ends in a syncfs),
    // before the rename puts it in place.
    tick.step("syncing to disk");
    storage.flush()?;
    drop(storage);
    // The restored directory must not carry the lock file's old pid or a stale socket.
    crate::storage::forget_lock(dir);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header whose fingers count claims 2^48 entries: refused as damaged, where reading it
    /// used to abort the process on an allocation of 1.7 PB.
    #[test]
    fn a_header_with_a_huge_count_is_refused_without_allocating_it() {
        let me: PeerAddr = "127.0.0.1:5000".parse().unwrap();
        let header = Header {
            address: Some(me),
            id: None,
            ring: Some(RingRecord::from(&RingState::alone(me))),
            entries: 0,
            created_unix_secs: 0,
        };
        let mut head = bincode::encode_to_vec(&header, config()).unwrap();
        // No fingers: their count is the u64 before `entries` and `created_unix_secs`.
        let at = head.len() - 24;
        assert_eq!(head[at..at + 8], [0; 8]);
        head[at..at + 8].copy_from_slice(&(1u64 << 48).to_be_bytes());
        let mut file = MAGIC.to_vec();
        file.extend(VERSION.to_be_bytes());
        file.extend((head.len() as u32).to_be_bytes());
        file.extend(&head);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.backup");
        std::fs::write(&path, &file).unwrap();
        let err = verify(&path, &|_, _| {}).unwrap_err();
        assert!(err.to_string().contains("header is unreadable"), "{err}");
    }
}
