"""One Ring shared by threads, and the GIL released while a call waits on the network."""

import threading
import time
import uuid

from dht_store import Ring, Timeout


def test_threads_share_a_ring(ring3):
    enc, addrs = ring3
    ring = Ring(addrs[0], timeout=10, address_encoding=enc)
    tag = uuid.uuid4().hex
    errors = []

    def work(t):
        try:
            for i in range(150):
                k = f"{tag}-{t}-{i}"
                ring.put(k, f"{t}:{i}".encode())
                assert ring.get(k) == f"{t}:{i}".encode()
                assert k in ring
                if i % 3 == 0:
                    assert ring.remove(k)
                    assert ring.get(k) is None
            got = ring.get_many([f"{tag}-{t}-{i}" for i in range(150)])
            assert got == [None if i % 3 == 0 else f"{t}:{i}".encode() for i in range(150)]
        except BaseException as e:  # reported by the main thread
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    ring.close()


def test_gil_is_released_while_waiting(silent_peer):
    ring = Ring(silent_peer, timeout=1.5)
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(_timeout_of(ring)))
    waiter.start()
    time.sleep(0.1)
    # While the other thread waits on the silent peer, this one keeps running Python code.
    spins = 0
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        spins += 1
    still_waiting = waiter.is_alive()
    waiter.join()
    assert still_waiting
    assert spins > 10_000, spins
    assert outcome == ["Timeout"]


def _timeout_of(ring):
    try:
        ring.get("k")
    except Timeout:
        return "Timeout"
    return "no error"


def test_a_forked_child_opens_its_own_connections(ring3):
    # A child of fork (multiprocessing's default on Linux) must not share the parent's
    # sockets: both ask at once here, and each must read its own answers.
    import os

    enc, addrs = ring3
    ring = Ring(addrs[0], timeout=10, address_encoding=enc)
    keys = [f"fork-{uuid.uuid4().hex}-{i}" for i in range(50)]
    ring.put_many((k, k.encode()) for k in keys)
    assert ring.get(keys[0]) == keys[0].encode()  # the pool holds a warm slot
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for _ in range(20):
                for k in keys:
                    if ring.get(k) != k.encode():
                        code = 1
            ring.put("fork-child", b"child")
        except BaseException:
            code = 2
        os._exit(code)
    for _ in range(20):
        assert [ring.get(k) for k in keys] == [k.encode() for k in keys]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ring.get("fork-child") == b"child"
