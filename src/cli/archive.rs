//! `backup`, `verify` and `restore`: the archive commands, and how they show progress.

use std::path::Path;

use dht_store::protocol::HashKey;
use dht_store::{node, Error};

use super::FOUND;

/// Progress of backup, verify and restore: a bar on a terminal, a log line every 2 s otherwise.
struct Show {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    last: std::sync::Mutex<std::time::Instant>,
}

impl Show {
    fn new(what: &'static str, total_bytes: Option<u64>) -> Show {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(what);
            bar
        });
        let now = std::time::Instant::now();
        Show {
            what,
            bar,
            started: now,
            last: std::sync::Mutex::new(now),
        }
    }

    fn tick(&self, entries: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            if entries.is_multiple_of(1024) {
                bar.set_message(format!("{entries} entries"));
            }
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= std::time::Duration::from_secs(2) {
            *last = std::time::Instant::now();
            eprintln!(
                "{}: {}",
                self.what,
                rate_line(entries, bytes, self.started.elapsed())
            );
        }
    }
}

impl Drop for Show {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn rate_line(entries: u64, bytes: u64, took: std::time::Duration) -> String {
    let mib = bytes as f64 / (1 << 20) as f64;
    let secs = took.as_secs_f64().max(1e-6);
    format!(
        "{entries} entries, {mib:.1} MiB in {secs:.1} s ({:.1} MiB/s)",
        mib / secs
    )
}

fn print_header(h: &dht_store::backup::Header) {
    match (&h.address, &h.id) {
        (Some(a), Some(id)) => println!("node {a}\nid {}", HashKey(*id)),
        _ => println!("node none (the directory held no ring state)"),
    }
    if let Some(r) = &h.ring {
        println!(
            "successor {}\nsecond successor {}",
            r.successor, r.second_successor
        );
        if let Some(p) = r.predecessor {
            println!("predecessor {p}");
        }
    }
    println!(
        "created {} (seconds since the Unix epoch)",
        h.created_unix_secs
    );
}

pub async fn backup(data: &std::path::Path, out: &std::path::Path) -> Result<u8, Error> {
    let out = std::path::absolute(out)?;
    let started = std::time::Instant::now();
    let show = Show::new("backup", None);
    let through_node = node::request_backup(data, &out, &|n, b| show.tick(n, b)).await?;
    let (entries, bytes) = match through_node {
        Some((n, b, _)) => {
            eprintln!(
                "backup: taken through the node running on {}",
                data.display()
            );
            (n, b)
        }
        None => {
            let (d, o) = (data.to_path_buf(), out.clone());
            let s = tokio::task::spawn_blocking(move || -> Result<_, Error> {
                if !dht_store::storage::holds_database(&d) {
                    return Err(Error::Archive(format!(
                        "{} holds no dht-store data",
                        d.display()
                    )));
                }
                let storage = dht_store::storage::Storage::open(&d, &Default::default())?;
                dht_store::backup::write_archive(&storage, &o, &|n, b| show.tick(n, b))
            })
            .await
            .map_err(|e| Error::Archive(format!("backup failed: {e}")))??;
            (s.entries, s.bytes)
        }
    };
    eprintln!(
        "backup: {} -> {}",
        rate_line(entries, bytes, started.elapsed()),
        out.display()
    );
    Ok(FOUND)
}

pub async fn verify(file: &Path, json: bool) -> Result<u8, Error> {
    let file_bytes = std::fs::metadata(file).map(|m| m.len()).ok();
    let show = Show::new("verify", file_bytes);
    let path = file.to_path_buf();
    let s = tokio::task::spawn_blocking(move || {
        dht_store::backup::verify(&path, &|n, b| show.tick(n, b))
    })
    .await
    .map_err(|e| Error::Archive(format!("verify failed: {e}")))??;
    if json {
        super::json::print(&super::json::Verified::new(file, &s))?;
        return Ok(FOUND);
    }
    print_header(&s.header);
    println!(
        "entries {}\nvalue bytes {}\nfile bytes {}\nchecksum ok",
        s.entries, s.bytes, s.file_bytes
    );
    Ok(FOUND)
}

pub async fn restore(from: &Path, data: &Path, force: bool) -> Result<u8, Error> {
    let file_bytes = std::fs::metadata(from).map(|m| m.len()).ok();
    let show = Show::new("restore", file_bytes);
    let started = std::time::Instant::now();
    let (f, d) = (from.to_path_buf(), data.to_path_buf());
    let s = tokio::task::spawn_blocking(move || {
        dht_store::backup::restore(&f, &d, force, &|n, b| show.tick(n, b))
    })
    .await
    .map_err(|e| Error::Archive(format!("restore failed: {e}")))??;
    eprintln!(
        "restore: {}",
        rate_line(s.entries, s.bytes, started.elapsed())
    );
    println!(
        "restored {} entries ({} value bytes) into {}",
        s.entries,
        s.bytes,
        data.display()
    );
    if let Some(addr) = s.header.address {
        println!(
            "the archive is of node {addr}: start it with --host {} --port {} to resume that node; \
             another --host/--port gives it another id, and the entries it then does not own go to their owners",
            addr.ip(),
            addr.port()
        );
    }
    Ok(FOUND)
}
