#!/usr/bin/env python3
"""The Python package's benchmark: the same get/put workload against one real dht-store node,
by six clients in one run, so that every figure has its baselines beside it:

- ``cpr``: a pure-Python client written here that opens a connection per request, as the
  classroom interface does (every OWN of the walk and the request itself on a new connection);
- ``kept socket``: the same requests from pure Python on one connection kept open to the node
  (a ring of one: no walk), one after another: the round trip that any client of one
  request at a time pays, the floor of the ``Ring`` loop;
- ``Ring loop``: ``ring.put`` / ``ring.get`` called in a Python ``for`` loop;
- ``put_many`` / ``get_many``: the bulk calls;
- ``Rust loop`` and ``Rust xC``: ``examples/rust_load.rs``, the crate's Router driven from Rust
  with no Python and no CLI, one request after another, and C tasks at once.

    python3 python/bench/bench.py --bin target/release/dht-store \\
        --rust-load target/release/examples/rust_load [--rounds 3] [--quick]

Every value read back is checked (a wrong or missing one fails the run). Rounds alternate the
order of the clients (forward, then backward) so that drift on a shared machine hits all of
them; each ops/s figure is the median of its rounds, each ratio the median of the rounds' ratios
(a client against the cpr client of the same round). The goals of issue 18 are printed with
each ratio; nothing here asserts a speed.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import dht_store


# ---- the connection-per-request client (the classroom style), written from PROTOCOL.md ----

def _recv(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed inside an answer")
        b += c
    return b


class ConnPerRequest:
    """Every request on a connection of its own, closed after its answer."""

    def __init__(self, peer, encoding="compact"):
        host, port = peer.rsplit(":", 1)
        self.entry = (host, int(port))
        self.encoding = encoding

    def _conn(self, addr):
        s = socket.create_connection(addr, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _addr(self, s):
        if self.encoding == "compact":
            b = _recv(s, 6)
            return socket.inet_ntoa(b[:4]), struct.unpack(">H", b[4:])[0]
        n = struct.unpack(">Q", _recv(s, 8))[0]
        host, port = _recv(s, n).decode().rsplit(":", 1)
        return host, int(port)

    def owner(self, key):
        cur = self.entry
        for _ in range(64):
            with self._conn(cur) as s:
                s.sendall(b"OWN" + key)
                nxt = self._addr(s)
            if nxt == cur:
                return cur
            cur = nxt
        raise RuntimeError("OWN walk did not end")

    @staticmethod
    def _put_on(s, key, value):
        s.sendall(b"INS" + key)
        if _recv(s, 1) != b"T":
            return False
        s.sendall(struct.pack(">Q", len(value)) + value)
        return _recv(s, 1) == b"T"

    @staticmethod
    def _get_on(s, key):
        s.sendall(b"GET" + key)
        if _recv(s, 1) != b"T":
            return None
        return _recv(s, struct.unpack(">Q", _recv(s, 8))[0])

    def put(self, key, value):
        with self._conn(self.owner(key)) as s:
            return self._put_on(s, key, value)

    def get(self, key):
        with self._conn(self.owner(key)) as s:
            return self._get_on(s, key)


class KeptConnection(ConnPerRequest):
    """Every request on one open connection to the entry peer, which owns every key here."""

    def __init__(self, peer):
        super().__init__(peer)
        self.s = self._conn(self.entry)

    def put(self, key, value):
        return self._put_on(self.s, key, value)

    def get(self, key):
        return self._get_on(self.s, key)

    def close(self):
        self.s.close()


# ---- the node ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pul(addr):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"PUL")
            return s.recv(1) == b"T"
    except OSError:
        return False


def start_node(binary, root):
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHT_STORE_")}
    log = open(os.path.join(root, "node.log"), "ab")
    proc = subprocess.Popen(
        [binary, "--data", os.path.join(root, "data"), "--port", addr.rsplit(":", 1)[1],
         "--host", "127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 20
    while not pul(addr):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"bench: the node did not start; its log is {root}/node.log")
        time.sleep(0.02)
    return proc, addr


# ---- the workload ----

def keys_of(prefix, n):
    return [f"{prefix}-{i}" for i in range(n)]


def value(i, size):
    """The value of key i (as rust_load.rs makes it): its bytes say which key it is."""
    tag = f"{i}:".encode()
    return (tag * (size // len(tag) + 1))[:size]


class Failed(Exception):
    pass


NODE_PID = None


def node_cpu():
    """CPU seconds the node used so far (user + system, /proc), for the CPU per request."""
    with open(f"/proc/{NODE_PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Times a phase of n requests: its rate, and the node's CPU per request."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.cpu, self.t = node_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.rate = self.n / (time.perf_counter() - self.t)
        self.cpu_us = (node_cpu() - self.cpu) / self.n * 1e6


def check(got, want, what):
    if got != want:
        raise Failed(f"{what}: {len(got)} answers, not the values put")


def run_raw(c, name, prefix, n, size):
    """The requests of a pure-Python client `c` (cpr or kept socket), one after another."""
    ks = [hashlib.sha1(k.encode()).digest() for k in keys_of(prefix, n)]
    with Phase(n) as put:
        ok = sum(c.put(k, value(i, size)) for i, k in enumerate(ks))
    if ok != n:
        raise Failed(f"{name} put: {n - ok} of {n} not stored")
    with Phase(n) as get:
        got = [c.get(k) for k in ks]
    check(got, [value(i, size) for i in range(n)], f"{name} get")
    return {"put": put, "get": get}


def run_cpr(addr, prefix, n, size):
    return run_raw(ConnPerRequest(addr), "cpr", prefix, n, size)


def run_kept(addr, prefix, n, size):
    c = KeptConnection(addr)
    try:
        return run_raw(c, "kept socket", prefix, n, size)
    finally:
        c.close()


def run_loop(addr, prefix, n, size):
    with dht_store.Ring(addr) as ring:
        ks = keys_of(prefix, n)
        vs = [value(i, size) for i in range(n)]
        with Phase(n) as put:
            for k, v in zip(ks, vs):
                ring.put(k, v)
        with Phase(n) as get:
            got = [ring.get(k) for k in ks]
    check(got, vs, "Ring.get loop")
    return {"put": put, "get": get}


def run_bulk(addr, prefix, n, size, put_conc, get_conc):
    with dht_store.Ring(addr) as ring:
        ks = keys_of(prefix, n)
        items = [(k, value(i, size)) for i, k in enumerate(ks)]
        with Phase(n) as put:
            stored = ring.put_many(items, concurrency=put_conc)
        with Phase(n) as get:
            got = ring.get_many(ks, concurrency=get_conc)
    if stored != n:
        raise Failed(f"put_many stored {stored} of {n}")
    check(got, [v for _, v in items], "get_many")
    return {"put": put, "get": get}


def run_rust(rust_load, addr, prefix, n, size, concurrency):
    before = node_cpu()
    out = subprocess.run(
        [rust_load, "--peer", addr, "--keys", str(n), "--value-size", str(size),
         "--prefix", prefix, "--concurrency", str(concurrency)],
        capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise Failed(f"rust_load exited {out.returncode}: {out.stdout}{out.stderr}")
    # rust_load's phases run back to back: the node's CPU is known for both together only.
    cpu_us = (node_cpu() - before) / (2 * n) * 1e6
    r = {}
    for line in out.stdout.splitlines():
        j = json.loads(line)
        ph = Phase(j["n"])
        ph.rate, ph.cpu_us = j["n"] / j["secs"], cpu_us
        r[j["op"]] = ph
    return r


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: nproc={os.cpu_count()} kernel={platform.release()} cpu={cpu} "
            f"load={load} python={platform.python_version()} dht_store={dht_store.__version__}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/dht-store", help="the dht-store binary")
    p.add_argument("--rust-load", default="target/release/examples/rust_load",
                   help="the Rust baseline (cargo build --release --example rust_load)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cpr-keys", type=int, default=1000, help="keys of the cpr client")
    p.add_argument("--loop-keys", type=int, default=3000, help="keys of the loops")
    p.add_argument("--bulk-keys", type=int, default=30000, help="keys of the bulk calls")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--put-concurrency", type=int, default=64,
                   help="put_many's connections per owner, and the Rust tasks of its baseline")
    p.add_argument("--get-concurrency", type=int, default=16,
                   help="get_many's connections per owner (each pipelines 64 GETs)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: one round, a third of the keys")
    a = p.parse_args()
    if a.quick:
        a.rounds = 1
        a.cpr_keys, a.loop_keys, a.bulk_keys = a.cpr_keys // 3, a.loop_keys // 3, a.bulk_keys // 3
    for path in (a.bin, a.rust_load):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench: {path} is not an executable (see --help)")

    print(machine())
    print(f"one node, values of {a.value_size} bytes; keys: cpr {a.cpr_keys}, loops "
          f"{a.loop_keys}, bulk {a.bulk_keys}; put_many x{a.put_concurrency}, get_many "
          f"x{a.get_concurrency}; {a.rounds} round(s)", flush=True)
    root = tempfile.mkdtemp(prefix="dht-store-pybench-")
    proc, addr = start_node(a.bin, root)
    global NODE_PID
    NODE_PID = proc.pid
    clients = [
        ("cpr", lambda pre: run_cpr(addr, pre, a.cpr_keys, a.value_size)),
        ("kept socket", lambda pre: run_kept(addr, pre, a.loop_keys, a.value_size)),
        ("Ring loop", lambda pre: run_loop(addr, pre, a.loop_keys, a.value_size)),
        ("put_many/get_many", lambda pre: run_bulk(addr, pre, a.bulk_keys, a.value_size,
                                                   a.put_concurrency, a.get_concurrency)),
        ("Rust loop", lambda pre: run_rust(a.rust_load, addr, pre, a.loop_keys, a.value_size, 0)),
        (f"Rust x{a.put_concurrency}", lambda pre: run_rust(
            a.rust_load, addr, pre, a.bulk_keys, a.value_size, a.put_concurrency)),
    ]
    results = {name: {"put": [], "get": []} for name, _ in clients}
    cpu = {name: {"put": [], "get": []} for name, _ in clients}
    try:
        for r in range(a.rounds):
            order = clients if r % 2 == 0 else clients[::-1]
            for name, fn in order:
                got = fn(f"r{r}-{name.replace(' ', '_').replace('/', '_')}")
                for op in ("put", "get"):
                    results[name][op].append(got[op].rate)
                    cpu[name][op].append(got[op].cpu_us)
                print(f"  round {r + 1}: {name:<18} put {got['put'].rate:>9.0f}/s  get "
                      f"{got['get'].rate:>9.0f}/s  node cpu/op put {got['put'].cpu_us:>4.0f} us"
                      f"  get {got['get'].cpu_us:>4.0f} us", flush=True)
    except Failed as e:
        sys.exit(f"bench: FAILED: {e}")
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)

    med = {n: {op: statistics.median(v) for op, v in ops.items()} for n, ops in results.items()}
    # Each round's ratio to the cpr client of the same round (next to it in time: rounds go
    # forward and backward), so that the load of the moment weighs on both sides of a ratio.
    ratios = {n: {op: [x / c for x, c in zip(results[n][op], results["cpr"][op])]
                  for op in ("put", "get")} for n in results}

    def ratio(name, op):
        r = ratios[name][op]
        spread = f" ({min(r):.1f}-{max(r):.1f})" if len(r) > 1 else ""
        return statistics.median(r), spread

    print()
    print("ops/s: the median of the rounds; x cpr: the median of each round's ratio (range);")
    print("cpu: the node's CPU per request, median of the rounds (Rust: put and get together)")
    print(f"{'client':<20} {'put ops/s':>10} {'x cpr':>16} {'cpu us':>7} {'get ops/s':>10} "
          f"{'x cpr':>18} {'cpu us':>7}")
    for name, _ in clients:
        m = med[name]
        (xp, sp), (xg, sg) = ratio(name, "put"), ratio(name, "get")
        cp, cg = (statistics.median(cpu[name][op]) for op in ("put", "get"))
        print(f"{name:<20} {m['put']:>10.0f} {f'{xp:.1f}x{sp}':>16} {cp:>7.0f} {m['get']:>10.0f} "
              f"{f'{xg:.1f}x{sg}':>18} {cg:>7.0f}")
    print()
    goals = [("Ring loop", "put", 5, "Ring loop put"), ("Ring loop", "get", 5, "Ring loop get"),
             ("put_many/get_many", "put", 20, "put_many"),
             ("put_many/get_many", "get", 20, "get_many")]
    for name, op, want, label in goals:
        x, spread = ratio(name, op)
        verdict = "met" if x >= want else "NOT met"
        print(f"goal {label} >= {want}x cpr: {x:.1f}x{spread}, {verdict}")
    # What a loop of one request at a time can reach at all: the round trip on an open socket.
    for op in ("put", "get"):
        x, spread = ratio("kept socket", op)
        of = statistics.median(r / k for r, k in zip(results["Ring loop"][op], results["kept socket"][op]))
        print(f"floor of a loop, {op}: a kept pure-Python socket is {x:.1f}x{spread} cpr; "
              f"the Ring loop reaches {of:.2f} of it")
    rust_bulk = f"Rust x{a.put_concurrency}"
    for op in ("put", "get"):
        loop = statistics.median(x / r for x, r in zip(results["Ring loop"][op], results["Rust loop"][op]))
        bulk = statistics.median(x / r for x, r in zip(results["put_many/get_many"][op], results[rust_bulk][op]))
        print(f"Python/Rust, {op}: loop {loop:.2f}, bulk {bulk:.2f} (medians of the rounds' ratios)")


if __name__ == "__main__":
    main()
