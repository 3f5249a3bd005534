"""`kvstore admin inspect | evict | drain` against real nodes."""

from __future__ import annotations

import torch

from kvstore.chunk import checksum
from kvstore.keys import KeyScheme


def test_inspect_reports_where_a_chunk_lives_and_what_it_is(start_node, connect, cli_json, cli):
    a, b = start_node(), start_node()
    key = bytes(range(16))
    tensor = torch.arange(4 * 8, dtype=torch.float16).reshape(4, 8)
    client = connect(b.address, KeyScheme("model-x", "float16", tenant="acme"))
    assert client.put_many([key], [tensor], num_tokens=[4]) == [True]
    rc, doc, err = cli_json("admin", "inspect", key.hex(), "--nodes", f"{a.address},{b.address}")
    assert rc == 0, err
    (entry,) = doc["keys"]
    assert entry["asked"] == 2 and doc["not_found"] == []
    found = [c for c in entry["copies"] if c["found"]]
    assert [c["node_id"] for c in found] == [b.core.node_id]
    c = found[0]
    assert c["tiers"] == ["cpu"]
    assert c["payload_bytes"] == 64
    assert c["checksum"] == f"{checksum([tensor.numpy().tobytes()]):016x}"
    assert (c["codec"], c["dtype"], c["shape"], c["num_tokens"]) == ("identity", "float16",
                                                                     [4, 8], 4)
    assert (c["model_id"], c["tenant"]) == ("model-x", "acme")
    assert c["namespace_id"] == client.session.namespace_id
    assert 0 <= c["age_s"] < 60
    # a key nowhere: reported as such, exit code 1
    rc, doc, _ = cli_json("admin", "inspect", "ab" * 16, "--nodes", a.address)
    assert rc == 1 and doc["not_found"] == ["ab" * 16]
    rc, out, err = cli("admin", "inspect", "zz", "--nodes", a.address)
    assert rc == 2 and "hex" in err


def test_inspect_age_of_a_chunk_restored_from_disk_is_its_file_age(start_node, connect,
                                                                   node_config, cli_json):
    import os
    import time

    cfg = node_config(disk_capacity_bytes=8 << 20, disk_admission="write-through")
    node = start_node(cfg)
    key = b"k" * 16
    assert connect(node.address).put(key, b"\7" * 1000)
    start_node.stop(node)
    files = [os.path.join(d, f) for d, _, fs in os.walk(cfg.data_dir) for f in fs
             if "chunks" in d]
    assert files, "write-through left no disk file"
    old = time.time() - 3600
    for f in files:
        os.utime(f, (old, old))
    node = start_node(cfg)
    rc, doc, err = cli_json("admin", "inspect", key.hex(), "--nodes", node.address)
    assert rc == 0, err
    (c,) = [c for c in doc["keys"][0]["copies"] if c["found"]]
    assert c["tiers"] == ["disk"] and 3590 < c["age_s"] < 3700


def test_evict_by_tenant_or_model_removes_only_those(start_node, connect, cli_json):
    nodes = [start_node(), start_node()]
    clients = {
        ("m1", "acme"): [connect(n.address, KeyScheme("m1", "float16", tenant="acme"))
                         for n in nodes],
        ("m1", "beta"): [connect(n.address, KeyScheme("m1", "float16", tenant="beta"))
                         for n in nodes],
        ("m2", "acme"): [connect(n.address, KeyScheme("m2", "float16", tenant="acme"))
                         for n in nodes],
    }
    keys = {}
    for i, (ns, per_node) in enumerate(clients.items()):
        keys[ns] = [bytes([i, j]) * 8 for j in range(3)]
        for j, k in enumerate(keys[ns]):  # 3 chunks of 1000 bytes, spread over both nodes
            assert per_node[j % 2].put(k, b"\1" * 1000)

    def present(ns):
        return sum(sum(c.lookup(keys[ns]).found) for c in clients[ns])

    assert {ns: present(ns) for ns in clients} == dict.fromkeys(clients, 3)
    addresses = ",".join(n.address for n in nodes)
    rc, doc, err = cli_json("admin", "evict", "--tenant", "beta", "--nodes", addresses)
    assert rc == 0, err
    assert (doc["chunks"], doc["bytes"]) == (3, 3000)
    assert sorted(n["chunks"] for n in doc["nodes"]) == [1, 2]
    assert {ns: present(ns) for ns in clients} == {("m1", "acme"): 3, ("m1", "beta"): 0,
                                                   ("m2", "acme"): 3}
    rc, doc, err = cli_json("admin", "evict", "--model", "m2", "--nodes", addresses)
    assert rc == 0 and (doc["chunks"], doc["bytes"]) == (3, 3000)
    assert {ns: present(ns) for ns in clients} == {("m1", "acme"): 3, ("m1", "beta"): 0,
                                                   ("m2", "acme"): 0}
    ns_id = clients[("m1", "acme")][0].session.namespace_id
    rc, doc, err = cli_json("admin", "evict", "--namespace", ns_id, "--nodes", addresses)
    assert rc == 0 and doc["chunks"] == 3
    assert present(("m1", "acme")) == 0
    # the tier and tenant figures follow
    rc, doc, err = cli_json("admin", "stats", "--nodes", addresses)
    assert doc["cluster"]["chunks"] == 0 and all(t["chunks"] == 0 for t in doc["tenants"])


def test_drain_on_a_standalone_node_is_a_clear_error(start_node, cli, connect):
    node = start_node()
    rc, out, err = cli("admin", "drain", node.address, "--nodes", node.address)
    assert rc == 1
    assert "FAILED_PRECONDITION" in err and "standalone" in err and node.address in err
    assert connect(node.address).put(b"s" * 16, b"still serving")  # the node keeps serving
