"""Per-tenant byte quotas: a put past the quota is RESOURCE_EXHAUSTED with a message naming the
tenant, quota, usage and request; it is refused before any payload is buffered; the node keeps
serving; deletes give room back; usage survives a warm restart (tenant in the disk header)."""

from __future__ import annotations

import pytest

from kvstore.errors import QuotaExceeded, ResourceExhausted
from kvstore.keys import prefix_keys
from kvstore.tiers.disk import MAGIC, MAGIC_TENANT, DiskTier

from .conftest import scheme_of

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]
CHUNK = 100_000
QUOTA = 250_000  # two chunks fit, a third does not


def keys_of(tenant: str, n: int) -> list[bytes]:
    return prefix_keys(scheme_of(tenant), list(range(n * 256)))


@pytest.mark.parametrize("plane", PLANES)
def test_over_quota_is_resource_exhausted_and_the_node_keeps_serving(plane, secure_node,
                                                                     client_as, payload):
    node = secure_node(tenants={"alice": {"quota_bytes": QUOTA}})
    alice = client_as(node, "alice", use_data_plane=plane)
    keys = keys_of("alice", 3)
    blobs = [payload(CHUNK, i) for i in range(3)]
    assert alice.put_many(keys[:2], blobs[:2]) == [True, True]
    used_before = node.core.manager.tier_usage()

    with pytest.raises(ResourceExhausted) as err:
        alice.put(keys[2], blobs[2])
    msg = str(err.value)
    for part in ("tenant 'alice'", f"quota {QUOTA} bytes", f"used {2 * CHUNK} bytes",
                 f"needs {CHUNK} bytes"):
        assert part in msg
    if not plane:  # gRPC names the exact class; the data plane's STATUS carries only the code
        assert isinstance(err.value, QuotaExceeded)
    assert node.core.manager.tier_usage() == used_before  # nothing buffered, nothing evicted
    assert node.core.manager.tenant_usage() == {"alice": 2 * CHUNK}

    assert alice.put(keys[0], blobs[0])                 # replacing its own chunk: no growth
    bob = client_as(node, "bob", use_data_plane=plane)  # other tenants are not affected
    assert bob.put_many(keys_of("bob", 3), blobs) == [True] * 3
    assert [bytes(b) for b in alice.get_bytes_many(keys[:2])] == blobs[:2]
    assert alice.delete_many(keys[:1]) == 1             # room comes back
    assert alice.put(keys[2], blobs[2])
    assert node.core.manager.tenant_usage() == {"alice": 2 * CHUNK, "bob": 3 * CHUNK}


def test_quota_counts_puts_in_flight(tier_manager, make_chunk):
    """Two puts reserved at once cannot both pass a quota that has room for one."""
    m = tier_manager(tenants={"t": {"quota_bytes": "6KiB"}})
    a, _ = make_chunk("a", 4096)
    b, _ = make_chunk("b", 4096)
    res = m.reserve(a, "ns", "t")
    with pytest.raises(QuotaExceeded, match=r"\+4096 being put"):
        m.reserve(b, "ns", "t")
    res.abort()                       # an aborted put gives its room back
    m.reserve(b, "ns", "t").abort()


def test_quota_usage_survives_a_warm_restart(start_node, node_config, tokens_file, client_as,
                                             payload, wait_until):
    cfg = node_config(auth_tokens_file=str(tokens_file), disk_capacity_bytes=8 << 20,
                      disk_admission="write-through", tenants={"alice": {"quota_bytes": QUOTA}})
    node = start_node(cfg)
    keys = keys_of("alice", 3)
    client_as(node, "alice").put_many(keys[:2], [payload(CHUNK, i) for i in range(2)])
    wait_until(lambda: node.core.manager.tier_usage()[-1][3] == 2, 10, "write-through")
    start_node.stop(node)

    node = start_node(cfg)  # same data_dir: the index is rebuilt from the chunk files
    assert node.core.manager.tenant_usage() == {"alice": 2 * CHUNK}
    with pytest.raises(ResourceExhausted, match="tenant 'alice'"):
        client_as(node, "alice").put(keys[2], payload(CHUNK, 2))


def test_disk_header_records_the_tenant_and_old_files_still_read(tmp_path, make_chunk):
    disk = DiskTier(tmp_path, 1 << 20)
    old, old_data = make_chunk("old", 1000)
    new, new_data = make_chunk("new", 1000)
    disk.write(old, "ns", [memoryview(old_data)])              # no tenant: KVC1, as before
    disk.write(new, "ns", [memoryview(new_data)], "alice")     # KVC2 with the tenant
    assert disk.path(old.key).read_bytes()[:4] == MAGIC
    assert disk.path(new.key).read_bytes()[:4] == MAGIC_TENANT
    records = {r.info.key: r for r in DiskTier(tmp_path, 1 << 20).scan()}
    assert records[old.key].tenant == "" and records[new.key].tenant == "alice"
    assert records[new.key].namespace == "ns"
    assert bytes(disk.read(old, "ns")) == old_data and bytes(disk.read(new, "ns")) == new_data
