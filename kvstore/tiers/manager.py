"""TierManager: where each chunk lives, and how it moves between tiers.

Memory tiers (GPU, then CPU) sit above an optional disk tier. A chunk lives in at most one memory
tier and may also have a copy on disk. Puts land in the top memory tier; making room demotes the
policy's victims one tier down (GPU -> CPU -> disk -> dropped; disk admission decides whether the
last step writes); a hit on a lower tier promotes the chunk to the top tier.

Concurrency: one lock guards the index and allocators. Bulk byte movement (receiving a put,
sending a get, disk reads for promotion and prefetch) happens outside it: a put fills a reserved
allocation that is not yet in the index, and a get pins its entry so eviction skips it until the
reader releases the lease. Disk writes for demotion happen under the lock (a known cost: puts that
must evict wait for the demoted chunk's write).

Codecs (config.tier_codecs, kvstore/codecs/policy.py): a chunk demoted into a tier whose policy
says so is re-encoded on the way (decoded on the host, then encoded; only identity/lossless chunks
are quantized, never twice) and its entry gets a new ChunkInfo (codec, codec_params, payload_bytes
and checksum of the encoded bytes; dtype and shape stay those of the decoded tensor). This runs in
the demotion, i.e. not on a get, but like the disk write it runs under the lock on the thread of
the put that must make room: that put (and every other tier operation) waits for the encode too,
about 4 ms per MiB for kivi-int4 (`kvstore bench codecs` measured 259 MB/s encode on the
2-core dev VM). A chunk that already has a disk copy
(write-through, or a rebuilt index) keeps its encoding, so its memory and disk copies always match
the one ChunkInfo. Gets return the stored bytes and their ChunkInfo; the node never decodes.

Tenants (docs/SECURITY.md): a chunk belongs to the namespace, and the tenant, that put it. Calls
given a ``namespace`` see only that namespace's chunks (another namespace's chunk is a miss, is
not deleted, and a put of its key is refused, never replacing it); ``namespace=None`` is the
node's own view (rebalancing, admin). Each tenant's bytes (payload bytes of its chunks, each once
whatever its tiers) are counted; a put that would take a tenant past ``tenants[T].quota_bytes``
is refused in ``reserve``, before any payload is received. Puts in flight count as used.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from kvstore.chunk import ChunkInfo, checksum
from kvstore.config import NodeConfig
from kvstore.errors import (
    CapacityError,
    ChecksumMismatch,
    KVStoreError,
    PermissionDenied,
)
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier
from kvstore.tiers.policy import EvictionPolicy, admit_to_disk, make_policy
from kvstore.tiers.pool import Allocation
from kvstore.tiers.quota import TenantQuotas
from kvstore.tiers.stats import TierCounters

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Entry:
    info: ChunkInfo
    namespace: str
    mem: MemoryTier | None = None
    alloc: Allocation | None = None
    disk_bytes: int = 0          # > 0 when a copy is on disk
    pins: int = 0                # readers holding zero-copy views
    hits: int = 0
    doomed: bool = False         # removed while pinned: free memory on last release
    created: float = field(default_factory=time.time)  # wall clock (disk index: file mtime)
    tenant: str = ""             # owner of the chunk, for quotas ("" = no tenant)
    charged: int = 0             # bytes counted in the tenant's usage while indexed

    @property
    def tier(self) -> str:
        return self.mem.name if self.mem else "disk"


@dataclass
class Lease:
    """A chunk's bytes, valid until ``release()`` (views point into the tier's memory)."""

    info: ChunkInfo
    tier: str
    views: list[memoryview]
    _release: object = None

    def release(self) -> None:
        if callable(self._release):
            self._release()
            self._release = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class PutReservation:
    """Room for one incoming chunk; fill ``views`` then call commit() (or abort())."""

    manager: TierManager
    info: ChunkInfo
    namespace: str
    tier: MemoryTier
    alloc: Allocation
    views: list[memoryview] = field(default_factory=list)
    staging: torch.Tensor | None = None
    done: bool = False
    tenant: str = ""
    reserved: int = 0            # bytes counted against the tenant's quota until commit/abort

    def commit(self) -> str:
        return self.manager._commit(self)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            with self.manager._lock:
                self.tier.free(self.alloc)
                self.manager._unreserve(self)


class TierManager:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self.mem_tiers: list[MemoryTier] = []
        gpu = _gpu_device(config)
        if gpu and config.gpu_capacity_bytes:
            self.mem_tiers.append(MemoryTier("gpu", config.gpu_capacity_bytes, config.page_bytes,
                                             device="cpu" if gpu == "sim" else gpu,
                                             simulated_device=gpu == "sim"))
        self.mem_tiers.append(MemoryTier("cpu", config.cpu_capacity_bytes, config.page_bytes,
                                         shm_tag=config.resolved_node_id
                                         if config.shared_memory else None))
        self.disk = (DiskTier(config.data_dir, config.disk_capacity_bytes, config.fsync)
                     if config.disk_capacity_bytes else None)
        names = [t.name for t in self.mem_tiers] + (["disk"] if self.disk else [])
        self.counters = {n: TierCounters() for n in names}
        self._policy: dict[str, EvictionPolicy] = {n: make_policy(config.eviction_policy)
                                                   for n in names}
        # kvstore.codecs (torch kernels) is imported only by nodes with a codec policy
        self._codecs = config.tier_codec_policy() if config.tier_codecs else None
        self._index: dict[bytes, Entry] = {}
        self._quotas = TenantQuotas({t: spec["quota_bytes"] for t, spec in config.tenants.items()
                                     if spec.get("quota_bytes") is not None})
        self._children: dict[bytes, set[bytes]] = {}
        self._prefetching: set[bytes] = set()
        self._prefetch_pool = ThreadPoolExecutor(config.prefetch_workers,
                                                 thread_name_prefix="kvstore-prefetch")
        self.prefetches = 0
        self.prefetch_dropped = 0
        if self.disk:
            self._load_disk_index()

    # ---- put -------------------------------------------------------------------------------
    def reserve(self, info: ChunkInfo, namespace: str, tenant: str = "") -> PutReservation:
        """Make room in the top memory tier for a chunk of ``info.payload_bytes`` owned by
        ``namespace`` and ``tenant``: PermissionDenied if another namespace holds the key,
        QuotaExceeded if the tenant's quota has no room for it (nothing is evicted then)."""
        info.validate(self.config.max_chunk_bytes)
        top = self.mem_tiers[0]
        with self._lock:
            self._check_owner(info.key, namespace)
            replaced = self._index.get(info.key)
            # a put that replaces the tenant's own chunk frees that chunk's bytes
            credit = replaced.charged if replaced is not None and replaced.tenant == tenant else 0
            self._quotas.reserve(tenant, info.payload_bytes, credit)
            try:
                alloc = self._make_room(0, info.payload_bytes)
            except BaseException:
                self._quotas.release(tenant, info.payload_bytes)
                raise
        res = PutReservation(self, info, namespace, top, alloc, tenant=tenant,
                             reserved=info.payload_bytes)
        views = top.write_views(alloc)
        if views is None:  # device tier: receive into host staging, copy on commit
            res.staging = torch.empty(info.payload_bytes, dtype=torch.uint8)
            views = [res.staging.numpy().data]
        res.views = views
        return res

    def _commit(self, res: PutReservation) -> str:
        if checksum(res.views) != res.info.checksum:
            res.abort()
            raise ChecksumMismatch(
                f"chunk {res.info.key.hex()}: payload does not match its checksum "
                "(corrupted in transit); nothing stored")
        if res.staging is not None:
            res.tier.write_from(res.alloc, res.staging)
        with self._lock:
            try:  # a put of another namespace may have taken the key since reserve()
                self._check_owner(res.info.key, res.namespace)
            except PermissionDenied:
                res.abort()
                raise
            res.done = True
            self._unreserve(res)
            self._remove(res.info.key)
            entry = Entry(res.info, res.namespace, res.tier, res.alloc, tenant=res.tenant)
            self._insert(entry)
            write_through = self.disk is not None and self.config.disk_admission == "write-through"
        # Not pinned while queued: a pin would make puts that outrun the writer fail as "full of
        # chunks being read". If the chunk is demoted first, the demotion writes it to disk.
        if write_through:
            self._prefetch_pool.submit(self._write_through, entry)
        return res.tier.name

    def put(self, info: ChunkInfo, namespace: str, data: bytes | memoryview) -> str:
        """Store bytes already in memory (tests, tools); the servers stream into reserve()."""
        res = self.reserve(info, namespace)
        try:
            _copy_into(res.views, memoryview(data).cast("B"))
        except ValueError:
            res.abort()
            raise
        return res.commit()

    def _check_owner(self, key: bytes, namespace: str) -> None:
        held = self._index.get(key)
        if held is not None and held.namespace != namespace:
            # Keys are salted with the namespace, so only a caller that computed another
            # namespace's key on purpose gets here; it must not replace that chunk.
            raise PermissionDenied(f"chunk {key.hex()} belongs to another namespace; "
                                   "not replaced")

    def _unreserve(self, res: PutReservation) -> None:
        if res.reserved:
            self._quotas.release(res.tenant, res.reserved)
            res.reserved = 0

    def _charge(self, entry: Entry) -> None:
        """Count the entry's current payload size in its tenant's usage (again after its info
        changed: a re-encoding on demotion changes the stored size)."""
        self._quotas.charge(entry.tenant, entry.info.payload_bytes - entry.charged)
        entry.charged = entry.info.payload_bytes

    def tenant_usage(self) -> dict[str, int]:
        """tenant -> payload bytes of its chunks on this node (each chunk once, whatever its
        tiers; "" = chunks put without a tenant). Tenants with nothing stored are left out."""
        with self._lock:
            return self._quotas.usage()

    # ---- get -------------------------------------------------------------------------------
    def get(self, key: bytes, namespace: str | None = None) -> Lease | None:
        """A lease on the chunk's bytes, or None (miss, another namespace's chunk, or dropped
        as corrupt)."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None or (namespace is not None and entry.namespace != namespace):
                return None
            entry.hits += 1
            self.counters[entry.tier].hits += 1
            if entry.mem is not None:
                self._policy[entry.mem.name].touch(key)
                if entry.mem is not self.mem_tiers[0]:
                    self._promote_in_memory(entry)
                return self._lease(entry)
        data = self._read_disk(entry)
        if data is None:
            return None
        self._promote_from_disk(entry, data)
        return Lease(entry.info, "disk", [memoryview(data)])

    def _lease(self, entry: Entry) -> Lease:
        assert entry.mem is not None and entry.alloc is not None
        entry.pins += 1
        return Lease(entry.info, entry.mem.name, entry.mem.read_views(entry.alloc),
                     lambda: self._unpin(entry))

    def _unpin(self, entry: Entry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.doomed and entry.pins == 0 and entry.mem and entry.alloc:
                entry.mem.free(entry.alloc)
                entry.mem, entry.alloc = None, None

    def _read_disk(self, entry: Entry) -> bytearray | None:
        assert self.disk is not None
        try:
            return self.disk.read(entry.info, entry.namespace)
        except ChecksumMismatch as exc:
            log.warning("dropping corrupt chunk: %s", exc)
            with self._lock:
                self.counters["disk"].corrupt_dropped += 1
                if self._index.get(entry.info.key) is entry:
                    self._remove(entry.info.key)
            return None

    def _promote_from_disk(self, entry: Entry, data: bytearray) -> None:
        top = self.mem_tiers[0]
        with self._lock:
            if self._index.get(entry.info.key) is not entry or entry.mem is not None:
                return
            # A disk hit is the disk tier's most recent use. Without this touch the chunk stays
            # the disk LRU victim, and making room for it (demotions into a full disk) would
            # drop the very chunk being promoted.
            self._policy["disk"].touch(entry.info.key)
            try:
                alloc = self._make_room(0, entry.info.payload_bytes)
            except CapacityError:
                return  # everything pinned: serve from the disk copy without promoting
        _write_alloc(top, alloc, data)
        with self._lock:
            if self._index.get(entry.info.key) is not entry or entry.mem is not None:
                top.free(alloc)
                return
            entry.mem, entry.alloc = top, alloc
            self._policy[top.name].add(entry.info.key)
            self.counters["disk"].promotions_out += 1

    def _promote_in_memory(self, entry: Entry) -> None:
        """Move a hit from a lower memory tier to the top one if there is room without eviction."""
        top = self.mem_tiers[0]
        assert entry.mem is not None and entry.alloc is not None
        if entry.pins:
            return
        alloc = top.alloc(entry.info.payload_bytes)
        if alloc is None:
            return
        entry.mem.copy_between(entry.alloc, top, alloc)
        self._policy[entry.mem.name].remove(entry.info.key)
        self.counters[entry.mem.name].promotions_out += 1
        entry.mem.free(entry.alloc)
        entry.mem, entry.alloc = top, alloc
        self._policy[top.name].add(entry.info.key)

    # ---- lookup, prefetch, delete ----------------------------------------------------------
    def lookup(self, keys: Sequence[bytes], namespace: str | None = None) -> list[Entry | None]:
        with self._lock:
            return [e if e is not None and (namespace is None or e.namespace == namespace)
                    else None for e in map(self._index.get, keys)]

    def prefetch(self, keys: Iterable[bytes], next_n: int = 0,
                 namespace: str | None = None) -> int:
        """Queue background promotion of disk-only chunks (and up to next_n chain successors)."""
        wanted = list(keys)
        with self._lock:
            if next_n and wanted:
                wanted += self._successors(wanted[-1], next_n)
            todo = [e for k in wanted if (e := self._index.get(k)) is not None
                    and (namespace is None or e.namespace == namespace)
                    and e.mem is None and k not in self._prefetching]
            room = self.config.prefetch_queue - len(self._prefetching)
            self.prefetch_dropped += max(0, len(todo) - room)
            todo = todo[:max(0, room)]
            self._prefetching.update(e.info.key for e in todo)
        for e in todo:
            self._prefetch_pool.submit(self._prefetch_one, e)
        return len(todo)

    def _successors(self, key: bytes, n: int) -> list[bytes]:
        out: list[bytes] = []
        frontier = [key]
        while frontier and len(out) < n:
            nxt = sorted(self._children.get(frontier.pop(0), ()))
            out += nxt[:n - len(out)]
            frontier += nxt
        return out

    def _prefetch_one(self, entry: Entry) -> None:
        try:
            data = self._read_disk(entry)
            if data is not None:
                self._promote_from_disk(entry, data)
                with self._lock:
                    self.prefetches += 1
        finally:
            with self._lock:
                self._prefetching.discard(entry.info.key)

    def delete(self, keys: Iterable[bytes], namespace: str | None = None) -> int:
        with self._lock:
            return sum(self._remove(k) for k in keys if namespace is None
                       or ((e := self._index.get(k)) is not None and e.namespace == namespace))

    # ---- internals (call with the lock held) -----------------------------------------------
    def _insert(self, entry: Entry) -> None:
        key = entry.info.key
        self._index[key] = entry
        self._charge(entry)
        self._policy[entry.tier].add(key)
        if entry.disk_bytes and entry.mem is not None:
            self._policy["disk"].add(key)
        if entry.info.parent_key:
            self._children.setdefault(entry.info.parent_key, set()).add(key)

    def _remove(self, key: bytes) -> bool:
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        self._quotas.charge(entry.tenant, -entry.charged)
        entry.charged = 0
        for policy in self._policy.values():
            policy.remove(key)
        if entry.info.parent_key in self._children:
            self._children[entry.info.parent_key].discard(key)
            if not self._children[entry.info.parent_key]:
                del self._children[entry.info.parent_key]
        if entry.disk_bytes and self.disk:
            self.disk.delete(key, entry.disk_bytes)
            entry.disk_bytes = 0
        if entry.mem is not None and entry.alloc is not None:
            if entry.pins:
                entry.doomed = True
            else:
                entry.mem.free(entry.alloc)
                entry.mem, entry.alloc = None, None
        return True

    def _make_room(self, level: int, nbytes: int) -> Allocation:
        tier = self.mem_tiers[level]
        if not tier.fits(nbytes):
            raise CapacityError(f"chunk of {nbytes} bytes is larger than the {tier.name} tier "
                                f"({tier.capacity_bytes} bytes)")
        alloc = tier.alloc(nbytes)
        for key in self._policy[tier.name].victims():
            if alloc is not None:
                break
            entry = self._index[key]
            if entry.pins == 0:
                self._demote(entry, level)
                alloc = tier.alloc(nbytes)
        if alloc is None:
            raise CapacityError(f"{tier.name} tier is full of chunks being read "
                                f"({tier.used_bytes}/{tier.capacity_bytes} bytes pinned); retry")
        return alloc

    def _demote(self, entry: Entry, level: int) -> None:
        src = self.mem_tiers[level]
        assert entry.alloc is not None
        key = entry.info.key
        self.counters[src.name].evictions += 1
        self._policy[src.name].remove(key)
        if level + 1 < len(self.mem_tiers):
            dst = self.mem_tiers[level + 1]
            encoded = self._encode_for(entry, src, dst.name)
            try:
                alloc = self._make_room(level + 1, (encoded[0] if encoded else entry.info)
                                        .payload_bytes)
            except CapacityError:
                alloc = None
            if alloc is not None:
                if encoded:
                    _write_alloc(dst, alloc, encoded[1])
                    entry.info = encoded[0]
                    self._charge(entry)
                    self.counters[dst.name].encoded_in += 1
                else:
                    src.copy_between(entry.alloc, dst, alloc)
                src.free(entry.alloc)
                entry.mem, entry.alloc = dst, alloc
                self._policy[dst.name].add(key)
                self.counters[dst.name].demotions_in += 1
                return
        if (self.disk and not entry.disk_bytes
                and admit_to_disk(self.config.disk_admission, entry.hits)):
            encoded = self._encode_for(entry, src, "disk")
            if encoded:
                raw_info, entry.info = entry.info, encoded[0]
                self._write_disk(entry, [encoded[1].numpy().data])
                if entry.disk_bytes:
                    self.counters["disk"].encoded_in += 1
                    self._charge(entry)
                else:  # not written: the memory copy is freed below and the entry removed
                    entry.info = raw_info
            else:
                self._write_disk(entry, src.read_views(entry.alloc))
        src.free(entry.alloc)
        entry.mem, entry.alloc = None, None
        if entry.disk_bytes:
            self.counters["disk"].demotions_in += 1
        else:
            self._remove(key)

    def _encode_for(self, entry: Entry, src: MemoryTier, tier: str
                    ) -> tuple[ChunkInfo, torch.Tensor] | None:
        """(new info, encoded host payload) if the policy re-encodes the chunk as it is demoted
        into ``tier``, else None. A chunk that cannot be encoded (e.g. NaN values, or a payload
        that does not decode) is logged and kept as it is."""
        info = entry.info
        if self._codecs is None or entry.disk_bytes or not info.shape:
            return None
        if self._codecs.target_for_demotion(tier, info.codec, info.codec_params, info.dtype,
                                            info.shape) is None:
            return None
        assert entry.alloc is not None
        raw = bytearray(info.payload_bytes)  # writable: an identity decode views it, no copy
        pos = 0
        for view in src.read_views(entry.alloc):
            raw[pos:pos + len(view)] = view
            pos += len(view)
        try:
            enc = self._codecs.transcode_for_demotion(tier, raw, info.codec, info.codec_params,
                                                      info.dtype, info.shape, backend="torch")
        except KVStoreError as exc:
            log.warning("chunk %s kept as %s in the %s tier: %s", info.key.hex(), info.codec,
                        tier, exc)
            return None
        if enc is None:
            return None
        payload = enc.payload.cpu()
        new = dataclasses.replace(info, codec=enc.codec, codec_params=dict(enc.codec_params),
                                  payload_bytes=payload.numel(),
                                  checksum=checksum([payload.numpy().data]))
        return new, payload

    def _write_disk(self, entry: Entry, views: list[memoryview]) -> None:
        assert self.disk is not None
        size = self.disk.file_bytes(entry.info, entry.namespace, entry.tenant)
        if size > self.disk.capacity_bytes:
            return
        for key in self._policy["disk"].victims():
            if self.disk.used_bytes + size <= self.disk.capacity_bytes:
                break
            victim = self._index[key]
            if victim is entry:
                continue
            self.counters["disk"].evictions += 1
            if victim.mem is None:
                self._remove(key)
            else:  # keep the memory copy, drop only the disk copy
                self.disk.delete(key, victim.disk_bytes)
                victim.disk_bytes = 0
                self._policy["disk"].remove(key)
        try:
            entry.disk_bytes = self.disk.write(entry.info, entry.namespace, views, entry.tenant)
        except CapacityError as exc:
            log.warning("disk tier: %s", exc)
            return
        self._policy["disk"].add(entry.info.key)

    def _write_through(self, entry: Entry) -> None:
        with self._lock:
            if self._index.get(entry.info.key) is entry and not entry.disk_bytes \
                    and entry.mem is not None and entry.alloc is not None:
                self._write_disk(entry, entry.mem.read_views(entry.alloc))

    def _load_disk_index(self) -> None:
        assert self.disk is not None
        records = sorted(self.disk.scan(), key=lambda r: r.mtime)  # oldest first = LRU order
        for rec in records:
            self._insert(Entry(rec.info, rec.namespace, disk_bytes=rec.file_bytes,
                               created=rec.mtime, tenant=rec.tenant))
        if records:
            log.info("disk tier: rebuilt index of %d chunks (%d bytes)", len(records),
                     self.disk.used_bytes)

    # ---- introspection ---------------------------------------------------------------------
    def keys(self) -> list[tuple[bytes, int, str]]:
        """Snapshot of every chunk as (key, payload_bytes, namespace), e.g. for rebalancing.

        A chunk may be evicted or deleted right after the snapshot: readers must expect misses.
        """
        with self._lock:
            return [(k, e.info.payload_bytes, e.namespace) for k, e in self._index.items()]

    def tier_usage(self) -> list[tuple[str, int, int, int]]:
        """(name, capacity_bytes, used_bytes, chunks) per tier, top first."""
        with self._lock:
            out = []
            for t in self.mem_tiers:
                n = sum(1 for e in self._index.values() if e.mem is t)
                out.append((t.name, t.capacity_bytes, t.used_bytes, n))
            if self.disk:
                n = sum(1 for e in self._index.values() if e.disk_bytes)
                out.append(("disk", self.disk.capacity_bytes, self.disk.used_bytes, n))
            return out

    def close(self) -> None:
        self._prefetch_pool.shutdown(wait=True, cancel_futures=True)

    # ---- admin (kvstore/server/admin.py: inspect, evict; per-namespace usage) -------------
    def inspect(self, keys: Sequence[bytes]) -> list[ChunkRecord | None]:
        """Where each chunk lives and what it is, or None; reads nothing, counts no hit."""
        with self._lock:
            out: list[ChunkRecord | None] = []
            for k in keys:
                e = self._index.get(k)
                if e is None:
                    out.append(None)
                    continue
                tiers = ((e.mem.name,) if e.mem else ()) + (("disk",) if e.disk_bytes else ())
                out.append(ChunkRecord(e.info, e.namespace, tiers, e.created, e.hits))
            return out

    def evict_namespaces(self, namespaces: Iterable[str]) -> tuple[int, int]:
        """Remove every chunk of these namespaces from every tier: (chunks, payload bytes).
        Chunks being read stay readable until released, then their memory is freed."""
        wanted = set(namespaces)
        with self._lock:
            doomed = [(k, e.info.payload_bytes) for k, e in self._index.items()
                      if e.namespace in wanted]
            for k, _ in doomed:
                self._remove(k)
        return len(doomed), sum(n for _, n in doomed)

    def namespace_usage(self) -> dict[str, tuple[int, int]]:
        """namespace -> (chunks, stored bytes); a chunk in memory and on disk counts both."""
        with self._lock:
            out: dict[str, tuple[int, int]] = {}
            for e in self._index.values():
                copies = (e.mem is not None) + bool(e.disk_bytes)
                n, b = out.get(e.namespace, (0, 0))
                out[e.namespace] = (n + 1, b + copies * e.info.payload_bytes)
            return out


def _gpu_device(config: NodeConfig) -> str | None:
    if config.gpu_device == "none":
        return None
    if config.gpu_device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    return config.gpu_device


def _copy_into(views: list[memoryview], src: memoryview) -> None:
    if sum(len(v) for v in views) != len(src):
        raise ValueError(f"payload is {len(src)} bytes, reservation is {sum(map(len, views))}")
    pos = 0
    for v in views:
        v[:] = src[pos:pos + len(v)]
        pos += len(v)


def _write_alloc(tier: MemoryTier, alloc: Allocation, data: bytearray | torch.Tensor) -> None:
    views = tier.write_views(alloc)
    if views is not None:
        _copy_into(views, data.numpy().data if isinstance(data, torch.Tensor) else memoryview(data))
    else:
        tier.write_from(alloc, data if isinstance(data, torch.Tensor)
                        else torch.frombuffer(data, dtype=torch.uint8))


@dataclass(frozen=True)
class ChunkRecord:
    """What `kvstore admin inspect` reports of one chunk (a snapshot, see TierManager.inspect)."""

    info: ChunkInfo
    namespace: str
    tiers: tuple[str, ...]   # top first: a memory tier and/or "disk"
    created: float           # wall-clock time it was stored (disk index: file mtime)
    hits: int
