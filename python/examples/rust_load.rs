//! The Python bench's Rust baseline (`python/bench/bench.py`): the same get/put workload as
//! the Python calls, made by the crate's `Router` directly, with no Python and no CLI.
//!
//! ```sh
//! cargo run --release --manifest-path python/Cargo.toml --example rust_load -- \
//!     --peer 127.0.0.1:5000 --keys 2000 --value-size 100 --prefix run1 --concurrency 0
//! ```
//!
//! Puts `--keys` values of `--value-size` bytes under the keys `PREFIX-0`, `PREFIX-1`, ...
//! (hashed with SHA-1 like every client), then gets each back and checks it, and prints one
//! JSON line per phase: `{"op": "put", "n": ..., "secs": ..., "errors": ...}`. With
//! `--concurrency 0` one Router makes the requests one after another on one thread (the
//! Python loop's pattern); with `--concurrency C`, C tasks with a Router each share the keys,
//! on one thread too (the Python bulk calls' pattern). Exits 1 if any request failed or any
//! value came back wrong.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_store::client::Router;
use dht_store::protocol::{parse_addr, AddressEncoding, HashKey, PeerAddr};

/// The command line.
struct Args {
    peer: PeerAddr,
    keys: usize,
    value_size: usize,
    prefix: String,
    concurrency: usize,
    encoding: AddressEncoding,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        peer: PeerAddr::new(std::net::Ipv4Addr::LOCALHOST, 5000),
        keys: 2000,
        value_size: 100,
        prefix: "rust".into(),
        concurrency: 0,
        encoding: AddressEncoding::Compact,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--peer" => a.peer = parse_addr(&v).map_err(|e| e.to_string())?,
            "--keys" => a.keys = num(&v)?,
            "--value-size" => a.value_size = num(&v)?,
            "--prefix" => a.prefix = v,
            "--concurrency" => a.concurrency = num(&v)?,
            "--address-encoding" => {
                a.encoding = match v.as_str() {
                    "compact" => AddressEncoding::Compact,
                    "text" => AddressEncoding::Text,
                    _ => return Err(format!("--address-encoding {v}: compact or text")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// The value stored under key `i`: its bytes say which key it belongs to.
fn value(i: usize, size: usize) -> Vec<u8> {
    let tag = format!("{i}:");
    tag.bytes().cycle().take(size).collect()
}

fn router(a: &Args) -> Router {
    Router::new(a.peer, a.encoding).with_timeout(Duration::from_secs(10))
}

/// One phase: every key once, `errors` counting failed requests and wrong values.
async fn phase(a: &Arc<Args>, keys: &Arc<Vec<HashKey>>, put: bool) -> (Duration, usize) {
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    if a.concurrency == 0 {
        let mut r = router(a);
        for (i, k) in keys.iter().enumerate() {
            if !one(&mut r, a, k, i, put).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..a.concurrency {
            let (a, keys, next, errors) = (a.clone(), keys.clone(), next.clone(), errors.clone());
            tasks.spawn(async move {
                let mut r = router(&a);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(k) = keys.get(i) else { return };
                    if !one(&mut r, &a, k, i, put).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    (start.elapsed(), errors.load(Ordering::Relaxed))
}

/// A put or a get of key `i`; whether it did what it should.
async fn one(r: &mut Router, a: &Args, k: &HashKey, i: usize, put: bool) -> bool {
    if put {
        matches!(r.put(k, &value(i, a.value_size)).await, Ok(true))
    } else {
        matches!(r.get(k).await, Ok(Some(v)) if v == value(i, a.value_size))
    }
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("rust_load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rust_load: no runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let keys: Arc<Vec<HashKey>> = Arc::new(
        (0..a.keys)
            .map(|i| HashKey::of(format!("{}-{i}", a.prefix).as_bytes()))
            .collect(),
    );
    let mut failed = false;
    for (name, put) in [("put", true), ("get", false)] {
        let (took, errors) = rt.block_on(phase(&a, &keys, put));
        failed |= errors > 0;
        println!(
            "{{\"op\": \"{name}\", \"n\": {}, \"secs\": {:.6}, \"errors\": {errors}, \"concurrency\": {}}}",
            a.keys,
            took.as_secs_f64(),
            a.concurrency
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
