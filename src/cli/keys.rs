//! The keyed client commands (`put`, `get`, `exists`, `rm`, `owner`) and `info`: one request
//! routed to the key's owner, its answer printed.

use std::io::{Read, Write};
use std::path::PathBuf;

use dht_store::client::Client;
use dht_store::Error;

use super::{KeyArgs, PeerArgs, ABSENT, FOUND};

fn read_value(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Error> {
    if let Some(v) = value {
        return Ok(v.into_bytes());
    }
    if let Some(path) = file {
        return std::fs::read(&path).map_err(|source| Error::IoAt {
            what: format!("cannot read {}", path.display()),
            source,
        });
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|source| Error::IoAt {
            what: "cannot read the value from stdin".into(),
            source,
        })?;
    Ok(buf)
}

pub async fn put(key: KeyArgs, value: Option<String>, file: Option<PathBuf>) -> Result<u8, Error> {
    let k = key.hash_key()?;
    let v = read_value(value, file)?;
    if key.peer.router()?.put(&k, &v).await? {
        Ok(FOUND)
    } else {
        Err(Error::Peer(format!(
            "the owner of {k} answered F: the value was not stored"
        )))
    }
}

pub async fn get(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    match key.peer.router()?.get(&k).await? {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            out.flush()?;
            Ok(FOUND)
        }
        None => {
            eprintln!(
                "dht-store: {} is absent",
                key.key.as_deref().unwrap_or(&k.to_string())
            );
            Ok(ABSENT)
        }
    }
}

pub async fn exists(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    Ok(if key.peer.router()?.exists(&k).await? {
        FOUND
    } else {
        ABSENT
    })
}

pub async fn rm(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    Ok(if key.peer.router()?.remove(&k).await? {
        FOUND
    } else {
        ABSENT
    })
}

pub async fn owner(key: KeyArgs, json: bool) -> Result<u8, Error> {
    let k = key.hash_key()?;
    let path = key.peer.router()?.owner_path(&k).await?;
    if json {
        super::json::print(&super::json::Owner::new(&k, &path))?;
        return Ok(FOUND);
    }
    let (owner, hops) = (path[path.len() - 1], path.len() - 1);
    println!("{owner} owns {k} ({hops} hops from {})", key.peer.peer);
    Ok(FOUND)
}

pub async fn info(peer: PeerArgs, json: bool) -> Result<u8, Error> {
    let mut c = Client::connect(peer.peer()?, peer.address_encoding).await?;
    let text = c.inf().await?;
    if json {
        super::json::print(&super::json::Info::parse(&peer.peer, &text))?;
        return Ok(FOUND);
    }
    print!("{text}");
    Ok(FOUND)
}
