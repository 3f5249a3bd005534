"""Disk tier (kvstore/tiers/disk.py) and the TierManager's use of it: file format, atomic
writes, checksums at rest, warm restart (index rebuilt from the files)."""

from __future__ import annotations

import os
import struct

import pytest

from kvstore.errors import CapacityError, ChecksumMismatch
from kvstore.tiers.disk import MAGIC, DiskTier

PAGE = 4096
NS = "ns"


def read(m, key: bytes) -> bytes | None:
    lease = m.get(key)
    if lease is None:
        return None
    with lease:
        return b"".join(bytes(v) for v in lease.views)


def tier_of(m, key: bytes) -> str | None:
    e = m.lookup([key])[0]
    return None if e is None else e.tier


def flip(path, offset_from_end: int = 1) -> None:
    """Flip one byte of a file, counted from its end (the payload region)."""
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))


# ---- DiskTier on its own --------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path) -> DiskTier:
    return DiskTier(tmp_path / "d", capacity_bytes=1 << 20)


def test_write_read_round_trip_and_file_layout(disk, make_chunk):
    info, data = make_chunk("a", 3 * PAGE + 5, dtype="uint8", parent_key=b"p" * 16)
    size = disk.write(info, NS, [memoryview(data)[:100], memoryview(data)[100:]])
    path = disk.path(info.key)
    assert path.parent.name == info.key.hex()[:2] and path.name == f"{info.key.hex()}.kvc"
    raw = path.read_bytes()
    assert raw.startswith(MAGIC) and raw.endswith(data)
    assert size == len(raw) == disk.file_bytes(info, NS) == disk.used_bytes
    assert bytes(disk.read(info, NS)) == data
    assert not list(disk.tmp_dir.iterdir())  # written via tmp/ and renamed into place
    disk.delete(info.key, size)
    assert not path.exists() and disk.used_bytes == 0
    disk.delete(info.key, 0)  # deleting a missing file is fine


def test_read_of_corrupt_payload_raises_checksum_mismatch(disk, make_chunk):
    info, data = make_chunk("a", PAGE)
    disk.write(info, NS, [memoryview(data)])
    flip(disk.path(info.key), 100)
    with pytest.raises(ChecksumMismatch, match="fails its checksum"):
        disk.read(info, NS)


def test_read_of_missing_or_short_file_raises_checksum_mismatch(disk, make_chunk):
    info, data = make_chunk("a", PAGE)
    with pytest.raises(ChecksumMismatch):
        disk.read(info, NS)
    disk.write(info, NS, [memoryview(data)])
    os.truncate(disk.path(info.key), disk.file_bytes(info, NS) - 1)
    with pytest.raises(ChecksumMismatch):
        disk.read(info, NS)


def test_scan_returns_records_and_removes_leftovers(disk, make_chunk, tmp_path):
    infos = []
    for i in range(3):
        info, data = make_chunk(i, PAGE + i)
        disk.write(info, f"ns{i}", [memoryview(data)])
        infos.append(info)
    (disk.tmp_dir / "deadbeef.1234").write_bytes(b"half a chunk")
    fresh = DiskTier(tmp_path / "d", capacity_bytes=1 << 20)
    records = {r.info.key: r for r in fresh.scan()}
    assert set(records) == {i.key for i in infos}
    for i, info in enumerate(infos):
        assert records[info.key].info == info and records[info.key].namespace == f"ns{i}"
    assert fresh.used_bytes == disk.used_bytes
    assert not list(fresh.tmp_dir.iterdir())


def corrupt_header(path) -> None:
    raw = bytearray(path.read_bytes())
    (meta_len,) = struct.unpack_from("<I", raw, 4)
    raw[8:8 + meta_len] = b"\xff" * meta_len      # not a valid ChunkMeta
    path.write_bytes(raw)


@pytest.mark.parametrize("damage", [
    "truncate-payload", "truncate-header", "truncate-magic", "bad-magic", "garbage-meta",
    "wrong-name", "empty",
])
def test_scan_removes_unreadable_files(disk, make_chunk, tmp_path, damage):
    """Regression (garbage-meta, truncate-header): a file whose header was not a valid ChunkMeta
    raised protobuf's DecodeError out of scan(), so one bad file stopped the node from starting."""
    good, good_data = make_chunk("good", PAGE)
    bad, bad_data = make_chunk("bad", PAGE)
    disk.write(good, NS, [memoryview(good_data)])
    disk.write(bad, NS, [memoryview(bad_data)])
    path = disk.path(bad.key)
    if damage == "truncate-payload":
        os.truncate(path, path.stat().st_size - 10)
    elif damage == "truncate-header":
        os.truncate(path, 10)
    elif damage == "truncate-magic":
        os.truncate(path, 3)
    elif damage == "bad-magic":
        path.write_bytes(b"XXXX" + path.read_bytes()[4:])
    elif damage == "garbage-meta":
        corrupt_header(path)
    elif damage == "wrong-name":
        renamed = path.with_name(good.key.hex()[:-2] + "00.kvc")
        path.rename(renamed)
        path = renamed
    elif damage == "empty":
        path.write_bytes(b"")
    fresh = DiskTier(tmp_path / "d", capacity_bytes=1 << 20)
    assert [r.info.key for r in fresh.scan()] == [good.key]
    assert not path.exists()
    assert bytes(fresh.read(good, NS)) == good_data


def test_unusable_data_dir_stops_startup(tmp_path, tier_manager):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CapacityError, match="disk tier cannot use"):
        tier_manager(data_dir=str(blocker), disk_capacity_bytes=1 << 20)


# ---- through the TierManager ----------------------------------------------------------------
def push_to_disk(m, make_chunk, n_fill: int = 4) -> None:
    for i in range(n_fill):
        info, data = make_chunk(f"filler-{i}", PAGE)
        m.put(info, NS, data)


def test_corrupt_chunk_on_disk_is_dropped(tier_manager, make_chunk):
    m = tier_manager(disk_capacity_bytes=1 << 20)
    info, data = make_chunk("victim", 2 * PAGE)
    m.put(info, NS, data)
    push_to_disk(m, make_chunk)
    assert tier_of(m, info.key) == "disk"
    path = m.disk.path(info.key)
    flip(path, 1)
    flip(path, 2 * PAGE)
    assert m.get(info.key) is None                         # treated as a miss
    assert m.counters["disk"].corrupt_dropped == 1
    assert not path.exists() and tier_of(m, info.key) is None
    assert m.get(info.key) is None and m.counters["disk"].corrupt_dropped == 1
    m.put(info, NS, data)                                  # and it can be stored again
    assert read(m, info.key) == data


def test_chunk_too_big_for_disk_is_dropped_not_written(tier_manager, make_chunk):
    m = tier_manager(cpu_capacity_bytes=4 * PAGE, disk_capacity_bytes=2 * PAGE)
    info, data = make_chunk("big", 3 * PAGE)
    m.put(info, NS, data)
    push_to_disk(m, make_chunk)
    assert tier_of(m, info.key) is None
    assert not m.disk.path(info.key).exists() and m.disk.used_bytes <= 2 * PAGE


def put_all_write_through(m, make_chunk, wait_until, sizes):
    chunks, parent = [], b""
    for i, n in enumerate(sizes):
        info, data = make_chunk(f"w{i}", n, parent_key=parent)
        m.put(info, NS, data)
        chunks.append((info, data))
        parent = info.key
    wait_until(lambda: all(m.disk.path(i.key).exists() for i, _ in chunks), 10,
               "write-through copies")
    return chunks


def test_warm_restart_serves_everything_byte_exact(tier_manager, make_chunk, wait_until):
    cfg = dict(cpu_capacity_bytes=64 * PAGE, max_chunk_bytes=8 * PAGE,
               disk_capacity_bytes=1 << 20, disk_admission="write-through")
    m = tier_manager(**cfg)
    sizes = [1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE, 8 * PAGE, 7, 2 * PAGE + 3]
    chunks = put_all_write_through(m, make_chunk, wait_until, sizes)
    disk_used = m.disk.used_bytes
    m.close()
    leftover = m.disk.tmp_dir / "0123abcd.partial"
    leftover.write_bytes(b"torn write")
    m2 = tier_manager(**cfg)
    assert not leftover.exists()
    assert m2.disk.used_bytes == disk_used
    usage = {name: n for name, _, _, n in m2.tier_usage()}
    assert usage == {"cpu": 0, "disk": len(chunks)}
    for info, data in chunks:
        entry = m2.lookup([info.key])[0]
        assert entry.tier == "disk" and entry.info == info and entry.namespace == NS
        assert read(m2, info.key) == data
    assert m2.counters["disk"].promotions_out == len(chunks)


def test_warm_restart_removes_truncated_file_and_keeps_the_rest(tier_manager, make_chunk,
                                                                 wait_until):
    cfg = dict(cpu_capacity_bytes=16 * PAGE, disk_capacity_bytes=1 << 20,
               disk_admission="write-through")
    m = tier_manager(**cfg)
    chunks = put_all_write_through(m, make_chunk, wait_until, [PAGE, 2 * PAGE, PAGE, 3])
    m.close()
    victim = m.disk.path(chunks[1][0].key)
    os.truncate(victim, victim.stat().st_size // 2)
    m2 = tier_manager(**cfg)
    assert not victim.exists()
    assert m2.lookup([chunks[1][0].key]) == [None]
    for info, data in chunks[:1] + chunks[2:]:
        assert read(m2, info.key) == data


def test_warm_restart_detects_corruption_on_read(tier_manager, make_chunk, wait_until):
    cfg = dict(disk_capacity_bytes=1 << 20, disk_admission="write-through")
    m = tier_manager(**cfg)
    (info, _), = put_all_write_through(m, make_chunk, wait_until, [2 * PAGE])
    m.close()
    flip(m.disk.path(info.key), 3)
    m2 = tier_manager(**cfg)
    assert m2.lookup([info.key])[0] is not None  # headers only at start: cheap restarts
    assert m2.get(info.key) is None
    assert m2.counters["disk"].corrupt_dropped == 1 and not m2.disk.path(info.key).exists()


def test_warm_restart_rebuilds_prefix_chains_for_prefetch(tier_manager, make_chunk, wait_until):
    cfg = dict(cpu_capacity_bytes=16 * PAGE, disk_capacity_bytes=1 << 20,
               disk_admission="write-through")
    m = tier_manager(**cfg)
    chunks = put_all_write_through(m, make_chunk, wait_until, [PAGE] * 4)
    m.close()
    m2 = tier_manager(**cfg)
    assert m2.prefetch([chunks[0][0].key], next_n=2) == 3
    wait_until(lambda: [tier_of(m2, i.key) for i, _ in chunks] == ["cpu"] * 3 + ["disk"], 5,
               "prefetch along the rebuilt chain")
