//! `dht-store ring`: the ring at a glance. The walk, the INF parsing and the drawing are in the
//! library (`dht_store::ringmap`); this prints the table or the JSON and writes the SVG.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use dht_store::ringmap::{self, Member, RingMap, WalkOptions};
use dht_store::Error;

use super::{PeerArgs, FOUND};

/// Where the walk starts and what it prints.
#[derive(Args, Debug)]
pub struct RingArgs {
    /// The peer the walk starts at, and how long each answer may take
    #[command(flatten)]
    peer: PeerArgs,
    /// Also draw the ring into this SVG file (replaced if it exists)
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Print the members as JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Show ids in full (40 hex digits) instead of their first 8
    #[arg(long)]
    full_ids: bool,
    /// Most members listed before giving up on a ring that does not come back to the start
    #[arg(long, default_value_t = 1024)]
    max_members: usize,
}

pub async fn ring(args: RingArgs) -> Result<u8, Error> {
    let start = args.peer.peer()?;
    let opts = WalkOptions {
        encoding: args.peer.address_encoding,
        max_members: args.max_members.max(1),
        timeout: args.peer.timeout()?,
    };
    let map = ringmap::walk(start, &opts).await?;
    let text = if args.json {
        map.to_json() + "\n"
    } else {
        table(&map, args.full_ids)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if let Some(path) = &args.svg {
        std::fs::write(path, ringmap::svg::render(&map)).map_err(|source| Error::IoAt {
            what: format!("cannot write {}", path.display()),
            source,
        })?;
    }
    match &map.problem {
        Some(p) => Err(Error::Peer(p.clone())),
        None => Ok(FOUND),
    }
}

/// The members as a table, in ring order, then the handoffs and notes.
fn table(map: &RingMap, full_ids: bool) -> String {
    let id = |m: &Member| {
        if full_ids {
            m.id.to_string()
        } else {
            ringmap::svg::short(&m.id)
        }
    };
    let unknown = || "unknown".to_string();
    let rows: Vec<[String; 6]> = map
        .members
        .iter()
        .map(|m| {
            [
                m.address.to_string(),
                id(m),
                format!("{:.2}%", m.share * 100.0),
                m.keys.map(|k| k.to_string()).unwrap_or_else(unknown),
                match &m.handoff {
                    None => unknown(),
                    Some(None) => "none".into(),
                    Some(Some(h)) => {
                        format!(
                            "{} {} {}",
                            h.kind,
                            if h.sending { "to" } else { "from" },
                            h.peer
                        )
                    }
                },
                m.successors
                    .as_ref()
                    .map(|l| {
                        l.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(unknown),
            ]
        })
        .collect();
    let head = ["address", "id", "share", "keys", "handoff", "successors"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            match i {
                5 => out.push_str(c),
                2 | 3 => out.push_str(&format!("{}{c}  ", " ".repeat(pad))),
                _ => out.push_str(&format!("{c}{}  ", " ".repeat(pad))),
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let n = map.members.len();
    let mut out = format!(
        "ring seen from {}: {n} member{}, {}\n",
        map.start,
        if n == 1 { "" } else { "s" },
        if map.closed { "closed" } else { "NOT closed" }
    );
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    let (keys, unknown_keys) = map.keys();
    let share: f64 = map.members.iter().map(|m| m.share).sum();
    out.push_str(&format!(
        "total: {keys} keys{}, shares {:.2}%\n",
        if unknown_keys > 0 {
            format!(
                " ({unknown_keys} member{} not reporting keys)",
                if unknown_keys == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        },
        share * 100.0
    ));
    for m in &map.members {
        if let Some(Some(h)) = &m.handoff {
            out.push_str(&format!("handoff at {}: {}\n", m.address, h.text));
        }
        for note in &m.notes {
            out.push_str(&format!("note on {}: {note}\n", m.address));
        }
    }
    out
}
