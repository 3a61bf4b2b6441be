//! The wire protocol of `../shared/PROTOCOL.md`: its value types, its requests and the
//! [`Connection`] that reads and writes them.
//!
//! This module knows nothing of sled, of the ring or of ownership: it turns bytes into typed
//! values and back, and refuses what the protocol or the configured limits forbid.

mod connection;

pub use connection::{Connection, Limits};

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A peer's address: the IPv4 address and port other peers reach it at.
///
/// Its compact wire form is 6 bytes (4 address bytes, then the port big-endian); its text form
/// is an Int length then ASCII `a.b.c.d:port`.
pub type PeerAddr = SocketAddrV4;

/// Longest text address accepted on the wire (PROTOCOL.md section 6).
pub const MAX_TEXT_ADDRESS: u64 = 64;

/// A 160-bit position on the ring: a key's SHA-1 or a peer's id.
///
/// Stored and sent as the 20 bytes of the number, big-endian. Because of that the derived
/// byte-wise `Ord` is numeric order, and sled's byte order of keys is ring order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HashKey(pub [u8; 20]);

/// A key whose first byte is `n`, the rest zero: tests use it for keys in a known ring order.
#[cfg(test)]
pub(crate) fn test_key(n: u8) -> HashKey {
    let mut b = [0u8; 20];
    b[0] = n;
    HashKey(b)
}

impl HashKey {
    pub const ZERO: HashKey = HashKey([0; 20]);
    pub const MAX: HashKey = HashKey([0xff; 20]);

    /// SHA-1 of arbitrary bytes: how a client turns a user key into a HashKey.
    pub fn of(bytes: &[u8]) -> HashKey {
        use sha1::{Digest, Sha1};
        HashKey(Sha1::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// `self - other` modulo 2^160.
    pub fn wrapping_sub(&self, other: &HashKey) -> HashKey {
        let mut out = [0u8; 20];
        let mut borrow = 0i16;
        for i in (0..20).rev() {
            let mut d = self.0[i] as i16 - other.0[i] as i16 - borrow;
            borrow = if d < 0 { 1 } else { 0 };
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        HashKey(out)
    }

    /// `self + other` modulo 2^160.
    pub fn wrapping_add(&self, other: &HashKey) -> HashKey {
        let mut out = [0u8; 20];
        let mut carry = 0u16;
        for i in (0..20).rev() {
            let s = self.0[i] as u16 + other.0[i] as u16 + carry;
            out[i] = s as u8;
            carry = s >> 8;
        }
        HashKey(out)
    }

    /// 2^bit, for bit in 0..160.
    pub fn pow2(bit: u32) -> HashKey {
        let mut out = [0u8; 20];
        if bit < 160 {
            out[19 - (bit / 8) as usize] = 1 << (bit % 8);
        }
        HashKey(out)
    }

    /// The key one below this one, wrapping 0 to 2^160-1.
    pub fn prev(&self) -> HashKey {
        self.wrapping_sub(&HashKey::pow2(0))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashKey({self})")
    }
}

impl FromStr for HashKey {
    type Err = Error;

    /// 40 hex digits (upper or lower case).
    fn from_str(s: &str) -> Result<HashKey> {
        let s = s.trim();
        if s.len() != 40 || !s.is_ascii() {
            return Err(Error::Usage(format!(
                "a HashKey is 40 hex digits, got {:?}",
                s
            )));
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::Usage(format!("{s:?} is not hexadecimal")))?;
        }
        Ok(HashKey(out))
    }
}

/// How a PeerAddress travels: the 6-byte compact form or the old Int-length text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AddressEncoding {
    #[default]
    Compact,
    Text,
}

impl fmt::Display for AddressEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressEncoding::Compact => "compact",
            AddressEncoding::Text => "text",
        })
    }
}

/// Parses the text form `a.b.c.d:port` strictly: dotted decimal IPv4 and a decimal port.
pub fn parse_addr(text: &str) -> Result<PeerAddr> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| Error::BadAddress(format!("{text:?} is not host:port")))?;
    let ip = Ipv4Addr::from_str(host)
        .map_err(|_| Error::BadAddress(format!("{host:?} is not an IPv4 address")))?;
    let port = u16::from_str(port)
        .map_err(|_| Error::BadAddress(format!("{port:?} is not a port number")))?;
    Ok(SocketAddrV4::new(ip, port))
}

/// Whether `addr` can be a peer's advertised address: a unicast IPv4 address and a port. A
/// peer that names 0.0.0.0, a broadcast or multicast address, or port 0 (as a successor, an
/// OWN or ABD answer) names nobody one can ask.
pub fn is_peer_address(addr: &PeerAddr) -> bool {
    let ip = addr.ip();
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast()
}

/// One answer byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Yes, done, go on.
    T,
    /// No, failed, absent.
    F,
    /// Not mine: I do not own that key.
    N,
}

impl Status {
    pub fn byte(self) -> u8 {
        match self {
            Status::T => b'T',
            Status::F => b'F',
            Status::N => b'N',
        }
    }

    pub fn from_byte(b: u8) -> Result<Status> {
        match b {
            b'T' => Ok(Status::T),
            b'F' => Ok(Status::F),
            b'N' => Ok(Status::N),
            other => Err(Error::BadStatus(other)),
        }
    }
}

/// A request as it arrives: the command and the argument that follows it on the wire.
///
/// The rest of an exchange (the Value of INS, the entries of CON and DIS) is read by the
/// command's handler, because it comes only after the node's first answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Ins(HashKey),
    Rem(HashKey),
    Get(HashKey),
    Exi(HashKey),
    Own(HashKey),
    Con(PeerAddr),
    Dis(PeerAddr),
    Pul,
    Inf,
    Abd,
    /// Extension `versions/1` (docs/EXTENSIONS.md): CON whose entries carry versions and
    /// tombstones. Sent only to a peer whose INF advertised the extension.
    Vcn(PeerAddr),
    /// Extension `versions/1`: DIS whose entries carry versions and tombstones.
    Vds(PeerAddr),
    /// Extension `versions/1`: a write that carries its version (a value or a tombstone),
    /// applied only if newer than what the owner holds.
    Vin(HashKey),
    /// Extension `replicas/1`: a batch of this many versioned entries follows, for this node
    /// to hold as copies (an owner's writes, or a copy brought up to date).
    Vrp(u64),
    /// Extension `replicas/1`: the digests of the entries of the arc `[from, to)`, split into
    /// `2^depth` segments.
    Vdg(HashKey, HashKey, u64),
    /// Extension `replicas/1`: the keys of the arc `[from, to)` with their versions, at most
    /// the given number per request.
    Vkl(HashKey, HashKey, u64),
    /// Extension `replicas/1`: the entry of a key with its version, whoever owns it.
    Vgt(HashKey),
    /// Extension `compared-join/1`: CON by comparison. The owner fences the joiner's arc and
    /// the joiner brings its copy of it up to date with digests (VDG, VKL, VGT) instead of
    /// receiving the whole arc: a node that returns holding most of its arc moves what changed.
    Vcc(PeerAddr),
}

/// Every command as it travels (PROTOCOL.md section 1), in the order of [`Request::index`]:
/// the command table, which `read_request` reads the other way and tables indexed by command
/// (the metrics) size themselves by.
pub const COMMANDS: [&str; 18] = [
    "INS", "REM", "GET", "EXI", "OWN", "CON", "DIS", "PUL", "INF", "ABD", "VCN", "VDS", "VIN",
    "VRP", "VDG", "VKL", "VGT", "VCC",
];

/// The extension a node advertises in its INF answer, on a line of its own
/// (`extensions: versions/1`): versioned entries, tombstones and the commands `VCN`, `VDS`
/// and `VIN` (docs/EXTENSIONS.md).
pub const VERSIONS_EXTENSION: &str = "versions/1";

/// The extension of a node that keeps copies of its successors' arcs (`replicas` > 0): the
/// commands `VRP`, `VDG`, `VKL` and `VGT` (docs/EXTENSIONS.md). It needs `versions/1`.
pub const REPLICAS_EXTENSION: &str = "replicas/1";

/// The extension of a node that serves `VCC`, a CON by comparison (docs/EXTENSIONS.md). Needs
/// `replicas/1`, whose commands the joiner compares with.
pub const COMPARED_JOIN_EXTENSION: &str = "compared-join/1";

/// The start of the INF line that lists a node's extensions.
pub const EXTENSIONS_LINE: &str = "extensions:";

/// Whether an INF text advertises `extension` on its extensions line.
pub fn advertises(inf: &str, extension: &str) -> bool {
    inf.lines().any(|l| {
        l.trim()
            .strip_prefix(EXTENSIONS_LINE)
            .is_some_and(|rest| rest.split_whitespace().any(|e| e == extension))
    })
}

/// What a versioned entry holds (extension `versions/1`): a value, or a tombstone (the key was
/// removed). One byte on the wire: `V` or `X`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Value,
    Tombstone,
}

impl Kind {
    pub fn byte(self) -> u8 {
        match self {
            Kind::Value => b'V',
            Kind::Tombstone => b'X',
        }
    }

    pub fn from_byte(b: u8) -> Result<Kind> {
        match b {
            b'V' => Ok(Kind::Value),
            b'X' => Ok(Kind::Tombstone),
            other => Err(Error::Peer(format!(
                "a versioned entry's kind is {other:#04x}, not V or X"
            ))),
        }
    }
}

impl Request {
    /// The command's place in [`COMMANDS`].
    pub fn index(&self) -> usize {
        match self {
            Request::Ins(_) => 0,
            Request::Rem(_) => 1,
            Request::Get(_) => 2,
            Request::Exi(_) => 3,
            Request::Own(_) => 4,
            Request::Con(_) => 5,
            Request::Dis(_) => 6,
            Request::Pul => 7,
            Request::Inf => 8,
            Request::Abd => 9,
            Request::Vcn(_) => 10,
            Request::Vds(_) => 11,
            Request::Vin(_) => 12,
            Request::Vrp(_) => 13,
            Request::Vdg(..) => 14,
            Request::Vkl(..) => 15,
            Request::Vgt(_) => 16,
            Request::Vcc(_) => 17,
        }
    }

    /// The command's three ASCII bytes on the wire.
    pub fn command(&self) -> &'static [u8] {
        self.name().as_bytes()
    }

    /// The command, for logs and labels.
    pub fn name(&self) -> &'static str {
        COMMANDS[self.index()]
    }

    /// One request of each command, in [`COMMANDS`] order (for tests and seeds).
    pub fn one_of_each(key: HashKey, addr: PeerAddr) -> [Request; 18] {
        [
            Request::Ins(key),
            Request::Rem(key),
            Request::Get(key),
            Request::Exi(key),
            Request::Own(key),
            Request::Con(addr),
            Request::Dis(addr),
            Request::Pul,
            Request::Inf,
            Request::Abd,
            Request::Vcn(addr),
            Request::Vds(addr),
            Request::Vin(key),
            Request::Vrp(3),
            Request::Vdg(key, key.prev(), 4),
            Request::Vkl(key, key.prev(), 100),
            Request::Vgt(key),
            Request::Vcc(addr),
        ]
    }

    /// Whether this is a command of an extension (never sent to a peer that did not
    /// advertise it).
    pub fn is_extension(&self) -> bool {
        !matches!(
            self,
            Request::Ins(_)
                | Request::Rem(_)
                | Request::Get(_)
                | Request::Exi(_)
                | Request::Own(_)
                | Request::Con(_)
                | Request::Dis(_)
                | Request::Pul
                | Request::Inf
                | Request::Abd
        )
    }
}
