//! Backup, verify and restore throughput for about 1 GiB, beside `cp -r` of the stopped node's
//! data directory, measured in the same run.
//!
//!     cargo bench --bench backup                      # 100k × 10 KiB (about 1 GiB)
//!     BACKUP_ENTRIES=20000 cargo bench --bench backup # smaller
//!
//! The page cache is warm for every step alike (nothing here can drop it portably).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dht_store::protocol::{HashKey, PeerAddr};
use dht_store::ring::RingState;
use dht_store::storage::{Storage, StorageOptions};

const BIN: &str = env!("CARGO_BIN_EXE_dht-store");
const VALUE: usize = 10 * 1024;

fn timed(what: &str, cmd: &mut Command) -> Duration {
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

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
            batch.push((k, vec![(i % 251) as u8; VALUE]));
            if batch.len() == 400 {
                let _ = s.insert_batch(&mut batch).expect("batch");
            }
        }
        let _ = s.insert_batch(&mut batch).expect("batch");
        let _ = s.save_ring(&RingState::alone(addr)).expect("ring");
        s.flush().expect("flush");
    }
    let logical = (n * VALUE) as u64;
    let on_disk = du(&dir);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{n} entries × {VALUE} B = {:.0} MiB of values; data dir {:.0} MiB on disk (made in {:.1?})",
        mib(logical),
        mib(on_disk),
        started.elapsed()
    );

    let cp = timed(
        "cp -r",
        Command::new("cp")
            .arg("-r")
            .arg(&dir)
            .arg(root.path().join("copy")),
    );
    let archive = root.path().join("node.backup");
    let stopped = timed(
        "backup (stopped node)",
        Command::new(BIN)
            .args(["backup", "--data"])
            .arg(&dir)
            .arg("--out")
            .arg(&archive),
    );
    let archive_bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let verify = timed("verify", Command::new(BIN).arg("verify").arg(&archive));
    let restore = timed(
        "restore",
        Command::new(BIN)
            .args(["restore", "--from"])
            .arg(&archive)
            .arg("--data")
            .arg(root.path().join("restored")),
    );

    // Through a running node (the admin socket; a point-in-time cut).
    let node = Kill(
        Command::new(BIN)
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
    let live_archive = root.path().join("live.backup");
    let running = timed(
        "backup (running node)",
        Command::new(BIN)
            .args(["backup", "--data"])
            .arg(&dir)
            .arg("--out")
            .arg(&live_archive),
    );
    drop(node);

    let rate = |t: Duration| mib(logical) / t.as_secs_f64();
    println!("archive {:.0} MiB", mib(archive_bytes));
    println!(
        "{:<24} {:>9} {:>12} {:>14}",
        "step", "seconds", "MiB/s", "vs cp -r"
    );
    for (what, t) in [
        ("cp -r (baseline)", cp),
        ("backup, stopped node", stopped),
        ("backup, running node", running),
        ("verify", verify),
        ("restore", restore),
    ] {
        println!(
            "{what:<24} {:>9.2} {:>12.1} {:>13.2}x",
            t.as_secs_f64(),
            rate(t),
            cp.as_secs_f64() / t.as_secs_f64()
        );
    }
    println!("(MiB/s are of value bytes; 'vs cp -r' is cp's time ÷ the step's time: goal ≥ 0.5)");
}
