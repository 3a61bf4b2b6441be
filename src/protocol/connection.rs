//! [`Connection`]: the protocol's primitives read from and written to one byte stream.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio_io_timeout::TimeoutStream;

use super::{
    parse_addr, AddressEncoding, HashKey, Kind, PeerAddr, Request, Status, MAX_TEXT_ADDRESS,
};
use crate::error::{Error, Result};

/// What a connection refuses or gives up on, so that no peer can make us allocate, or wait,
/// without bound.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest valSize accepted; a larger one is refused before anything is allocated.
    pub max_value: u64,
    /// Longest silence allowed between two requests (`None`: wait for ever).
    pub idle_timeout: Option<Duration>,
    /// Longest silence allowed inside a message, and longest a write may stall.
    pub io_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value: 64 << 20,
            idle_timeout: Some(Duration::from_secs(300)),
            io_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Values are read in pieces of at most this many bytes, and the buffer grows only as bytes
/// actually arrive, so a peer announcing a large valSize and sending little costs little.
const READ_CHUNK: usize = 1 << 20;
/// Values up to this size are read into a buffer allocated at their announced size (already
/// checked against the value limit); larger ones grow as their bytes arrive.
const SMALL_VALUE: usize = 64 << 10;

/// One TCP (or other) stream carrying protocol messages, buffered both ways.
///
/// Reads are exact: a stream that ends inside a field is [`Error::Truncated`]. Writes are
/// buffered until [`Connection::flush`], so that a whole answer leaves in one syscall.
pub struct Connection<S> {
    /// The stream, buffered so that a 23-byte request is one read syscall, and wrapped in
    /// per-operation timeouts so that a silent peer cannot hold a task for ever.
    stream: BufStream<Pin<Box<TimeoutStream<S>>>>,
    /// How PeerAddresses are encoded on this ring; fixed per node.
    encoding: AddressEncoding,
    /// Size and time limits applied to everything read.
    limits: Limits,
    /// The last status byte written, until [`Connection::take_last_status`]: a server's answer
    /// to a request, for the node's metrics.
    last_status: Option<Status>,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    pub fn new(stream: S, encoding: AddressEncoding, limits: Limits) -> Connection<S> {
        Connection::with_buffers(stream, encoding, limits, 8 << 10)
    }

    /// A connection with `buffer`-byte read and write buffers (bulk transfers want more than
    /// the 8 KiB a request connection gets).
    pub fn with_buffers(
        stream: S,
        encoding: AddressEncoding,
        limits: Limits,
        buffer: usize,
    ) -> Connection<S> {
        let mut timed = TimeoutStream::new(stream);
        timed.set_read_timeout(limits.io_timeout);
        timed.set_write_timeout(limits.io_timeout);
        Connection {
            stream: BufStream::with_capacity(buffer, buffer, Box::pin(timed)),
            encoding,
            limits,
            last_status: None,
        }
    }

    pub fn encoding(&self) -> AddressEncoding {
        self.encoding
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The underlying stream (e.g. for its peer address).
    pub fn get_ref(&self) -> &S {
        self.stream.get_ref().as_ref().get_ref().get_ref()
    }

    /// Changes how long a read or a write may stall from now on: a client waiting for an
    /// answer that takes long to prepare (the durable write of a large INS).
    pub fn set_io_timeout(&mut self, t: Option<Duration>) {
        self.limits.io_timeout = t;
        let s = self.stream.get_mut().as_mut();
        s.set_read_timeout_pinned(t);
        self.stream.get_mut().as_mut().set_write_timeout_pinned(t);
    }

    fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.stream.get_mut().as_mut().set_read_timeout_pinned(t);
    }

    /// Waits for the next request. `Ok(None)` when the peer closed the connection cleanly
    /// between two requests; an error for an unknown command or a request cut short.
    pub async fn read_request(&mut self) -> Result<Option<Request>> {
        self.set_read_timeout(self.limits.idle_timeout);
        let first = self.stream.fill_buf().await.map_err(Error::from_io)?;
        if first.is_empty() {
            return Ok(None);
        }
        self.set_read_timeout(self.limits.io_timeout);
        let mut cmd = [0u8; 3];
        self.read_exact(&mut cmd).await?;
        let req = match &cmd {
            b"INS" => Request::Ins(self.read_key().await?),
            b"REM" => Request::Rem(self.read_key().await?),
            b"GET" => Request::Get(self.read_key().await?),
            b"EXI" => Request::Exi(self.read_key().await?),
            b"OWN" => Request::Own(self.read_key().await?),
            b"CON" => Request::Con(self.read_addr().await?),
            b"DIS" => Request::Dis(self.read_addr().await?),
            b"PUL" => Request::Pul,
            b"INF" => Request::Inf,
            b"ABD" => Request::Abd,
            b"VCN" => Request::Vcn(self.read_addr().await?),
            b"VDS" => Request::Vds(self.read_addr().await?),
            b"VIN" => Request::Vin(self.read_key().await?),
            b"VRP" => Request::Vrp(self.read_int().await?),
            b"VDG" => Request::Vdg(
                self.read_key().await?,
                self.read_key().await?,
                self.read_int().await?,
            ),
            b"VKL" => Request::Vkl(
                self.read_key().await?,
                self.read_key().await?,
                self.read_int().await?,
            ),
            b"VGT" => Request::Vgt(self.read_key().await?),
            b"VCC" => Request::Vcc(self.read_addr().await?),
            other => {
                return Err(Error::UnknownCommand(
                    String::from_utf8_lossy(other).escape_debug().to_string(),
                ))
            }
        };
        Ok(Some(req))
    }

    /// Writes a request: its command and what follows it in the same message (a HashKey or a
    /// PeerAddress), and flushes. What an exchange sends after the first answer (INS's value,
    /// CON's and DIS's entries) its caller writes.
    pub async fn write_request(&mut self, req: &Request) -> Result<()> {
        self.write_raw(req.command()).await?;
        match req {
            Request::Ins(k)
            | Request::Rem(k)
            | Request::Get(k)
            | Request::Exi(k)
            | Request::Own(k)
            | Request::Vin(k)
            | Request::Vgt(k) => self.write_key(k).await?,
            Request::Vrp(n) => self.write_int(*n).await?,
            Request::Vdg(from, to, n) | Request::Vkl(from, to, n) => {
                self.write_key(from).await?;
                self.write_key(to).await?;
                self.write_int(*n).await?;
            }
            Request::Con(a)
            | Request::Dis(a)
            | Request::Vcn(a)
            | Request::Vds(a)
            | Request::Vcc(a) => self.write_addr(a).await?,
            Request::Pul | Request::Inf | Request::Abd => {}
        }
        self.flush().await
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf).await.map_err(Error::from_io)?;
        Ok(())
    }

    pub async fn read_key(&mut self) -> Result<HashKey> {
        let mut k = [0u8; 20];
        self.read_exact(&mut k).await?;
        Ok(HashKey(k))
    }

    pub async fn read_int(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b).await?;
        Ok(u64::from_be_bytes(b))
    }

    pub async fn read_status(&mut self) -> Result<Status> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b).await?;
        Status::from_byte(b[0])
    }

    /// The kind byte of a versioned entry (extension `versions/1`).
    pub async fn read_kind(&mut self) -> Result<Kind> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b).await?;
        Kind::from_byte(b[0])
    }

    /// A versioned entry's version, kind and value (extension `versions/1`): `None` is a
    /// tombstone.
    pub async fn write_versioned(&mut self, version: u64, value: Option<&[u8]>) -> Result<()> {
        self.write_int(version).await?;
        match value {
            Some(v) => {
                self.write_kind(Kind::Value).await?;
                self.write_value(v).await
            }
            None => self.write_kind(Kind::Tombstone).await,
        }
    }

    /// What [`Connection::write_versioned`] writes: the version, and the value or `None` for a
    /// tombstone (the value checked against the limit before it is read).
    pub async fn read_versioned(&mut self) -> Result<(u64, Option<Vec<u8>>)> {
        let version = self.read_int().await?;
        let value = match self.read_kind().await? {
            Kind::Tombstone => None,
            Kind::Value => Some(self.read_value().await?),
        };
        Ok((version, value))
    }

    /// A PeerAddress in this connection's encoding.
    pub async fn read_addr(&mut self) -> Result<PeerAddr> {
        match self.encoding {
            AddressEncoding::Compact => {
                let mut b = [0u8; 6];
                self.read_exact(&mut b).await?;
                Ok(PeerAddr::new(
                    [b[0], b[1], b[2], b[3]].into(),
                    u16::from_be_bytes([b[4], b[5]]),
                ))
            }
            AddressEncoding::Text => {
                let n = self.read_int().await?;
                if n > MAX_TEXT_ADDRESS {
                    return Err(Error::BadAddress(format!(
                        "text address of {n} bytes (limit {MAX_TEXT_ADDRESS})"
                    )));
                }
                let mut b = [0u8; MAX_TEXT_ADDRESS as usize];
                let b = &mut b[..n as usize];
                self.read_exact(b).await?;
                let text = std::str::from_utf8(b)
                    .map_err(|_| Error::BadAddress("text address is not ASCII".into()))?;
                parse_addr(text)
            }
        }
    }

    /// The Int valSize of a Value, checked against the limit before anything is allocated.
    pub async fn read_value_len(&mut self) -> Result<u64> {
        let n = self.read_int().await?;
        if n > self.limits.max_value {
            return Err(Error::ValueTooLarge {
                size: n,
                limit: self.limits.max_value,
            });
        }
        Ok(n)
    }

    /// The `n` bytes of a Value whose length was already read and checked.
    pub async fn read_value_bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        let n = usize::try_from(n).map_err(|_| Error::ValueTooLarge {
            size: n,
            limit: self.limits.max_value,
        })?;
        if n <= SMALL_VALUE {
            // Small enough to allocate up front: one exact read, no growth. (Growing, tokio's
            // read_to_end doubled the buffer to probe for the end of every value: a realloc and
            // a copy per request.)
            let mut out = vec![0u8; n];
            self.stream
                .read_exact(&mut out)
                .await
                .map_err(Error::from_io)?;
            return Ok(out);
        }
        // Capacity grows with what arrives (no zero-filling, no trusting the length).
        let mut out = Vec::with_capacity(n.min(READ_CHUNK));
        let got = (&mut self.stream)
            .take(n as u64)
            .read_to_end(&mut out)
            .await
            .map_err(Error::from_io)?;
        if got < n {
            return Err(Error::Truncated);
        }
        Ok(out)
    }

    /// A whole Value: its length (checked) and then its bytes.
    pub async fn read_value(&mut self) -> Result<Vec<u8>> {
        let n = self.read_value_len().await?;
        self.read_value_bytes(n).await
    }

    /// [`Connection::read_value`] where the exchange has a Status left to send: a valSize over
    /// the limit is answered `F` (flushed) before the error ends the connection, without the
    /// value being read or allocated (PROTOCOL.md 5).
    pub async fn read_value_or_refuse(&mut self) -> Result<Vec<u8>> {
        match self.read_value().await {
            Err(e @ Error::ValueTooLarge { .. }) => {
                self.write_status(Status::F).await?;
                self.flush().await?;
                Err(e)
            }
            r => r,
        }
    }

    async fn write_all(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b).await.map_err(Error::from_io)
    }

    pub async fn write_status(&mut self, s: Status) -> Result<()> {
        self.last_status = Some(s);
        self.write_all(&[s.byte()]).await
    }

    pub async fn write_kind(&mut self, k: Kind) -> Result<()> {
        self.write_all(&[k.byte()]).await
    }

    /// The last status written since the previous call, if any (an INS's final answer, not its
    /// first `T`).
    pub fn take_last_status(&mut self) -> Option<Status> {
        self.last_status.take()
    }

    pub async fn write_int(&mut self, n: u64) -> Result<()> {
        self.write_all(&n.to_be_bytes()).await
    }

    pub async fn write_key(&mut self, k: &HashKey) -> Result<()> {
        self.write_all(k.as_bytes()).await
    }

    /// A Value: its length, then its bytes.
    pub async fn write_value(&mut self, v: &[u8]) -> Result<()> {
        self.write_int(v.len() as u64).await?;
        self.write_all(v).await
    }

    /// Raw bytes, e.g. a command name.
    pub async fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        self.write_all(b).await
    }

    /// A PeerAddress in this connection's encoding.
    pub async fn write_addr(&mut self, a: &PeerAddr) -> Result<()> {
        match self.encoding {
            AddressEncoding::Compact => {
                let mut b = [0u8; 6];
                b[..4].copy_from_slice(&a.ip().octets());
                b[4..].copy_from_slice(&a.port().to_be_bytes());
                self.write_all(&b).await
            }
            AddressEncoding::Text => self.write_value(a.to_string().as_bytes()).await,
        }
    }

    /// Sends everything buffered.
    pub async fn flush(&mut self) -> Result<()> {
        self.stream.flush().await.map_err(Error::from_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        enc: AddressEncoding,
    ) -> (
        Connection<tokio::io::DuplexStream>,
        Connection<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (
            Connection::new(a, enc, Limits::default()),
            Connection::new(b, enc, Limits::default()),
        )
    }

    #[tokio::test]
    async fn addresses_round_trip_in_both_encodings() {
        for enc in [AddressEncoding::Compact, AddressEncoding::Text] {
            let (mut a, mut b) = pair(enc);
            let addr: PeerAddr = "127.0.0.1:5000".parse().unwrap();
            a.write_raw(b"CON").await.unwrap();
            a.write_addr(&addr).await.unwrap();
            a.flush().await.unwrap();
            assert_eq!(b.read_request().await.unwrap(), Some(Request::Con(addr)));
        }
    }

    #[tokio::test]
    async fn compact_address_bytes_match_the_protocol_example() {
        let (mut a, b) = pair(AddressEncoding::Compact);
        a.write_addr(&"127.0.0.1:5000".parse().unwrap())
            .await
            .unwrap();
        a.flush().await.unwrap();
        drop(a);
        let mut raw = Vec::new();
        let mut inner = b.stream.into_inner();
        inner.read_to_end(&mut raw).await.unwrap();
        assert_eq!(raw, [0x7f, 0, 0, 1, 0x13, 0x88]);
    }

    #[tokio::test]
    async fn oversized_value_is_refused_before_reading_it() {
        let (mut a, mut b) = pair(AddressEncoding::Compact);
        a.write_int(u64::MAX).await.unwrap();
        a.flush().await.unwrap();
        assert!(matches!(
            b.read_value().await,
            Err(Error::ValueTooLarge { size: u64::MAX, .. })
        ));
    }

    #[tokio::test]
    async fn clean_close_between_requests_is_none_and_inside_is_truncated() {
        let (a, mut b) = pair(AddressEncoding::Compact);
        drop(a);
        assert!(b.read_request().await.unwrap().is_none());
        let (mut a, mut b) = pair(AddressEncoding::Compact);
        a.write_raw(b"GET\x01\x02").await.unwrap();
        a.flush().await.unwrap();
        drop(a);
        assert!(matches!(b.read_request().await, Err(Error::Truncated)));
    }

    #[tokio::test]
    async fn every_request_written_reads_back_as_itself_in_both_encodings() {
        let key = HashKey::of(b"apple");
        let addr: PeerAddr = "127.0.0.1:5000".parse().unwrap();
        let all = Request::one_of_each(key, addr);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}: its place in the command table");
        }
        for enc in [AddressEncoding::Compact, AddressEncoding::Text] {
            let (mut a, mut b) = pair(enc);
            for req in &all {
                a.write_request(req).await.unwrap();
                assert_eq!(b.read_request().await.unwrap().as_ref(), Some(req), "{enc}");
            }
        }
    }

    /// Round trips of every request and every answer, in both encodings, over arbitrary keys,
    /// addresses and values: written with the real writer, read back with the reader its
    /// receiver uses (`node/server.rs`, `client.rs`, `node/handoff/`), equal, and nothing left.
    mod round_trips {
        use super::*;
        use proptest::prelude::*;

        fn arb_key() -> impl Strategy<Value = HashKey> {
            proptest::array::uniform20(any::<u8>()).prop_map(HashKey)
        }

        fn arb_addr() -> impl Strategy<Value = PeerAddr> {
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| PeerAddr::new(ip.into(), port))
        }

        fn arb_encoding() -> impl Strategy<Value = AddressEncoding> {
            prop_oneof![Just(AddressEncoding::Compact), Just(AddressEncoding::Text)]
        }

        fn arb_status() -> impl Strategy<Value = Status> {
            prop_oneof![Just(Status::T), Just(Status::F), Just(Status::N)]
        }

        fn arb_request() -> impl Strategy<Value = Request> {
            prop_oneof![
                arb_key().prop_map(Request::Ins),
                arb_key().prop_map(Request::Rem),
                arb_key().prop_map(Request::Get),
                arb_key().prop_map(Request::Exi),
                arb_key().prop_map(Request::Own),
                arb_addr().prop_map(Request::Con),
                arb_addr().prop_map(Request::Dis),
                Just(Request::Pul),
                Just(Request::Inf),
                Just(Request::Abd),
                arb_addr().prop_map(Request::Vcn),
                arb_addr().prop_map(Request::Vds),
                arb_key().prop_map(Request::Vin),
                any::<u64>().prop_map(Request::Vrp),
                (arb_key(), arb_key(), any::<u64>()).prop_map(|(a, b, n)| Request::Vdg(a, b, n)),
                (arb_key(), arb_key(), any::<u64>()).prop_map(|(a, b, n)| Request::Vkl(a, b, n)),
                arb_key().prop_map(Request::Vgt),
                arb_addr().prop_map(Request::Vcc),
            ]
        }

        /// Mostly short values, some on either side of the reader's two switches (64 KiB: exact
        /// read or growing; 1 MiB: its growth step).
        fn arb_value() -> impl Strategy<Value = Vec<u8>> {
            let sized = |lo: usize, hi: usize| {
                (lo..hi, any::<u8>()).prop_map(|(n, b)| (0..n).map(|i| b ^ i as u8).collect())
            };
            prop_oneof![
                8 => proptest::collection::vec(any::<u8>(), 0..300),
                2 => sized(SMALL_VALUE - 2, SMALL_VALUE + 3),
                1 => sized(READ_CHUNK - 1, READ_CHUNK + 2),
            ]
        }

        /// Every answer of PROTOCOL.md, as one unit each: what a peer sends back after a
        /// request, read as its asker reads it.
        #[derive(Clone, Debug, PartialEq)]
        enum Answer {
            /// PUL, EXI, REM, either status of INS, CON's and DIS's first and last.
            Status(Status),
            /// OWN, ABD.
            Addr(PeerAddr),
            /// GET: `N`, `F`, or `T` and the value.
            Get(Option<Vec<u8>>, Status),
            /// INF.
            Inf(Vec<u8>),
            /// What follows CON's or DIS's `T`: two successors, the count, the entries.
            Range {
                s1: PeerAddr,
                s2: PeerAddr,
                entries: Vec<(HashKey, Vec<u8>)>,
            },
        }

        fn arb_answer() -> impl Strategy<Value = Answer> {
            prop_oneof![
                arb_status().prop_map(Answer::Status),
                arb_addr().prop_map(Answer::Addr),
                arb_value().prop_map(|v| Answer::Get(Some(v), Status::T)),
                prop_oneof![Just(Status::F), Just(Status::N)].prop_map(|s| Answer::Get(None, s)),
                arb_value().prop_map(Answer::Inf),
                (
                    arb_addr(),
                    arb_addr(),
                    proptest::collection::vec((arb_key(), arb_value()), 0..4)
                )
                    .prop_map(|(s1, s2, entries)| Answer::Range {
                        s1,
                        s2,
                        entries
                    }),
            ]
        }

        async fn write_answer<S: AsyncRead + AsyncWrite>(c: &mut Connection<S>, a: &Answer) {
            match a {
                Answer::Status(s) => c.write_status(*s).await.unwrap(),
                Answer::Addr(addr) => c.write_addr(addr).await.unwrap(),
                Answer::Get(v, s) => {
                    c.write_status(*s).await.unwrap();
                    if let Some(v) = v {
                        c.write_value(v).await.unwrap();
                    }
                }
                Answer::Inf(v) => c.write_value(v).await.unwrap(),
                Answer::Range { s1, s2, entries } => {
                    c.write_addr(s1).await.unwrap();
                    c.write_addr(s2).await.unwrap();
                    c.write_int(entries.len() as u64).await.unwrap();
                    for (k, v) in entries {
                        c.write_key(k).await.unwrap();
                        c.write_value(v).await.unwrap();
                    }
                }
            }
        }

        /// Reads an answer of the same kind as `like`, as its asker does.
        async fn read_answer<S: AsyncRead + AsyncWrite>(
            c: &mut Connection<S>,
            like: &Answer,
        ) -> Result<Answer> {
            Ok(match like {
                Answer::Status(_) => Answer::Status(c.read_status().await?),
                Answer::Addr(_) => Answer::Addr(c.read_addr().await?),
                Answer::Get(..) => match c.read_status().await? {
                    Status::T => Answer::Get(Some(c.read_value().await?), Status::T),
                    other => Answer::Get(None, other),
                },
                Answer::Inf(_) => Answer::Inf(c.read_value().await?),
                Answer::Range { .. } => {
                    let s1 = c.read_addr().await?;
                    let s2 = c.read_addr().await?;
                    let n = c.read_int().await?;
                    let mut entries = Vec::new();
                    for _ in 0..n {
                        let k = c.read_key().await?;
                        let len = c.read_value_len().await?;
                        entries.push((k, c.read_value_bytes(len).await?));
                    }
                    Answer::Range { s1, s2, entries }
                }
            })
        }

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        }

        /// The bytes PROTOCOL.md section 1 gives for `req`, built by hand, not by the writer.
        fn spec_bytes(req: &Request, enc: AddressEncoding) -> Vec<u8> {
            let mut out = req.command().to_vec();
            match req {
                Request::Ins(k)
                | Request::Rem(k)
                | Request::Get(k)
                | Request::Exi(k)
                | Request::Own(k)
                | Request::Vin(k)
                | Request::Vgt(k) => out.extend(k.0),
                Request::Vrp(n) => out.extend(n.to_be_bytes()),
                Request::Vdg(from, to, n) | Request::Vkl(from, to, n) => {
                    out.extend(from.0);
                    out.extend(to.0);
                    out.extend(n.to_be_bytes());
                }
                Request::Con(a)
                | Request::Dis(a)
                | Request::Vcn(a)
                | Request::Vds(a)
                | Request::Vcc(a) => match enc {
                    AddressEncoding::Compact => {
                        out.extend(a.ip().octets());
                        out.extend(a.port().to_be_bytes());
                    }
                    AddressEncoding::Text => {
                        let text = format!("{}:{}", a.ip(), a.port());
                        out.extend((text.len() as u64).to_be_bytes());
                        out.extend(text.as_bytes());
                    }
                },
                Request::Pul | Request::Inf | Request::Abd => {}
            }
            out
        }

        proptest! {
            #[test]
            fn requests_read_back_as_written(
                reqs in proptest::collection::vec(arb_request(), 1..12),
                enc in arb_encoding(),
            ) {
                runtime().block_on(async {
                    let (a, b) = tokio::io::duplex(1 << 16);
                    let mut w = Connection::new(a, enc, Limits::default());
                    let mut r = Connection::new(b, enc, Limits::default());
                    for req in &reqs {
                        w.write_request(req).await.unwrap();
                        prop_assert_eq!(r.read_request().await.unwrap(), Some(*req));
                    }
                    drop(w);
                    prop_assert!(r.read_request().await.unwrap().is_none());
                    Ok(())
                })?;
            }

            #[test]
            fn requests_are_the_bytes_of_the_protocol(req in arb_request(), enc in arb_encoding()) {
                runtime().block_on(async {
                    let (a, mut b) = tokio::io::duplex(1 << 16);
                    let mut w = Connection::new(a, enc, Limits::default());
                    w.write_request(&req).await.unwrap();
                    drop(w);
                    let mut raw = Vec::new();
                    b.read_to_end(&mut raw).await.unwrap();
                    prop_assert_eq!(raw, spec_bytes(&req, enc));
                    Ok(())
                })?;
            }

            #[test]
            fn answers_read_back_as_written(
                answers in proptest::collection::vec(arb_answer(), 1..6),
                enc in arb_encoding(),
            ) {
                runtime().block_on(async {
                    let (a, b) = tokio::io::duplex(1 << 16);
                    let mut w = Connection::new(a, enc, Limits::default());
                    let mut r = Connection::new(b, enc, Limits::default());
                    // Side by side: a value over the pipe's 64 KiB waits for its reader.
                    let writer = async {
                        for ans in &answers {
                            write_answer(&mut w, ans).await;
                        }
                        w.flush().await.unwrap();
                        drop(w);
                    };
                    let reader = async {
                        let mut back = Vec::new();
                        for ans in &answers {
                            back.push(read_answer(&mut r, ans).await.unwrap());
                        }
                        // Nothing left over: the stream ends where the answers do.
                        let rest = r.read_request().await.unwrap();
                        (back, rest)
                    };
                    let ((), (back, rest)) = tokio::join!(writer, reader);
                    prop_assert_eq!(&back, &answers);
                    prop_assert!(rest.is_none());
                    Ok(())
                })?;
            }

            /// A value over the limit is refused from its length alone, whatever follows.
            #[test]
            fn a_value_over_the_limit_is_refused(limit in 0u64..100_000, over in 1u64..u64::MAX / 2) {
                runtime().block_on(async {
                    let (a, b) = tokio::io::duplex(1 << 16);
                    let limits = Limits { max_value: limit, ..Limits::default() };
                    let mut w = Connection::new(a, AddressEncoding::Compact, limits);
                    let mut r = Connection::new(b, AddressEncoding::Compact, limits);
                    w.write_int(limit + over).await.unwrap();
                    w.flush().await.unwrap();
                    let got = r.read_value().await;
                    prop_assert!(
                        matches!(got, Err(Error::ValueTooLarge { size, .. }) if size == limit + over),
                        "{:?}", got
                    );
                    Ok(())
                })?;
            }
        }
    }
}
