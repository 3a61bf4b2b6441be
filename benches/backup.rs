//! Backup, verify and restore throughput for about 1 GiB, beside `cp -r` of the stopped node's
//! data directory, measured in the same run.
//!
//!     cargo bench --bench backup                      # 100k × 10 KiB (about 1 GiB)
//!     BACKUP_ENTRIES=20000 cargo bench --bench backup # smaller
//!     BACKUP_KEEP=1 cargo bench --bench backup        # keep the files, for profiling
//!     BACKUP_ROUNDS=5 cargo bench --bench backup      # rounds (default 3); medians are shown
//!
//!     BACKUP_PRIME=0 cargo bench --bench backup      # without priming the page cache (below)
//!
//! The page cache is warm for every step alike (nothing here can drop it portably), and each
//! step starts after a `sync` (not timed), so that no step pays for the writeback of the
//! gigabytes an earlier one left dirty. Our steps fsync what they write (a backup that is not
//! on disk is no backup); `cp -r` does not, so the table also shows `cp -r` followed by `sync`.
//! Before each step a filler file is written and deleted (not timed; see [`prime`]), so that
//! every step writes into memory in the same state.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dht_store::protocol::{HashKey, PeerAddr};
use dht_store::ring::RingState;
use dht_store::storage::{BatchWrite, Storage, StorageOptions, Version, Versioned};

use common::dht_store_command;
use common::process::Reaped;

const VALUE: usize = 10 * 1024;

/// Writes back everything dirty, so the next step starts from a quiet disk.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Where [`prime`] writes its filler file, and how many bytes; set once the node's directory
/// exists. `None`: priming is off (`BACKUP_PRIME=0`).
static PRIME: OnceLock<Option<(PathBuf, u64)>> = OnceLock::new();

/// Before each step: writes a filler file 1.5 times the node's directory, syncs it and deletes
/// it, so that every step writes into page-cache memory the kernel has just had back.
///
/// Why: on this VM a write into page-cache pages freed moments ago runs several times faster
/// than one into memory the guest has not used lately (measured by hand: the same `cp -r` of
/// the 1.4 GB directory took 0.53 s right after another copy was deleted, 3.97 s after 4 GB
/// more had been written without deleting anything). In a round `cp -r` came first, right after
/// the previous round's files were deleted, and restore last, after ~5 GB of new files: the
/// order of the steps, not their code, decided much of the ratios.
fn prime() {
    let Some(Some((path, bytes))) = PRIME.get() else {
        return;
    };
    let chunk = vec![0xA5u8; 1 << 20];
    let mut f = std::fs::File::create(path).expect("create the filler file");
    let mut left = *bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write the filler file");
        left -= n as u64;
    }
    f.sync_all().expect("sync the filler file");
    drop(f);
    std::fs::remove_file(path).expect("remove the filler file");
}

fn timed(what: &str, cmd: &mut Command) -> Duration {
    prime();
    settle();
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let took = started.elapsed();
    if !out.status.success() {
        eprintln!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    took
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BACKUP_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let root = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("tempdir");
    let dir = root.path().join("node");
    let port = common::free_port();
    let addr = PeerAddr::new([127, 0, 0, 1].into(), port);

    // A stopped node's directory holding n entries of 10 KiB.
    let started = Instant::now();
    {
        let s = Storage::open(&dir, &StorageOptions::default()).expect("open");
        let mut batch = Vec::new();
        let mut keys: Vec<HashKey> = (0..n)
            .map(|i| HashKey::of(&(i as u64).to_be_bytes()))
            .collect();
        keys.sort();
        for (i, k) in keys.into_iter().enumerate() {
            let value = vec![(i % 251) as u8; VALUE];
            batch.push((k, Versioned::value(Version::ZERO, value)));
            if batch.len() == 400 {
                let _ = s
                    .insert_batch(&mut batch, BatchWrite::InPlace)
                    .expect("batch");
            }
        }
        let _ = s
            .insert_batch(&mut batch, BatchWrite::InPlace)
            .expect("batch");
        let _ = s.save_ring(&RingState::alone(addr)).expect("ring");
        s.flush().expect("flush");
    }
    let logical = (n * VALUE) as u64;
    let on_disk = du(&dir);
    let priming = std::env::var("BACKUP_PRIME").map_or(true, |v| v != "0");
    let _ = PRIME.set(priming.then(|| (root.path().join("filler"), on_disk * 3 / 2)));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{n} entries × {VALUE} B = {:.0} MiB of values; data dir {:.0} MiB on disk (made in {:.1?})",
        mib(logical),
        mib(on_disk),
        started.elapsed()
    );

    let rounds: usize = std::env::var("BACKUP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    const STEPS: [&str; 6] = [
        "cp -r (baseline)",
        "cp -r, then sync",
        "backup, stopped node",
        "backup, running node",
        "verify",
        "restore",
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut archive_bytes = 0;
    for round in 0..rounds {
        let r = root.path().join(format!("round-{round}"));
        std::fs::create_dir(&r).expect("round dir");
        times[0].push(timed(
            "cp -r",
            Command::new("cp").arg("-r").arg(&dir).arg(r.join("copy")),
        ));
        times[1].push({
            let took = timed(
                "cp -r",
                Command::new("cp").arg("-r").arg(&dir).arg(r.join("copy2")),
            );
            let started = Instant::now();
            settle();
            took + started.elapsed()
        });
        let archive = r.join("node.backup");
        times[2].push(timed(
            "backup (stopped node)",
            dht_store_command()
                .args(["backup", "--data"])
                .arg(&dir)
                .arg("--out")
                .arg(&archive),
        ));
        archive_bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);

        // Through a running node (the admin socket; a point-in-time cut).
        let _ = std::fs::remove_file(dir.join("admin.sock"));
        let mut node = Reaped::new(
            "dht-store",
            dht_store_command()
                .arg("--data")
                .arg(&dir)
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("admin.sock").exists() {
            assert!(Instant::now() < deadline, "node did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times[3].push(timed(
            "backup (running node)",
            dht_store_command()
                .args(["backup", "--data"])
                .arg(&dir)
                .arg("--out")
                .arg(r.join("live.backup")),
        ));
        // A clean stop, so that the next round's stopped-node backup finds the lock free.
        node.stop();

        times[4].push(timed(
            "verify",
            dht_store_command().arg("verify").arg(&archive),
        ));
        times[5].push(timed(
            "restore",
            dht_store_command()
                .args(["restore", "--from"])
                .arg(&archive)
                .arg("--data")
                .arg(r.join("restored")),
        ));
        if std::env::var_os("BACKUP_KEEP").is_none() || round + 1 < rounds {
            std::fs::remove_dir_all(&r).expect("clean round");
        }
    }

    let median = |ts: &[Duration]| {
        let mut ts = ts.to_vec();
        ts.sort();
        ts[ts.len() / 2]
    };
    let rate = |t: Duration| mib(logical) / t.as_secs_f64();
    let cp = median(&times[0]);
    println!(
        "archive {:.0} MiB; {rounds} rounds, each step after {}a sync",
        mib(archive_bytes),
        if matches!(PRIME.get(), Some(Some(_))) {
            "priming the page cache and "
        } else {
            ""
        }
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>12} {:>10} {:>16}",
        "step", "median s", "min s", "max s", "MiB/s (med)", "vs cp -r", "paired (range)"
    );
    for (what, ts) in STEPS.iter().zip(&times) {
        let m = median(ts);
        // The same ratio taken within each round, then the median of the rounds: the machine's
        // state drifts between rounds (cp -r of this directory took 0.4 s in one run and 1.3 s
        // in the next), and a step is best compared with the cp -r made minutes before it.
        let mut paired: Vec<f64> = times[0]
            .iter()
            .zip(ts)
            .map(|(c, t)| c.as_secs_f64() / t.as_secs_f64())
            .collect();
        paired.sort_by(f64::total_cmp);
        println!(
            "{what:<24} {:>9.2} {:>9.2} {:>9.2} {:>12.1} {:>9.2}x {:>5.2}x ({:.2}-{:.2})",
            m.as_secs_f64(),
            ts.iter().min().unwrap().as_secs_f64(),
            ts.iter().max().unwrap().as_secs_f64(),
            rate(m),
            cp.as_secs_f64() / m.as_secs_f64(),
            paired[paired.len() / 2],
            paired[0],
            paired[paired.len() - 1],
        );
    }
    println!(
        "(MiB/s are of value bytes; 'vs cp -r' is the median of cp -r ÷ the step's median, 'paired' \
         the median over rounds of cp -r ÷ the step in the same round: goal ≥ 0.5)"
    );
    if std::env::var_os("BACKUP_KEEP").is_some() {
        println!("kept {}", root.keep().display());
    }
}
