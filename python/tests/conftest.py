"""Real dht-store nodes for the tests: processes of the binary the repository builds, on
temporary data directories, on loopback addresses 127.0.0.2, 127.0.0.3, ... with free ports.

The binary is ``$DHT_STORE_BIN``, else ``target/release/dht-store``, else
``target/debug/dht-store`` of the repository (``cargo build --release`` makes it).
"""

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RING_SIZE = 3


def dht_store_bin() -> Path:
    env = os.environ.get("DHT_STORE_BIN")
    candidates = [Path(env)] if env else []
    candidates += [REPO / "target" / "release" / "dht-store", REPO / "target" / "debug" / "dht-store"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(
        f"no dht-store binary (tried {', '.join(map(str, candidates))}): run cargo build --release"
    )


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def peer_id(addr: str) -> bytes:
    """A peer's id: SHA-1 of "ip:port" (PROTOCOL.md 2)."""
    return hashlib.sha1(addr.encode()).digest()


def owner_of(addrs, key: bytes) -> str:
    """The owner of a HashKey among these peers, computed from their ids, asking nobody: the
    largest id <= key, else the largest id."""
    ids = sorted((peer_id(a), a) for a in addrs)
    below = [a for i, a in ids if i <= key]
    return below[-1] if below else ids[-1][1]


def _recv(s: socket.socket, n: int) -> bytes:
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed")
        b += c
    return b


def ask_abd(addr: str, encoding: str) -> str:
    """The successor `addr` names (ABD), in either address encoding."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"ABD")
        if encoding == "compact":
            b = _recv(s, 6)
            return f"{socket.inet_ntoa(b[:4])}:{struct.unpack('>H', b[4:])[0]}"
        n = struct.unpack(">Q", _recv(s, 8))[0]
        return _recv(s, n).decode()


def answers_pul(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"PUL")
            return _recv(s, 1) == b"T"
    except OSError:
        return False


class Node:
    """One dht-store process; stopped (and its directory removed) by `stop`."""

    def __init__(self, root: Path, addr: str, *extra: str, cmd=None):
        self.addr = addr
        host, port = addr.rsplit(":", 1)
        self.data = root / f"node-{host}-{port}"
        self.log = self.data.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DHT_STORE_")}
        env["DHT_STORE_MAINTENANCE_INTERVAL_MS"] = "200"
        base = cmd or [str(dht_store_bin())]
        argv = base + ["--data", str(self.data), "--port", port, "--host", host, *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + 20
        while not answers_pul(addr):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node {addr} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def leave(self):
        """`dht-store leave`: the node hands its arc to its predecessor and exits."""
        out = subprocess.run([str(dht_store_bin()), "leave", "--data", str(self.data)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        self.proc.wait(30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def loopback_addrs(n: int):
    hosts = [f"127.0.0.{2 + i}" for i in range(n)]
    return [f"{h}:{free_port(h)}" for h in hosts]


def start_ring(root: Path, n: int, *extra: str, cmd=None, encoding="compact"):
    """n nodes, each joining through the first, once every ABD names the next id round the
    circle (the ring is whole)."""
    addrs = loopback_addrs(n)
    nodes = [Node(root, addrs[0], *extra, cmd=cmd)]
    for a in addrs[1:]:
        nodes.append(Node(root, a, "--join", addrs[0], *extra, cmd=cmd))
    wait_whole(addrs, encoding)
    return nodes


def wait_whole(addrs, encoding="compact"):
    """Waits until each of `addrs` names the next of them round the circle (ABD)."""
    n = len(addrs)
    ring = sorted(addrs, key=peer_id)
    want = {a: ring[(i + 1) % n] for i, a in enumerate(ring)}
    deadline = time.monotonic() + 30
    while True:
        try:
            got = {a: ask_abd(a, encoding) for a in addrs}
        except OSError:
            got = {}
        if got == want:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ring never closed: ABD {got}, want {want}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def tmp_root():
    d = Path(tempfile.mkdtemp(prefix="dht-store-py-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", params=["compact", "text"])
def ring3(request, tmp_root):
    """A ring of three dht-store nodes of each address encoding: (encoding, [addresses])."""
    enc = request.param
    root = tmp_root / f"ring-{enc}"
    root.mkdir()
    nodes = start_ring(root, RING_SIZE, "--address-encoding", enc, encoding=enc)
    yield enc, [n.addr for n in nodes]
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def small_node(tmp_root):
    """One node that takes values of at most 1024 bytes."""
    root = tmp_root / "small"
    root.mkdir()
    addr = f"127.0.0.1:{free_port('127.0.0.1')}"
    n = Node(root, addr, "--max-value-size", "1024")
    yield addr
    n.stop()


@pytest.fixture
def dead_peer():
    """An address nobody listens on."""
    return f"127.0.0.1:{free_port('127.0.0.1')}"


def _listener():
    """A listening socket on 127.0.0.1 and a free port, and its "IP:PORT"."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


class Silent:
    """A server that accepts connections and never answers (a stalled peer)."""

    def __init__(self):
        self.sock, self.addr = _listener()
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def silent_peer():
    s = Silent()
    yield s.addr
    s.close()


class Garbage:
    """A peer that names itself in answer to OWN (compact) and answers every other request
    with the status byte 'X', which the protocol does not have."""

    def __init__(self):
        self.sock, self.addr = _listener()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while True:
                cmd = _recv(c, 3)
                me = socket.inet_aton("127.0.0.1") + struct.pack(">H", self.port)
                if cmd == b"ABD":
                    c.sendall(me)
                    continue
                _recv(c, 20)
                c.sendall(me if cmd == b"OWN" else b"X")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def garbage_peer():
    g = Garbage()
    yield g.addr
    g.close()


REFNODE = REPO.parent / "shared" / "conformance" / "refnode.py"


@pytest.fixture(scope="session")
def classroom_ring(tmp_root):
    """A ring of three reference peers (../shared/conformance/refnode.py, an independent
    implementation written from PROTOCOL.md) with text addresses, as classroom rings have."""
    if not REFNODE.is_file():
        pytest.skip(f"{REFNODE} is not there (it comes with ../shared)")
    root = tmp_root / "refnodes"
    root.mkdir()
    nodes = start_ring(
        root, RING_SIZE, "--address-encoding", "text",
        cmd=[sys.executable, str(REFNODE)], encoding="text",
    )
    yield [n.addr for n in nodes]
    for n in nodes:
        n.stop()
