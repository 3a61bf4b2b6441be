//! The ring drawn as the classroom materials draw it, as a hand-written SVG: the circle, each
//! member a dot at the angle of its id (id / 2^160 of a turn, 0 at the top, clockwise), its
//! arc `[id, id(successor))` a coloured band, a label per member (address, id, share, keys)
//! in a column beside the circle, joined to its dot by a leader line, the labels of each side
//! pushed apart so that they never overlap, and a handoff in progress drawn as a dashed band
//! over the arc that moves and a dashed arrow from the sender to the receiver.

use std::f64::consts::TAU;
use std::fmt::Write;

use crate::protocol::{HashKey, PeerAddr};
use crate::ring::id_of;

use super::{unit, Handoff, RingMap};

/// Canvas width and height.
const W: f64 = 1340.0;
const H: f64 = 940.0;
/// The circle's centre and radius.
const CX: f64 = 650.0;
const CY: f64 = 430.0;
const R: f64 = 260.0;
/// The width of a member's arc band.
const BAND: f64 = 20.0;
/// Where the label columns start, beside the circle.
const COLUMN: f64 = R + 80.0;
/// Height of one label line.
const LINE: f64 = 16.0;
/// The labels' vertical bounds.
const TOP: f64 = 75.0;
const BOTTOM: f64 = 810.0;

/// Colour-blind-friendly qualitative colours (Tableau 10, its red left to handoffs, teal added);
/// past ten, hues round the wheel.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac", "#499894",
];
const HANDOFF: &str = "#c0392b";

fn colour(i: usize) -> String {
    match PALETTE.get(i) {
        Some(c) => c.to_string(),
        None => format!("hsl({}, 55%, 55%)", (i * 137) % 360),
    }
}

/// The point at `turn` (fraction of the circle) on the circle of radius `r`.
fn at(turn: f64, r: f64) -> (f64, f64) {
    let a = turn * TAU;
    (CX + r * a.sin(), CY - r * a.cos())
}

/// The path of the arc from `from` clockwise to `to` (turns) at radius `r`.
fn arc_path(from: f64, to: f64, r: f64) -> String {
    let mut span = (to - from).rem_euclid(1.0);
    if span == 0.0 {
        span = 1.0;
    }
    if span > 0.9999 {
        // A whole circle: two halves (one SVG arc cannot end where it starts).
        let (x0, y0) = at(from, r);
        let (x1, y1) = at(from + 0.5, r);
        return format!(
            "M {x0:.2} {y0:.2} A {r} {r} 0 1 1 {x1:.2} {y1:.2} A {r} {r} 0 1 1 {x0:.2} {y0:.2}"
        );
    }
    let (x0, y0) = at(from, r);
    let (x1, y1) = at(from + span, r);
    let large = if span > 0.5 { 1 } else { 0 };
    format!("M {x0:.2} {y0:.2} A {r} {r} 0 {large} 1 {x1:.2} {y1:.2}")
}

/// Text for SVG: the five characters XML reserves escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p < 0.1 && p > 0.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A label beside the circle: its lines, where it would like to be, where it goes.
struct Label {
    /// The turn of the point it describes (its leader line starts there).
    turn: f64,
    /// Lines: (text, class).
    lines: Vec<(String, &'static str)>,
    /// The leader line's colour.
    colour: String,
    /// The first line's baseline, once placed.
    y: f64,
}

impl Label {
    fn height(&self) -> f64 {
        self.lines.len() as f64 * LINE + 8.0
    }
    fn right(&self) -> bool {
        self.turn.rem_euclid(1.0) < 0.5
    }
}

/// Places each side's labels in order of their wished heights, pushed apart so that none
/// overlaps the next, and kept between `TOP` and `BOTTOM`.
fn place(labels: &mut [Label]) {
    for right in [true, false] {
        let mut side: Vec<&mut Label> = labels.iter_mut().filter(|l| l.right() == right).collect();
        for l in side.iter_mut() {
            let (_, y) = at(l.turn, R + 40.0);
            l.y = y + 4.0 - (l.lines.len() as f64 - 1.0) * LINE / 2.0;
        }
        side.sort_by(|a, b| a.y.total_cmp(&b.y));
        let mut floor = TOP;
        for l in side.iter_mut() {
            l.y = l.y.max(floor);
            floor = l.y + l.height();
        }
        let mut ceiling = BOTTOM;
        for l in side.iter_mut().rev() {
            l.y = l.y.min(ceiling - l.height() + LINE);
            ceiling = l.y - LINE;
        }
    }
}

/// The SVG of `map`.
pub fn render(map: &RingMap) -> String {
    let n = map.members.len();
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Verdana, sans-serif">
<style>
  .addr {{ font-size: 15px; font-weight: bold; fill: #222; }}
  .info {{ font-size: 13px; fill: #555; }}
  .hand {{ font-size: 13px; fill: {HANDOFF}; font-weight: bold; }}
  .share {{ font-size: 12px; fill: #333; }}
  .tick {{ font-size: 11px; fill: #999; }}
  .title {{ font-size: 20px; font-weight: bold; fill: #222; }}
  .centre {{ font-size: 15px; fill: #444; }}
  .legend {{ font-size: 13px; fill: #333; }}
  .problem {{ font-size: 14px; fill: {HANDOFF}; font-weight: bold; }}
</style>
<defs>
  <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
    <path d="M 0 0 L 10 5 L 0 10 z" fill="{HANDOFF}"/>
  </marker>
</defs>
<rect width="{W}" height="{H}" fill="white"/>
<text class="title" x="30" y="40">The ring seen from {start}</text>
"##,
        start = map.start,
    );

    // The circle and its quarter ticks.
    let _ = writeln!(
        s,
        r##"<circle cx="{CX}" cy="{CY}" r="{R}" fill="none" stroke="#ddd" stroke-width="{BAND}"/>"##
    );
    // Where the circle starts, and small ticks at the quarters (no labels: they would meet the
    // shares written inside the arcs).
    for q in [0.0, 0.25, 0.5, 0.75] {
        let (x0, y0) = at(q, R - BAND / 2.0 - 2.0);
        let (x1, y1) = at(q, R - BAND / 2.0 - 10.0);
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y1:.1}" stroke="#bbb"/>"##
        );
    }
    let _ = writeln!(
        s,
        r##"<text class="tick" x="{CX}" y="{:.1}" text-anchor="middle">0</text>"##,
        CY - R - BAND / 2.0 - 6.0
    );

    // Each member's arc.
    for (i, m) in map.members.iter().enumerate() {
        let from = unit(&m.id);
        let to = if m.successor == m.address {
            from + 1.0
        } else {
            unit(&id_of(&m.successor))
        };
        let broken = !map.members.iter().any(|o| o.address == m.successor);
        let _ = writeln!(
            s,
            r##"<path d="{}" fill="none" stroke="{}" stroke-width="{BAND}"{}><title>{} owns [{}, {}): {}</title></path>"##,
            arc_path(from, to, R),
            if broken {
                "#ccc".to_string()
            } else {
                colour(i)
            },
            if broken {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            m.address,
            m.id,
            id_of(&m.successor),
            percent(m.share),
        );
        if m.share >= 0.045 {
            let mid = from + (to - from).rem_euclid(1.0) / 2.0;
            let (x, y) = at(mid, R - BAND / 2.0 - 42.0);
            let _ = writeln!(
                s,
                r##"<text class="share" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y + 4.0,
                percent(m.share)
            );
        }
    }

    // Handoffs in progress: each drawn once, from the sender's report if it gave one.
    let mut labels: Vec<Label> = Vec::new();
    let mut handoffs: Vec<(PeerAddr, &Handoff)> = Vec::new();
    for m in &map.members {
        if let Some(Some(h)) = &m.handoff {
            // A receiver's report is drawn only if the sender (a member) reports none.
            let sender_reports = !h.sending
                && map.members.iter().any(|o| {
                    o.address == h.peer && matches!(&o.handoff, Some(Some(oh)) if oh.sending)
                });
            if !sender_reports {
                handoffs.push((m.address, h));
            }
        }
    }
    for (reporter, h) in &handoffs {
        let (sender, receiver) = if h.sending {
            (*reporter, h.peer)
        } else {
            (h.peer, *reporter)
        };
        if let Some((from, to)) = &h.arc {
            let _ = writeln!(
                s,
                r##"<path d="{}" fill="none" stroke="{HANDOFF}" stroke-width="8" stroke-dasharray="10 6"><title>{}</title></path>"##,
                arc_path(unit(from), unit(to), R + BAND / 2.0 + 8.0),
                esc(&h.text)
            );
        }
        // A dashed arrow through the inside of the circle, sender to receiver.
        let (t0, t1) = (unit(&id_of(&sender)), unit(&id_of(&receiver)));
        let (x0, y0) = at(t0, R - BAND / 2.0 - 6.0);
        let (x1, y1) = at(t1, R - BAND / 2.0 - 6.0);
        let (qx, qy) = (
            (x0 + x1) / 2.0 * 0.6 + CX * 0.4,
            (y0 + y1) / 2.0 * 0.6 + CY * 0.4,
        );
        let _ = writeln!(
            s,
            r##"<path d="M {x0:.1} {y0:.1} Q {qx:.1} {qy:.1} {x1:.1} {y1:.1}" fill="none" stroke="{HANDOFF}" stroke-width="2.5" stroke-dasharray="7 5" marker-end="url(#arrow)"/>"##
        );
        // A receiver that is not a member yet (a joiner): a hollow dot and a label of its own.
        if !map.members.iter().any(|m| m.address == receiver) {
            let (x, y) = at(t1, R);
            let _ = writeln!(
                s,
                r##"<circle class="joining" data-address="{receiver}" cx="{x:.1}" cy="{y:.1}" r="8" fill="white" stroke="{HANDOFF}" stroke-width="3"/>"##
            );
            labels.push(Label {
                turn: t1,
                lines: vec![
                    (receiver.to_string(), "addr"),
                    (format!("{} joining", short(&id_of(&receiver))), "hand"),
                ],
                colour: HANDOFF.to_string(),
                y: 0.0,
            });
        }
    }

    // A successor named by ABD that did not answer: a cross where it should be.
    if !map.closed {
        if let Some(last) = map.members.last() {
            if !map.members.iter().any(|m| m.address == last.successor) {
                let t = unit(&id_of(&last.successor));
                let (x, y) = at(t, R);
                let _ = writeln!(
                    s,
                    r##"<path d="M {:.1} {:.1} l 14 14 m 0 -14 l -14 14" stroke="{HANDOFF}" stroke-width="4"/>"##,
                    x - 7.0,
                    y - 7.0
                );
                labels.push(Label {
                    turn: t,
                    lines: vec![
                        (last.successor.to_string(), "addr"),
                        ("does not answer".to_string(), "hand"),
                    ],
                    colour: HANDOFF.to_string(),
                    y: 0.0,
                });
            }
        }
    }

    // The members' dots (a square for a peer that does not say it is dht-store) and labels.
    for (i, m) in map.members.iter().enumerate() {
        let (x, y) = at(unit(&m.id), R);
        if m.software.is_some() {
            let _ = writeln!(
                s,
                r##"<circle class="member" data-address="{}" cx="{x:.1}" cy="{y:.1}" r="8" fill="#222" stroke="white" stroke-width="2.5"><title>{}</title></circle>"##,
                m.address, m.address
            );
        } else {
            let _ = writeln!(
                s,
                r##"<rect class="member foreign" data-address="{}" x="{:.1}" y="{:.1}" width="15" height="15" fill="#222" stroke="white" stroke-width="2.5"><title>{}</title></rect>"##,
                m.address,
                x - 7.5,
                y - 7.5,
                m.address
            );
        }
        let keys = match m.keys {
            Some(1) => "1 key".to_string(),
            Some(k) => format!("{k} keys"),
            None => "keys ?".to_string(),
        };
        let mut lines = vec![
            (m.address.to_string(), "addr"),
            (
                format!(
                    "{} · {} · {keys}{}",
                    short(&m.id),
                    percent(m.share),
                    if m.handoff.is_none() {
                        " · handoff ?"
                    } else {
                        ""
                    }
                ),
                "info",
            ),
        ];
        if let Some(Some(h)) = &m.handoff {
            lines.push((handoff_line(h), "hand"));
        }
        labels.push(Label {
            turn: unit(&m.id),
            lines,
            colour: colour(i),
            y: 0.0,
        });
    }

    place(&mut labels);
    for l in &labels {
        let right = l.right();
        let (dx, dy) = at(l.turn, R + BAND / 2.0 + 2.0);
        let (ex, ey) = at(l.turn, R + BAND / 2.0 + 22.0);
        let lx = if right { CX + COLUMN } else { CX - COLUMN };
        let ly = l.y - 5.0;
        let _ = writeln!(
            s,
            r##"<polyline points="{dx:.1},{dy:.1} {ex:.1},{ey:.1} {:.1},{ly:.1}" fill="none" stroke="{}" stroke-width="1.5"/>"##,
            if right { lx - 6.0 } else { lx + 6.0 },
            l.colour
        );
        let anchor = if right { "start" } else { "end" };
        for (k, (text, class)) in l.lines.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text class="{class}" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"##,
                l.y + k as f64 * LINE,
                esc(text)
            );
        }
    }

    // The centre: what the ring holds.
    let (keys, unknown) = map.keys();
    let centre = [
        format!("{n} member{}", if n == 1 { "" } else { "s" }),
        format!(
            "{keys} keys{}",
            if unknown > 0 {
                format!(" + {unknown} unknown")
            } else {
                String::new()
            }
        ),
        match handoffs.len() {
            0 => String::new(),
            1 => "1 handoff in progress".to_string(),
            k => format!("{k} handoffs in progress"),
        },
        if map.closed {
            "ring closed".to_string()
        } else {
            "ring NOT closed".to_string()
        },
    ];
    let centre: Vec<&String> = centre.iter().filter(|l| !l.is_empty()).collect();
    for (k, line) in centre.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text class="centre" x="{CX}" y="{:.1}" text-anchor="middle">{}</text>"##,
            CY + 6.0 - (centre.len() as f64 - 1.0) * 10.0 + k as f64 * 20.0,
            esc(line)
        );
    }

    // The legend, and what went wrong.
    let ly = H - 95.0;
    let _ = write!(
        s,
        r##"<g class="legend">
<circle cx="40" cy="{ly}" r="7" fill="#222"/><text class="legend" x="56" y="{:.0}">member at its id (id / 2^160 of a turn, 0 at the top, clockwise)</text>
<rect x="33" y="{:.0}" width="14" height="14" fill="#222"/><text class="legend" x="56" y="{:.0}">peer of another implementation (? : not in its INF)</text>
<line x1="28" y1="{:.0}" x2="52" y2="{:.0}" stroke="{}" stroke-width="10"/><text class="legend" x="56" y="{:.0}">the arc it owns, [its id, its successor's id)</text>
<line x1="640" y1="{ly}" x2="672" y2="{ly}" stroke="{HANDOFF}" stroke-width="6" stroke-dasharray="8 5"/><text class="legend" x="680" y="{:.0}">handoff in progress: the arc that moves</text>
<line x1="640" y1="{:.0}" x2="672" y2="{:.0}" stroke="{HANDOFF}" stroke-width="2.5" stroke-dasharray="7 5" marker-end="url(#arrow)"/><text class="legend" x="680" y="{:.0}">from the sender to the receiver (entries moved)</text>
<circle cx="656" cy="{:.0}" r="7" fill="white" stroke="{HANDOFF}" stroke-width="3"/><text class="legend" x="680" y="{:.0}">a joining node (not a member yet)</text>
</g>
"##,
        ly + 5.0,
        ly + 15.0,
        ly + 27.0,
        ly + 44.0,
        ly + 44.0,
        colour(0),
        ly + 49.0,
        ly + 5.0,
        ly + 22.0,
        ly + 22.0,
        ly + 27.0,
        ly + 44.0,
        ly + 49.0,
    );
    if let Some(p) = &map.problem {
        let _ = writeln!(
            s,
            r##"<text class="problem" x="30" y="{:.0}">{}</text>"##,
            H - 15.0,
            esc(p)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The first 8 hex digits of an id: enough to tell the members of a ring apart.
pub fn short(id: &HashKey) -> String {
    let mut t = id.to_string();
    t.truncate(8);
    t
}

/// "CON → 127.0.0.1:5009 · 1200/5000 entries".
fn handoff_line(h: &Handoff) -> String {
    let arrow = if h.sending { "→" } else { "←" };
    let count = match (h.entries, h.total) {
        (Some(e), Some(t)) => format!(" · {e}/{t} entries"),
        (Some(e), None) => format!(" · {e} entries"),
        _ => String::new(),
    };
    format!("{} {arrow} {}{count}", h.kind, h.peer)
}
