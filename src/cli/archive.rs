//! `backup`, `verify` and `restore`: the archive commands, and how they show progress.

use std::path::Path;

use dht_store::protocol::HashKey;
use dht_store::{node, Error};

use super::show::{rate_line, size, Show};
use super::FOUND;

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
    println!("created {}", super::json::rfc3339(h.created_unix_secs));
}

pub async fn backup(data: &Path, out: &Path, force: bool) -> Result<u8, Error> {
    if out.is_dir() {
        return Err(Error::Usage(format!(
            "--out {} is a directory: give the archive's file name",
            out.display()
        )));
    }
    if out.exists() && !force {
        return Err(Error::Usage(format!(
            "{} exists: give --force to replace it",
            out.display()
        )));
    }
    let out = std::path::absolute(out).map_err(|source| Error::IoAt {
        what: format!("cannot resolve {}", out.display()),
        source,
    })?;
    let started = std::time::Instant::now();
    // The entry count is known only at the end (it is patched into the header).
    let show = Show::new("backup", None);
    let through_node = node::request_backup(data, &out, &show).await?;
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
                dht_store::backup::write_archive(&storage, &o, &show)
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

/// The entry count an archive's header gives, for the bar's total; `None` if it cannot be
/// read (the command itself then says why).
fn archive_entries(path: &Path) -> Option<u64> {
    dht_store::backup::Reader::open(path)
        .ok()
        .map(|r| r.header().entries)
}

pub async fn verify(file: &Path, json: bool) -> Result<u8, Error> {
    let show = Show::new("verify", archive_entries(file));
    let path = file.to_path_buf();
    let s = tokio::task::spawn_blocking(move || dht_store::backup::verify(&path, &show))
        .await
        .map_err(|e| Error::Archive(format!("verify failed: {e}")))??;
    if json {
        super::json::print(&super::json::Verified::new(file, &s))?;
        return Ok(FOUND);
    }
    print_header(&s.header);
    println!(
        "entries {}\ntombstones {}\nvalues {} ({} bytes)\nfile {} ({} bytes)\nchecksum ok",
        s.entries,
        s.tombstones,
        size(s.bytes),
        s.bytes,
        size(s.file_bytes),
        s.file_bytes
    );
    Ok(FOUND)
}

pub async fn restore(from: &Path, data: &Path, force: bool) -> Result<u8, Error> {
    let show = Show::new("restore", archive_entries(from));
    let started = std::time::Instant::now();
    let (f, d) = (from.to_path_buf(), data.to_path_buf());
    let s = tokio::task::spawn_blocking(move || dht_store::backup::restore(&f, &d, force, &show))
        .await
        .map_err(|e| Error::Archive(format!("restore failed: {e}")))??;
    eprintln!(
        "restore: {}",
        rate_line(s.entries, s.bytes, started.elapsed())
    );
    println!(
        "restored {} entries ({} of values) and {} tombstones into {}",
        s.entries,
        size(s.bytes),
        s.tombstones,
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
