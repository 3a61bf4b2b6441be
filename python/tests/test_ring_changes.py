"""A Ring that learned its owners' arcs keeps answering right while a node joins and leaves:
the old owner answers N (or cannot be reached) and the request goes through the Router."""

import hashlib
import uuid

from dht_store import Ring
from conftest import Node, free_port, owner_of, start_ring, wait_whole


def test_join_and_leave_under_a_warm_ring(tmp_root):
    root = tmp_root / "changes"
    root.mkdir()
    nodes = start_ring(root, 3)
    addrs = [n.addr for n in nodes]
    tag = uuid.uuid4().hex
    keys = [f"{tag}-{i}" for i in range(400)]
    try:
        ring = Ring(addrs[0], timeout=5)
        assert ring.put_many((k, b"before") for k in keys) == len(keys)
        assert [ring.get(k) for k in keys] == [b"before"] * len(keys)  # every arc learned

        joiner = Node(root, f"127.0.0.5:{free_port('127.0.0.5')}", "--join", addrs[1])
        nodes.append(joiner)
        wait_whole(addrs + [joiner.addr])
        moved = [k for k in keys
                 if owner_of(addrs + [joiner.addr], hashlib.sha1(k.encode()).digest()) == joiner.addr]
        assert moved, "the joiner took no key: pick another address"
        # Gets and puts through the stale arcs still reach the true owners.
        assert [ring.get(k) for k in keys] == [b"before"] * len(keys)
        for k in keys[::2]:
            ring.put(k, b"after join")
        with Ring(joiner.addr) as direct:
            for k in moved:
                assert direct.owner(k).hops == 0
                assert direct.get(k) == (b"after join" if keys.index(k) % 2 == 0 else b"before")
        want = [b"after join" if i % 2 == 0 else b"before" for i in range(len(keys))]
        assert ring.get_many(keys) == want

        joiner.leave()
        wait_whole(addrs)
        assert [ring.get(k) for k in keys] == want
        assert ring.put_many((k, b"after leave") for k in moved) == len(moved)
        assert ring.get_many(keys) == [b"after leave" if k in moved else w for k, w in zip(keys, want)]
        ring.close()
    finally:
        for n in nodes:
            n.stop()
