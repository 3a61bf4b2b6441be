"""DHTInterface, the classroom interface: its constructor, calls and return values, against
dht-store rings of both encodings (detected) and a ring of independent reference peers."""

import hashlib
import uuid

import pytest

from dht_store import DHTInterface, Unreachable
from conftest import owner_of


def unique():
    return f"classroom-{uuid.uuid4().hex}"


def check_calls(dht, addrs):
    k = unique()
    assert dht.exists(k) == "F"
    assert dht.get(k) == ("F", None)
    assert dht.remove(k) == "F"
    assert dht.insert(k, "testingtesting") == "T"
    assert dht.exists(k) == "T"
    status, value = dht.get(k)
    assert status == "T" and value.decode() == "testingtesting"
    assert dht.insert(k.encode(), b"\x00bytes") == "T"
    assert dht.get(k) == ("T", b"\x00bytes")
    assert dht.owns(k) == owner_of(addrs, hashlib.sha1(k.encode()).digest())
    assert dht.trueOwner(k) == dht.owns(k)
    assert dht.remove(k) == "T"
    assert dht.exists(k) == "F"
    # The classroom test of owns: a peer's own address as a key.
    for a in addrs:
        assert dht.owns(a) == owner_of(addrs, hashlib.sha1(a.encode()).digest())


def test_peer_keywords(ring3):
    enc, addrs = ring3
    ip, port = addrs[0].rsplit(":", 1)
    dht = DHTInterface(peerIP=ip, peerPort=int(port))
    check_calls(dht, addrs)
    assert dht._ring.address_encoding == enc
    dht.close_connection()


def test_ipport_file(ring3, tmp_path):
    enc, addrs = ring3
    f = tmp_path / "IPPORT.txt"
    f.write_text(addrs[1] + "\nignored\n")
    dht = DHTInterface(ipport_file=str(f))
    check_calls(dht, addrs)
    assert (dht.peerIP, dht.peerPort) == tuple([addrs[1].rsplit(":")[0], int(addrs[1].rsplit(":")[1])])
    dht.close_connection()
    assert dht.exists(unique()) == "F"  # opens again


def test_set_connection_and_attributes(ring3, dead_peer):
    enc, addrs = ring3
    dht = DHTInterface()
    ip, port = addrs[2].rsplit(":", 1)
    dht.set_connection(ip, port)
    k = unique()
    assert dht.insert(k, "v") == "T"
    ip1, port1 = addrs[0].rsplit(":", 1)
    dht.peerIP, dht.peerPort = ip1, int(port1)  # as classroom scripts may do
    assert dht.get(k) == ("T", b"v")
    dip, dport = dead_peer.rsplit(":", 1)
    with pytest.raises(Unreachable):
        dht.set_connection(dip, int(dport))
    assert "insert(key, value)" in dht.help() and dht.help().startswith("Available methods:")


def test_insert_refused_is_F(small_node):
    ip, port = small_node.rsplit(":", 1)
    dht = DHTInterface(peerIP=ip, peerPort=port)
    assert dht.insert(unique(), "x" * 2000) == "F"
    assert dht.insert(unique(), "x" * 10) == "T"


def test_bad_ipport_file(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("not an address\n")
    with pytest.raises(ValueError, match="not IP:PORT"):
        DHTInterface(ipport_file=str(f)).exists("k")
    with pytest.raises(FileNotFoundError):
        DHTInterface(ipport_file=str(tmp_path / "missing.txt")).exists("k")


def test_reference_peers(classroom_ring):
    ip, port = classroom_ring[0].rsplit(":", 1)
    dht = DHTInterface(peerIP=ip, peerPort=int(port))
    check_calls(dht, classroom_ring)
    assert dht._ring.address_encoding == "text"
