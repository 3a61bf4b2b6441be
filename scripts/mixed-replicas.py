#!/usr/bin/env python3
"""Copies and failover in a MIXED ring: dht-store nodes with --replicas 2 beside reference peers
of another implementation (../shared/conformance/refnode.py), real processes on 127.0.0.1.

    python3 scripts/mixed-replicas.py --bin target/release/dht-store               # both encodings
    python3 scripts/mixed-replicas.py --bin target/release/dht-store --address-encoding text

The conformance checker (dhtcheck.py --suite mixed) shows that such a ring serves every key at its
owner; this shows that the dht-store peers in it keep the copies they can (issue 17,
docs/EXTENSIONS.md `replicas/1`) and fail over with them. Per address encoding:

  ring   Ports are drawn until the ids lie in the ring order B0 < B1 < B2 < R3 < B4 < R5
         (cyclic, well apart): B = dht-store (--replicas 2, DHT_STORE_MAINTENANCE_INTERVAL_MS=200,
         DHT_STORE_REPAIR_INTERVAL_SECS=5, no other DHT_STORE_* variable), R = refnode. So B2's
         two predecessors are dht-store nodes (B1, B0: two replicas), B4 has a refnode right
         below it (R3, B2: one replica, B2), as B0 (R5, B4) and B1 (B0, R5) do. B0 starts alone
         and takes the early keys (every node id, id - 1 and id + 1, and more); B1 joins through
         B0, B2 through B1 (three dht-store nodes: each holds everything), then R3 joins through
         B0 (B2 serves the CON: binary -> refnode), B4 through R3 (R3 serves: refnode ->
         binary), R5 through B4 (B4 serves: binary -> refnode). So copies made while only
         dht-store nodes were there must go once refnodes own those keys. After each join the
         ABD answers of the whole ring are checked (polled until the ring settles).
  writes The late keys, each INS at the owner an OWN walk from a random node found; then every
         key is served by its owner (GET, right value) and every other node answers EXI N.
  copies Extension command VGT, sent only to dht-store nodes (never to a refnode), polled until
         anti-entropy settles: for each key owned by a dht-store node O, every dht-store node
         among O's 2 nearest predecessors holds it with O's version and value; no dht-store node
         holds a key owned by a refnode; no dht-store node holds a key of a dht-store owner it
         is not a replica of (stray: it holds its arc and its 2 successors' arcs; a range it no
         longer holds after a join it did not serve is released by its periodic repair pass,
         hence the repair interval of 5 s instead of 60, which bounds that wait). INF of
         each dht-store node advertises replicas/1 and says `replicas 2 (held by: ...)` naming
         exactly those dht-store predecessors, nearest first (never a refnode).
  fail   SIGKILL of B2 (its predecessor B1 is a dht-store node). Polled: every key B2 owned is
         served by B1 with its value, and B1 never answers F (absent) or a wrong value for one
         of them on the way (it takes over from its copies, not empty); every other key is still
         served by its owner and every non-owner answers N; keys written after the death are
         accepted; then the copies and INF checks again on the ring left (B1's merged arc is
         held by B0; B4's arc, whose replica was B2, by B1 now).

Each check prints one line (ok / FAIL with what differed); a closing line counts them. Exit
status 1 if any failed, 2 on a usage error. Every wait has a deadline, and --time-limit bounds an
encoding's run as a whole; every process started is killed and the temporary directory removed
at the end, failure or not (--keep keeps the directory; on a failure the tail of each node's log
is printed first). Python 3 stdlib only.
"""
import argparse, hashlib, os, random, re, shutil, signal, socket, struct, subprocess, sys, tempfile, time

RING = 1 << 160
K = 2                     # --replicas of every dht-store node here
MAINTENANCE_MS = 200      # DHT_STORE_MAINTENANCE_INTERVAL_MS
EARLY_KEYS = 120          # written at B0 alone, before the others join (edge keys included)
LATE_KEYS = 300           # written through the ring once it formed
POST_KEYS = 40            # written through the ring after the failover
REPAIR_SECS = 5           # DHT_STORE_REPAIR_INTERVAL_SECS (see "stray" below)
SETTLE = 20.0             # seconds allowed for the ring, anti-entropy, releases and failover to settle
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REF = os.path.normpath(os.path.join(REPO, "..", "shared", "conformance", "refnode.py"))


def sha1_int(b):
    return int.from_bytes(hashlib.sha1(b).digest(), "big")


def peer_id(host, port):
    return sha1_int(f"{host}:{port}".encode())


def in_arc(k, a, b):
    """k lies in the half-open arc [a, b), going upward and wrapping; a == b is the whole circle."""
    return a == b or (k - a) % RING < (b - a) % RING


class Closed(Exception):
    pass


class Overtime(BaseException):
    """--time-limit passed: not an Exception, so that no check swallows it."""


class Conn:
    """One TCP connection speaking ../shared/PROTOCOL.md (and VGT, docs/EXTENSIONS.md)."""

    def __init__(self, host, port, encoding, timeout=10.0):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = encoding

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def send(self, b):
        self.s.sendall(b)

    def recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise Closed(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def status(self):
        return self.recv(1).decode("ascii", "replace")

    def int(self):
        return struct.unpack(">Q", self.recv(8))[0]

    def value(self):
        return self.recv(self.int())

    def address(self):
        if self.enc == "compact":
            raw = self.recv(6)
            return (socket.inet_ntoa(raw[:4]), struct.unpack(">H", raw[4:])[0])
        text = self.recv(self.int()).decode()
        host, port = text.rsplit(":", 1)
        return (host, int(port))

    @staticmethod
    def key(k):
        return k.to_bytes(20, "big")

    def pul(self):
        self.send(b"PUL")
        return self.status()

    def own(self, k):
        self.send(b"OWN" + self.key(k))
        return self.address()

    def ins(self, k, v):
        self.send(b"INS" + self.key(k))
        st = self.status()
        if st != "T":
            return st
        self.send(struct.pack(">Q", len(v)) + v)
        return self.status()

    def get(self, k):
        self.send(b"GET" + self.key(k))
        st = self.status()
        return (st, self.value() if st == "T" else None)

    def exi(self, k):
        self.send(b"EXI" + self.key(k))
        return self.status()

    def inf(self):
        self.send(b"INF")
        return self.value().decode("utf-8", "replace")

    def abd(self):
        self.send(b"ABD")
        return self.address()

    def vgt(self, k):
        """Extension replicas/1: None (F), or (version, 'V', value) / (version, 'X', None)."""
        self.send(b"VGT" + self.key(k))
        st = self.status()
        if st == "F":
            return None
        if st != "T":
            raise AssertionError(f"VGT answered {st!r} (T or F expected)")
        version, kind = self.int(), self.recv(1)
        if kind == b"V":
            return (version, "V", self.value())
        if kind == b"X":
            return (version, "X", None)
        raise AssertionError(f"VGT entry of kind {kind!r} ('V' or 'X' expected)")


def command_for(path):
    """The argv prefix that runs PATH: the file itself, or python3 PATH for a script not marked executable."""
    path = os.path.abspath(path)
    if path.endswith(".py") and not os.access(path, os.X_OK):
        return [sys.executable, path]
    return [path]


def die_with_parent():
    """In the child, before exec: SIGKILL when this script dies, so that even a killed run leaves no node."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Node:
    def __init__(self, cmd, root, port, encoding, label, store, extra=(), env=None, host="127.0.0.1"):
        self.cmd, self.port, self.host, self.encoding = list(cmd), port, host, encoding
        self.label, self.store, self.extra, self.env = label, store, list(extra), env
        self.data = os.path.join(root, f"node{port}")
        self.log_path = os.path.join(root, f"node{port}.log")
        self.proc = None

    @property
    def id(self):
        return peer_id(self.host, self.port)

    @property
    def addr(self):
        return (self.host, self.port)

    def start(self, join=None):
        args = [*self.cmd, "--data", self.data, "--port", str(self.port), "--host", self.host, *self.extra]
        if join:
            args += ["--join", f"{join.host}:{join.port}"]
        if self.encoding != "compact":
            args += ["--address-encoding", self.encoding]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=self.env, preexec_fn=die_with_parent)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} at start")
            try:
                c = Conn(self.host, self.port, self.encoding, timeout=2.0)
                try:
                    if c.pul() == "T":
                        return self
                finally:
                    c.close()
            except (OSError, Closed):
                time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not answer PUL within 30 s")

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_used_ports = set()


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _used_ports:
            _used_ports.add(p)
            return p


def spaced_ports(n, host="127.0.0.1", gap=RING // 16):
    """n free ports whose ids lie at least `gap` apart all round the circle, sorted by id."""
    chosen = []
    for _ in range(4000):
        p = free_port()
        i = peer_id(host, p)
        if all(min((i - peer_id(host, q)) % RING, (peer_id(host, q) - i) % RING) >= gap for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                return sorted(chosen, key=lambda q: peer_id(host, q))
    raise RuntimeError(f"found no {n} free ports with ids spread round the ring")


class Pool:
    """One connection per node, reused, reopened once if the node closed it. Extension commands
    go through ext(), which refuses a node that is not a dht-store node."""

    def __init__(self, encoding):
        self.enc, self.conns = encoding, {}

    def ask(self, nd, fn):
        for attempt in (0, 1):
            c = self.conns.get(nd.port)
            if c is None:
                c = self.conns[nd.port] = Conn(nd.host, nd.port, self.enc)
            try:
                return fn(c)
            except (Closed, OSError):
                self.conns.pop(nd.port).close()
                if attempt:
                    raise

    def ext(self, nd, fn):
        if not nd.store:
            raise RuntimeError(f"bug in this script: an extension command for {nd.label}, a refnode")
        return self.ask(nd, fn)

    def drop(self, nd):
        c = self.conns.pop(nd.port, None)
        if c:
            c.close()

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns.clear()


class Suite:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name, fn):
        """Runs one check; True if it passed. A failed check never stops the others."""
        t = time.time()
        try:
            note = fn()
            self.passed += 1
            print(f"ok    {name} ({time.time() - t:.2f}s)" + (f": {note}" if note else ""), flush=True)
            return True
        except Exception as e:
            self.failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            return False


def summary(errs, limit=4):
    return f"{len(errs)}: " + "; ".join(errs[:limit]) + (" ..." if len(errs) > limit else "")


def poll(fn, deadline, every=0.3):
    """Calls fn() (a list of errors) until it returns none; raises with the last errors at the
    deadline. Returns the seconds it took."""
    t0 = time.time()
    end = t0 + deadline
    while True:
        try:
            errs = fn()
        except (OSError, Closed) as e:
            errs = [f"{type(e).__name__}: {e}"]
        if not errs:
            return time.time() - t0
        if time.time() > end:
            raise AssertionError(f"still after {deadline:.0f} s, {summary(errs)}")
        time.sleep(every)


def run_encoding(binary, ref, encoding, keep, time_limit):
    s = Suite()
    root = tempfile.mkdtemp(prefix=f"mixed-replicas-{encoding}-")
    host = "127.0.0.1"
    # The settings named here and built-in defaults only: no DHT_STORE_* of the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHT_STORE_")}
    env.update(DHT_STORE_MAINTENANCE_INTERVAL_MS=str(MAINTENANCE_MS), DHT_STORE_REPAIR_INTERVAL_SECS=str(REPAIR_SECS))
    ports = spaced_ports(6, host)
    roles = ["B0", "B1", "B2", "R3", "B4", "R5"]
    nodes = {}
    for role, port in zip(roles, ports):
        if role[0] == "B":
            nodes[role] = Node(binary, root, port, encoding, f"{role} (dht-store :{port})", True,
                               extra=["--replicas", str(K)], env=env)
        else:
            nodes[role] = Node(ref, root, port, encoding, f"{role} (refnode :{port})", False)
    B0, B1, B2, R3, B4, R5 = (nodes[r] for r in roles)
    names = {nd.addr: nd.label for nd in nodes.values()}
    live = []
    pool = Pool(encoding)

    # The keys: name -> key (its value is value_of(name)). The early ones hit every arc boundary.
    early = {}
    for nd in nodes.values():
        for d in (-1, 0, 1):
            early[f"id({nd.label.split()[0]}){d:+d}"] = (nd.id + d) % RING
    i = 0
    while len(early) < EARLY_KEYS:
        early[f"early-{i}"] = sha1_int(f"early-{encoding}-{i}".encode())
        i += 1
    late = {f"late-{i}": sha1_int(f"late-{encoding}-{i}".encode()) for i in range(LATE_KEYS)}
    post = {f"post-{i}": sha1_int(f"post-{encoding}-{i}".encode()) for i in range(POST_KEYS)}
    value_of = lambda name: f"{name}@{encoding}".encode()
    written = {}  # name -> key, once acknowledged

    # The model of the ring: live nodes sorted by id.
    order = lambda: sorted(live, key=lambda nd: nd.id)

    def successor(nd):
        r = order()
        return r[(r.index(nd) + 1) % len(r)]

    def preds(nd, k=K):
        """nd's k nearest predecessors, nearest first (fewer in a ring of fewer than k + 1)."""
        r = order()
        i = r.index(nd)
        return [r[(i - j) % len(r)] for j in range(1, min(k, len(r) - 1) + 1)]

    def owner(k):
        r = order()
        below = [nd for nd in r if nd.id <= k]
        return below[-1] if below else r[-1]

    def replicas_of(o):
        """The dht-store nodes that must hold copies of o's arc: those among its K nearest predecessors."""
        return [p for p in preds(o) if p.store] if o.store else []

    stores = lambda: [nd for nd in order() if nd.store]

    def abd_errors():
        errs = []
        for nd in order():
            got = pool.ask(nd, Conn.abd)
            if got != successor(nd).addr:
                errs.append(f"ABD at {nd.label} answered {names.get(got, got)}, its successor is {successor(nd).label}")
        return errs

    def join(J, via, server):
        def run():
            P = owner(J.id)
            if P is not server:
                raise AssertionError(f"the owner of id({J.label}) is {P.label}, not {server.label} (port choice)")
            J.start(join=via)
            live.append(J)
            took = poll(abd_errors, SETTLE)
            return f"CON served by {server.label}; ABD of the {len(live)} nodes right after {took:.1f}s"
        return run

    def write(items, label):
        def run():
            bad = []
            r = order()
            for name, k in items.items():
                start = random.choice(r)
                cur = start.addr
                for _ in range(64):
                    c = Conn(*cur, encoding)
                    try:
                        nxt = c.own(k)
                    finally:
                        c.close()
                    if nxt == cur:
                        break
                    cur = nxt
                if cur != owner(k).addr:
                    bad.append(f"OWN walk for {name} from {start.label} ended at {names.get(cur, cur)}, "
                               f"the owner is {owner(k).label}")
                    continue
                st = pool.ask(owner(k), lambda c: c.ins(k, value_of(name)))
                if st == "T":
                    written[name] = k
                else:
                    bad.append(f"INS {name} at {owner(k).label} answered {st}")
            if bad:
                raise AssertionError(summary(bad))
            per = {}
            for k in items.values():
                per[owner(k).label.split()[0]] = per.get(owner(k).label.split()[0], 0) + 1
            return f"{len(items)} {label} keys acknowledged (by owner: " + \
                ", ".join(f"{r} {n}" for r, n in sorted(per.items())) + ")"
        return run

    def served_errors(only=None):
        """Every written key (or those of `only`) GET T with its value at its owner, EXI N elsewhere."""
        errs = []
        for name, k in written.items():
            if only is not None and name not in only:
                continue
            o = owner(k)
            st, v = pool.ask(o, lambda c: c.get(k))
            if (st, v) != ("T", value_of(name)):
                errs.append(f"GET {name} at its owner {o.label}: {st}" + (" with a wrong value" if st == "T" else ""))
            for nd in order():
                if nd is not o:
                    st = pool.ask(nd, lambda c: c.exi(k))
                    if st != "N":
                        errs.append(f"EXI {name} at non-owner {nd.label}: {st}")
        return errs

    def copies_state():
        """VGT of every written key at every dht-store node. Returns (missing, plain, stray):
        a list of what the owner and its dht-store replicas lack or hold otherwise than the
        owner; and {(holder, owner): [key names]} of copies held of a refnode's keys, and of a
        dht-store owner's keys by a node that is not its replica."""
        missing, plain, stray = [], {}, {}
        for name, k in written.items():
            o = owner(k)
            holders = replicas_of(o)
            want = None
            if o.store:
                want = pool.ext(o, lambda c: c.vgt(k))
                if want is None or want[1:] != ("V", value_of(name)):
                    missing.append(f"{name} at its owner {o.label}: VGT " +
                                   ("F" if want is None else f"{want[1]}" + (" with another value" if want[1] == "V" else "")))
                    continue
            for nd in stores():
                if nd is o:
                    continue
                got = pool.ext(nd, lambda c: c.vgt(k))
                if nd in holders:
                    if got is None:
                        missing.append(f"{name} (owner {o.label}) absent at {nd.label}")
                    elif got != want:
                        missing.append(f"{name} (owner {o.label}) at {nd.label}: version {got[0]} {got[1]}, "
                                       f"the owner has {want[0]} {want[1]}" + ("" if got[2] == want[2] else ", another value"))
                elif got is not None:
                    (stray if o.store else plain).setdefault((nd.label, o.label), []).append(name)
        return missing, plain, stray

    def held_summary(held):
        return "; ".join(f"{h} holds {len(ns)} keys owned by {o} ({', '.join(ns[:4])}{', ...' if len(ns) > 4 else ''})"
                         for (h, o), ns in sorted(held.items()))

    def copies_checks(when):
        """Polls the copies until they are as they should be, or SETTLE passes; one check each
        for what is missing, copies of refnodes' keys and stray copies, with the time each took
        to settle."""
        snap = {}

        def run_missing():
            t0 = time.time()
            ok_since = [0.0, 0.0, 0.0]  # per part: since when it has been empty (None: not now)
            while True:
                snap["parts"] = parts = copies_state()
                now = time.time() - t0
                for i, part in enumerate(parts):
                    if part:
                        ok_since[i] = None
                    elif ok_since[i] is None:
                        ok_since[i] = now
                snap["since"], snap["took"] = list(ok_since), now
                if all(x is not None for x in ok_since) or now > SETTLE:
                    break
                time.sleep(0.3)
            missing = parts[0]
            if missing:
                raise AssertionError(f"after {now:.1f}s, {summary(missing)}")
            owned = sum(1 for k in written.values() if owner(k).store)
            copies = sum(len(replicas_of(owner(k))) for k in written.values())
            plan = "; ".join(f"{o.label.split()[0]} by [{', '.join(p.label.split()[0] for p in replicas_of(o))}]"
                             for o in stores())
            return f"{owned} keys, {copies} copies, complete after {ok_since[0]:.1f}s; arcs held: {plan}"

        def report(i, note):
            def run():
                if "parts" not in snap:
                    raise AssertionError("not run: the copies were not read")
                held = snap["parts"][i]
                if held:
                    raise AssertionError(f"after {snap['took']:.1f}s, {held_summary(held)}")
                return f"{note}, none after {snap['since'][i]:.1f}s"
            return run
        s.check(f"copies{when}: every dht-store owner's key is held by its dht-store replicas (VGT: same version and value)",
                run_missing)
        refs = sum(1 for k in written.values() if not owner(k).store)
        s.check(f"copies{when}: no dht-store node holds a key owned by a refnode",
                report(1, f"{refs} refnode keys asked at {len(stores())} dht-store nodes"))
        s.check(f"copies{when}: no dht-store node holds a key of an owner it is not a replica of "
                "(within the repair interval)", report(2, "its arc and its 2 successors' arcs only"))

    def inf_errors():
        errs = []
        for nd in stores():
            text = pool.ask(nd, Conn.inf)
            lines = text.splitlines()
            ext = [l for l in lines if l.startswith("extensions:")]
            if not ext or "replicas/1" not in ext[0].split():
                errs.append(f"{nd.label} INF does not advertise replicas/1 ({ext or 'no extensions line'})")
            line = [l for l in lines if l.startswith("replicas ")]
            m = re.fullmatch(r"replicas (\d+) \(held by: (.*)\)", line[0]) if line else None
            if not m:
                errs.append(f"{nd.label} INF has no 'replicas {K} (held by: ...)' line: {line}")
                continue
            held = [a.strip() for a in m.group(2).split(",") if a.strip()]
            want = [f"{p.host}:{p.port}" for p in replicas_of(nd)]
            plain = [a for a in held if a in {f"{p.host}:{p.port}" for p in nodes.values() if not p.store}]
            if m.group(1) != str(K) or held != want or plain:
                show = lambda xs: "[" + ", ".join(names.get((a.rsplit(':', 1)[0], int(a.rsplit(':', 1)[1])), a)
                                                  if ":" in a else a for a in xs) + "]"
                errs.append(f"{nd.label} INF says 'replicas {m.group(1)} (held by: {m.group(2)})' = {show(held)}, "
                            f"expected {K} held by {show(want)}" + (f"; it names refnodes {show(plain)}" if plain else ""))
        return errs

    def inf_check(when):
        def run():
            took = poll(inf_errors, SETTLE)
            return (f"{len(stores())} dht-store nodes; settled in {took:.1f}s; "
                    + "; ".join(f"{nd.label.split()[0]} held by [{', '.join(p.label.split()[0] for p in replicas_of(nd))}]"
                                for nd in stores()))
        s.check(f"INF{when}: each dht-store node advertises replicas/1 and names exactly its dht-store replicas", run)

    def on_alarm(*_):
        raise Overtime()

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(time_limit)
    t_start = time.time()
    print(f"== mixed ring, --address-encoding {encoding}: " +
          ", ".join(nd.label for nd in sorted(nodes.values(), key=lambda nd: nd.id)) + " (in id order)", flush=True)
    try:
        # ---- ring --------------------------------------------------------------------------
        def seed():
            B0.start()
            live.append(B0)
            return write(early, "early")()
        ok = s.check("ring: dht-store B0 alone takes the early keys (every node id, id - 1, id + 1)", seed)
        steps = [(B1, B0, B0, "dht-store B1 joins through B0"),
                 (B2, B1, B1, "dht-store B2 joins through B1"),
                 (R3, B0, B2, "refnode R3 joins through B0; dht-store B2 serves the CON"),
                 (B4, R3, R3, "dht-store B4 joins through R3; refnode R3 serves the CON"),
                 (R5, B4, B4, "refnode R5 joins through B4; dht-store B4 serves the CON")]
        for J, via, server, what in steps:
            ok = ok and s.check(f"ring: {what}", join(J, via, server))
        if not ok:
            raise AssertionError("the ring did not form: nothing else can be checked")

        # ---- writes ------------------------------------------------------------------------
        s.check(f"writes: {LATE_KEYS} keys written through the ring (OWN walk from a random node, INS at the owner)",
                write(late, "late"))
        def served():
            errs = served_errors()
            if errs:
                raise AssertionError(summary(errs))
            return f"{len(written)} keys on {len(live)} nodes"
        s.check("writes: every key is served by its owner (GET), every other node answers EXI N", served)

        # ---- copies ------------------------------------------------------------------------
        copies_checks("")
        inf_check("")

        # ---- failover ----------------------------------------------------------------------
        victim = B2
        heir = preds(victim, 1)[0]
        if not heir.store:
            raise AssertionError(f"bug in this script: {victim.label}'s predecessor {heir.label} is a refnode")
        had = {name for name, k in written.items() if owner(k) is victim}

        def failover():
            victim.kill(signal.SIGKILL)
            live.remove(victim)
            pool.drop(victim)
            t0 = time.time()
            gaps = []

            def taken_over():
                errs = []
                for name in had:
                    k = written[name]
                    st, v = pool.ask(heir, lambda c: c.get(k))
                    if st == "N":
                        errs.append(f"{name}: N at {heir.label} (not its key yet)")
                    elif (st, v) != ("T", value_of(name)):
                        what = "F (absent)" if st == "F" else f"{st}" + (" with a wrong value" if st == "T" else "")
                        gaps.append(f"{name} -> {what} at {time.time() - t0:.1f}s")
                        errs.append(f"{name}: {what} at {heir.label}")
                return errs
            took = poll(taken_over, SETTLE, every=0.1)
            if gaps:
                raise AssertionError(f"{heir.label} served {victim.label}'s keys after {took:.1f}s, but answered "
                                     f"on the way {summary(gaps)} (it must take over from its copies)")
            return f"{len(had)} keys of {victim.label} served by {heir.label} {took:.1f}s after the SIGKILL"
        if not s.check(f"fail: SIGKILL {victim.label}; its predecessor {heir.label} serves every key it owned, "
                       "never absent on the way", failover):
            raise AssertionError("no failover: the checks after it would not mean anything")

        def all_served():
            took = poll(served_errors, SETTLE)
            return f"{len(written)} keys on the {len(live)} nodes left, settled in {took:.1f}s"
        s.check("fail: every key is served by its owner on the ring left, every other node answers EXI N", all_served)
        s.check(f"fail: {POST_KEYS} keys written through the ring left are acknowledged", write(post, "post"))
        copies_checks(" after the failover")
        inf_check(" after the failover")
    except Overtime:
        s.failed += 1
        print(f"FAIL  --address-encoding {encoding}: over the time limit of {time_limit} s; stopped", flush=True)
    except Exception as e:
        s.failed += 1
        print(f"FAIL  --address-encoding {encoding}: {type(e).__name__}: {e}", flush=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        pool.close()
        for nd in nodes.values():
            nd.kill()
        if s.failed:
            for nd in sorted(nodes.values(), key=lambda nd: nd.id):
                try:
                    with open(nd.log_path, "rb") as f:
                        tail = f.read().decode("utf-8", "replace").splitlines()[-12:]
                except OSError:
                    continue
                print(f"---- last lines of the log of {nd.label}")
                for line in tail:
                    print(f"     {line[:300]}")
        if keep:
            print(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"== --address-encoding {encoding}: {s.passed} passed, {s.failed} failed in {time.time() - t_start:.1f}s",
          flush=True)
    return s


def main():
    ap = argparse.ArgumentParser(description="Copies and failover of dht-store nodes (--replicas 2) in a ring with refnodes.")
    ap.add_argument("--bin", required=True, help="the dht-store binary")
    ap.add_argument("--ref", default=DEFAULT_REF, help=f"the reference node (default {DEFAULT_REF})")
    ap.add_argument("--address-encoding", choices=["compact", "text", "both"], default="both")
    ap.add_argument("--time-limit", type=int, default=150, help="seconds one encoding may take in all (default 150)")
    ap.add_argument("--settle", type=float, default=SETTLE,
                    help=f"seconds each polled check waits for the ring to settle (default {SETTLE:.0f})")
    ap.add_argument("--keep", action="store_true", help="keep the data and logs folder")
    a = ap.parse_args()
    globals()["SETTLE"] = a.settle
    if not os.path.isfile(a.bin):
        ap.error(f"no binary at {a.bin} (build it: cargo build --release)")
    if not os.path.isfile(a.ref):
        ap.error(f"no reference node at {a.ref} (../shared beside the repository, or --ref PATH)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up of the finally blocks
    binary, ref = command_for(a.bin), command_for(a.ref)
    passed = failed = 0
    for enc in (["compact", "text"] if a.address_encoding == "both" else [a.address_encoding]):
        s = run_encoding(binary, ref, enc, a.keep, a.time_limit)
        passed, failed = passed + s.passed, failed + s.failed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
