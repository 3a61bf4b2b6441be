//! The keyed client commands (`put`, `get`, `exists`, `rm`, `owner`) and `info`: one request
//! routed to the key's owner, its answer printed.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use dht_store::client::Client;
use dht_store::protocol::{HashKey, PeerAddr};
use dht_store::Error;

use super::{KeyArgs, PeerArgs, PutArgs, ABSENT, FOUND};

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::IoAt {
        what: format!("cannot read the value from {}", path.display()),
        source,
    })
}

fn read_stdin(shown: &str) -> Result<Vec<u8>, Error> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        // Otherwise the command seems to hang.
        eprintln!(
            "dht-store: reading the value of {shown} from the terminal; end it with Ctrl-D \
             (or give VALUE or --file PATH)"
        );
    }
    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(|source| Error::IoAt {
        what: "cannot read the value from stdin".into(),
        source,
    })?;
    Ok(buf)
}

pub async fn put(args: PutArgs) -> Result<u8, Error> {
    let (k, shown, value) = args.key_and_value()?;
    let v = match (value, &args.file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(path)) => read_file(path)?,
        (None, None) => read_stdin(&shown)?,
    };
    let peer = &args.route.peer;
    let (owner, stored) = args
        .route
        .router()?
        .put_at(&k, &v)
        .await
        .map_err(|e| peer.explain(e))?;
    if stored {
        return Ok(FOUND);
    }
    Err(Error::Peer(match max_value_size(owner, peer).await {
        Some(limit) if v.len() as u64 > limit => format!(
            "the value is {} bytes, over the limit of {owner}, the owner of {shown} ({limit} \
             bytes): it was not stored",
            v.len()
        ),
        _ => format!(
            "{owner}, the owner of {shown}, answered F: the value was not stored (a node \
             refuses writes it cannot make durable: its log says why)"
        ),
    }))
}

/// The largest value `owner` accepts, if its INF says (ours does; other implementations may
/// not).
async fn max_value_size(owner: PeerAddr, peer: &PeerArgs) -> Option<u64> {
    let mut c = Client::connect_timed(owner, peer.address_encoding, peer.timeout().ok()?)
        .await
        .ok()?;
    let text = c.inf().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("max value size "))
        .and_then(|n| n.trim().parse().ok())
}

pub async fn get(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    let found = key
        .route
        .router()?
        .get(&k)
        .await
        .map_err(|e| key.route.peer.explain(e))?;
    match found {
        Some(v) => {
            write_value(&v)?;
            Ok(FOUND)
        }
        None => {
            eprintln!("dht-store: {} is absent", key.shown());
            Ok(ABSENT)
        }
    }
}

/// Writes a value to stdout, ending it with a newline on a terminal (so the prompt does not
/// follow it on its line); a reader that stopped early (`| head`) is not an error.
fn write_value(v: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let newline = out.is_terminal() && !v.ends_with(b"\n");
    let written = out
        .write_all(v)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(Error::IoAt {
            what: "cannot write the value to stdout".into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

pub async fn exists(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    let there = key
        .route
        .router()?
        .exists(&k)
        .await
        .map_err(|e| key.route.peer.explain(e))?;
    Ok(if there { FOUND } else { ABSENT })
}

pub async fn rm(key: KeyArgs) -> Result<u8, Error> {
    let k = key.hash_key()?;
    let was = key
        .route
        .router()?
        .remove(&k)
        .await
        .map_err(|e| key.route.peer.explain(e))?;
    Ok(if was { FOUND } else { ABSENT })
}

pub async fn owner(key: KeyArgs, json: bool) -> Result<u8, Error> {
    let k: HashKey = key.hash_key()?;
    let path = key
        .route
        .router()?
        .owner_path(&k)
        .await
        .map_err(|e| key.route.peer.explain(e))?;
    if json {
        super::json::print(&super::json::Owner::new(&k, &path))?;
        return Ok(FOUND);
    }
    let Some(owner) = path.last() else {
        return Err(Error::Peer(format!("the OWN walk for {k} asked nobody")));
    };
    let hops = path.len() - 1;
    println!(
        "{owner} owns {k} ({hops} hops from {})",
        key.route.peer.peer
    );
    Ok(FOUND)
}

pub async fn info(peer: PeerArgs, json: bool) -> Result<u8, Error> {
    let mut c = Client::connect_timed(peer.peer()?, peer.address_encoding, peer.timeout()?).await?;
    let text = c.inf().await.map_err(|e| peer.explain(e))?;
    if json {
        super::json::print(&super::json::Info::parse(&peer.peer, &text))?;
        return Ok(FOUND);
    }
    // As a value: `info | head` is not an error (print! would panic on the closed pipe).
    write_value(text.as_bytes())?;
    Ok(FOUND)
}
