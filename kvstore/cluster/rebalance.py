"""Background rebalancing: when the ring changes, copy the chunks whose candidates changed to their
new owners (bandwidth-limited), then release the copies that are no longer needed.

Each node runs one ``Rebalancer`` over its own chunks. For a ring change old -> new, a key is
looked at only if its candidate *set* changed. Then (``plan_moves``):

* this node is no longer a candidate (a *leaver*): make sure ``replication`` of the new
  candidates hold the key (copy where missing), then delete the local copy;
* this node stays a candidate and the other new candidate is new: copy to it, unless an old
  candidate that left the set is still alive (leavers send, so a key is sent once, not twice);
  that covers a dead leaver, whose keys the surviving replica re-replicates.

Before copying, one batched Lookup per target skips keys it already holds, so a retried pass or a
key sent by someone else costs one lookup, not a transfer. A failed pass is retried; local copies
are released only after their targets confirmed them. Copies go through a token bucket
(``bytes_per_s``), so rebalancing never takes more than its share of the network.

A member that restarted at the same address (new ``incarnation``, memory empty) keeps its place
on the rings; the replicas that stayed copy its share back to it.

Draining is a pass in which every local key is a leaver, repeated until none is left. A periodic
*sweep* hands over keys this node should not hold under the current ring at all (a client whose
ring was a moment behind wrote them here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from kvstore.errors import KVStoreError
from kvstore.keys import KeyScheme
from kvstore.ring import DEFAULT_VNODES_PER_WEIGHT, DualHashRing
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.wire import info_to_pb
from kvstore_client.aio import AsyncKVStoreClient, ClientOptions
from kvstore_client.membership import ClusterView, build_ring
from kvstore_client.retry import RetryPolicy
from kvstore_client.security import ClientSecurity

if TYPE_CHECKING:
    from kvstore.server.core import StoreCore
    from kvstore.tiers.manager import Lease

log = logging.getLogger(__name__)
_LOOKUP_BATCH = 4096
_COPY_OPTIONS = ClientOptions(deadline_s=60.0, retry=RetryPolicy(max_attempts=3),
                              client_name="kvstore-rebalance")


class TokenBucket:
    """At most ``burst_bytes + rate * t`` bytes in any ``t`` seconds. A take larger than the
    bucket goes into debt (later takes wait it off), so chunks bigger than the burst still pass."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = float(rate_bytes_per_s), float(burst_bytes), clock
        self.tokens, self._last = self.burst, clock()

    def reserve(self, nbytes: int) -> float:
        """Take ``nbytes`` now; returns the seconds to wait before sending them."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= nbytes
        return max(0.0, -self.tokens / self.rate)

    async def take(self, nbytes: int) -> None:
        wait = self.reserve(nbytes)
        if wait:
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class Move:
    index: int                   # into the planned key list
    targets: tuple[str, ...]     # nodes that should hold the key, preferred first
    copies: int                  # how many of them must hold it
    release: bool                # drop the local copy once they do


CHANGE, DRAIN, SWEEP = "change", "drain", "sweep"


def plan_moves(self_id: str, keys: Sequence[bytes], old_ring: DualHashRing | None,
               new_ring: DualHashRing, live: set[str], replication: int,
               mode: str = CHANGE, lost: frozenset[str] = frozenset()) -> list[Move]:
    """What this node must do for a ring change (pure: see the module doc for the rules).

    ``mode``: CHANGE looks only at keys whose candidate set changed; DRAIN at every key (this
    node is not on ``new_ring``, so all are leavers); SWEEP only at keys this node should not
    hold under ``new_ring`` (written by a client whose ring was behind), as leavers.
    ``lost``: members that restarted (same place on the rings, copies gone): keys they should
    hold count as changed, and they send nothing.
    """
    new_pairs = new_ring.candidates_many(keys)
    old_pairs = old_ring.candidates_many(keys) if old_ring is not None else None
    moves = []
    for i, new in enumerate(new_pairs):
        old = old_pairs[i] if old_pairs is not None else ()
        new_set = set(new)
        if mode == CHANGE and set(old) == new_set and not new_set & lost:
            continue
        if self_id in new_set:
            others = [n for n in new if n != self_id]
            if mode == SWEEP or replication == 1 or not others:
                continue
            if others[0] in old and others[0] not in lost:
                continue  # it had the key already
            if any(n in live and n not in lost for n in old if n not in new_set and n != self_id):
                continue  # a live leaver sends it
            moves.append(Move(i, (others[0],), 1, False))
        else:
            targets = tuple(dict.fromkeys(new))
            moves.append(Move(i, targets, min(replication, len(targets)), True))
    return moves


class LocalChunks(Protocol):
    """This node's own chunks, as the rebalancer needs them."""

    def keys(self) -> list[tuple[bytes, int, str]]: ...   # (key, payload_bytes, namespace)

    async def read(self, key: bytes) -> Lease | None: ...

    def scheme(self, namespace: str) -> KeyScheme | None: ...

    def delete(self, keys: Sequence[bytes]) -> int: ...


class CoreChunks:
    """LocalChunks over a StoreCore in this process.

    Reads go through ``TierManager.get`` (a disk-resident chunk is promoted to memory on the
    way, like any read). Chunks restored from disk whose namespace no session has opened since
    start have no known key scheme and cannot be handed over (counted as skipped).
    """

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def keys(self) -> list[tuple[bytes, int, str]]:
        return self.core.manager.keys()

    async def read(self, key: bytes) -> Lease | None:
        return await asyncio.to_thread(self.core.manager.get, key)  # may read disk

    def scheme(self, namespace: str) -> KeyScheme | None:
        return self.core.sessions.scheme(namespace)

    def delete(self, keys: Sequence[bytes]) -> int:
        return self.core.manager.delete(keys)


class CopyClient(AsyncKVStoreClient):
    """Stores chunks with their metadata as-is (codec, parent, positions): node-to-node copies."""

    async def put_chunks(self, metas: Sequence[pb.ChunkMeta], payloads: Sequence[memoryview],
                         deadline_s: float | None = None) -> list[bool]:
        if self.session is None:
            await self.handshake()
        items = [(m, p, None) for m, p in zip(metas, payloads, strict=True)]
        if self._pool is not None:
            async def op(conn):  # noqa: ANN001, ANN202 - DataConnection -> list[bool]
                return [bool(await conn.put(m, p)) for m, p, _ in items]
            return await self._data(op, deadline_s)
        return await self._put_grpc(items, deadline_s)


@dataclass
class RebalanceStats:
    passes: int = 0
    failed_passes: int = 0
    keys_changed: int = 0      # local keys whose candidate set changed (moves planned)
    keys_copied: int = 0
    bytes_copied: int = 0
    keys_released: int = 0
    keys_skipped: int = 0      # vanished before the copy, or no known key scheme
    copy_seconds: float = 0.0  # wall time of passes that copied something

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Rebalancer:
    def __init__(self, node_id: str, local: LocalChunks, *, replication: int = 2,
                 bytes_per_s: float = 64 << 20, burst_bytes: float | None = None,
                 vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT, settle_s: float = 0.2,
                 retry_s: float = 2.0, max_attempts: int = 10, batch_bytes: int = 8 << 20,
                 sweep_s: float = 60.0, security: ClientSecurity | None = None) -> None:
        self.node_id, self.local, self.replication = node_id, local, replication
        # how this node reaches its peers (kvstore/cluster/security.py); None = plaintext
        self.security = security or ClientSecurity()
        self.bucket = TokenBucket(bytes_per_s, burst_bytes or max(64 << 10, bytes_per_s / 4))
        self.vnodes, self.settle_s, self.retry_s = vnodes_per_weight, settle_s, retry_s
        self.max_attempts, self.batch_bytes, self.sweep_s = max_attempts, batch_bytes, sweep_s
        self.stats = RebalanceStats()
        self._clients: dict[tuple[str, str, str], CopyClient] = {}
        self._processed: ClusterView | None = None
        self._target: ClusterView | None = None
        self._wake = asyncio.Event()
        self._busy = False
        self._task: asyncio.Task | None = None

    # ---- background loop ---------------------------------------------------------------------
    def start(self, view: ClusterView) -> None:
        self._processed = self._target = view
        self._task = asyncio.get_running_loop().create_task(self._run())

    def update(self, view: ClusterView) -> None:
        if self._target is None or view.epoch > self._target.epoch:
            self._target = view
            self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._busy and self._processed is self._target

    async def _run(self) -> None:
        attempts = 0
        loop = asyncio.get_running_loop()
        while True:
            try:  # a sweep now and then finds chunks written with an outdated ring
                await asyncio.wait_for(self._wake.wait(), self.sweep_s)
            except TimeoutError:
                await self._sweep()
                continue
            await asyncio.sleep(self.settle_s)  # let a burst of changes settle into one pass
            self._wake.clear()
            target = self._target
            if target is None or target is self._processed:
                continue
            self._busy = True
            try:
                ok = await self.run_pass(self._processed, target)
            except KVStoreError as exc:
                log.warning("rebalance pass to epoch %d failed: %s", target.epoch, exc)
                ok = False
            finally:
                self._busy = False
            attempts = 0 if ok else attempts + 1
            if ok or attempts >= self.max_attempts:
                if not ok:
                    log.error("giving up on part of the rebalance to epoch %d after %d tries",
                              target.epoch, attempts)
                self._processed, attempts = target, 0
                if self._target is not target:
                    self._wake.set()
            else:
                loop.call_later(self.retry_s, self._wake.set)

    async def _sweep(self) -> None:
        view = self._processed
        if view is None or not self.idle:
            return
        self._busy = True
        try:
            await self.run_pass(view, view, SWEEP)
        except KVStoreError as exc:
            log.warning("rebalance sweep failed: %s", exc)
        finally:
            self._busy = False

    async def drain(self, view: Callable[[], ClusterView], timeout_s: float) -> bool:
        """Hand every local chunk to its owners in ``view()`` (where this node is not up)."""
        await self._stop_loop()
        end = time.monotonic() + timeout_s
        while self.local.keys():
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                ok = await asyncio.wait_for(self.run_pass(self._processed, view(), DRAIN),
                                            remaining)
            except TimeoutError:
                break
            if not ok:
                await asyncio.sleep(min(self.retry_s, max(0.0, end - time.monotonic())))
        left = len(self.local.keys())
        if left:
            log.warning("drain ended with %d chunks not handed over", left)
        return left == 0

    # ---- one pass ----------------------------------------------------------------------------
    async def run_pass(self, old: ClusterView | None, new: ClusterView,
                       mode: str = CHANGE) -> bool:
        """Move what the change old -> new asks of this node; True when nothing is left over."""
        entries = self.local.keys()
        new_ring = build_ring(new.up(), self.vnodes)
        if not entries or new_ring is None:
            return True  # nothing to move, or nobody to move it to (keep everything)
        old_ring = build_ring(old.up(), self.vnodes) if old is not None else None
        lost = _restarted(old, new) if old is not None else frozenset()
        keys = [e[0] for e in entries]
        moves = await asyncio.to_thread(plan_moves, self.node_id, keys, old_ring, new_ring,
                                        new.ids, self.replication, mode, lost)
        self.stats.passes += 1
        self.stats.keys_changed += len(moves)
        if not moves:
            return True
        started = time.monotonic()
        addresses = {m.node_id: m.address for m in new.members}
        ok = await self._execute(moves, entries, addresses)
        self.stats.copy_seconds += time.monotonic() - started
        self.stats.failed_passes += not ok
        return ok

    async def _execute(self, moves: list[Move], entries: list[tuple[bytes, int, str]],
                       addresses: dict[str, str]) -> bool:
        unknown = [mv for mv in moves if self.local.scheme(entries[mv.index][2]) is None]
        if unknown:  # retrying cannot help these: count them once and leave them in place
            self.stats.keys_skipped += len(unknown)
            log.warning("rebalance: %d chunks have no known key scheme (no session opened their "
                        "namespace since start); they stay here", len(unknown))
            moves = [mv for mv in moves if self.local.scheme(entries[mv.index][2]) is not None]
        groups: dict[tuple[str, str], list[Move]] = {}
        for mv in moves:
            for t in mv.targets:
                groups.setdefault((t, entries[mv.index][2]), []).append(mv)
        have: dict[int, set[str]] = {mv.index: set() for mv in moves}
        unreachable: set[str] = set()
        for (target, ns), group in groups.items():  # who already holds what
            client = self._client(target, addresses[target], ns)
            try:
                for part in _batches(group, _LOOKUP_BATCH):
                    res = await client.lookup([entries[mv.index][0] for mv in part])
                    for mv, found in zip(part, res.found, strict=True):
                        if found:
                            have[mv.index].add(target)
            except KVStoreError as exc:
                log.warning("rebalance: lookup on %s failed: %s", target, exc)
                unreachable.add(target)
        sends: dict[tuple[str, str], list[Move]] = {}
        for mv in moves:
            missing = [t for t in mv.targets if t not in have[mv.index] and t not in unreachable]
            for t in missing[:max(0, mv.copies - len(have[mv.index]))]:
                sends.setdefault((t, entries[mv.index][2]), []).append(mv)
        for (target, ns), group in sends.items():
            try:
                for mv in await self._copy(self._client(target, addresses[target], ns), group,
                                           entries):
                    have[mv.index].add(target)
            except KVStoreError as exc:
                log.warning("rebalance: copy to %s failed: %s", target, exc)
        done = [mv for mv in moves if len(have[mv.index]) >= mv.copies]
        release = [entries[mv.index][0] for mv in done if mv.release]
        if release:
            self.stats.keys_released += self.local.delete(release)
        return len(done) == len(moves)

    async def _copy(self, client: CopyClient, group: list[Move],
                    entries: list[tuple[bytes, int, str]]) -> list[Move]:
        """Copy the group's keys to the client's node in batches; returns the moves now there."""
        copied: list[Move] = []
        batch: list[tuple[Move, pb.ChunkMeta, memoryview]] = []
        size = 0
        for mv in group:
            lease = await self.local.read(entries[mv.index][0])
            if lease is None:  # evicted or deleted since the snapshot: nothing to hand over
                self.stats.keys_skipped += 1
                continue
            with lease:  # pages are reused once released: copy the bytes out (one copy)
                meta = info_to_pb(lease.info)
                payload = memoryview(b"".join(lease.views))
            await self.bucket.take(meta.payload_bytes)
            batch.append((mv, meta, payload))
            size += meta.payload_bytes
            if size >= self.batch_bytes:
                copied += await self._send(client, batch)
                batch, size = [], 0
        if batch:
            copied += await self._send(client, batch)
        return copied

    async def _send(self, client: CopyClient, batch: list) -> list[Move]:
        stored = await client.put_chunks([b[1] for b in batch], [b[2] for b in batch])
        done = [mv for (mv, meta, _), ok in zip(batch, stored, strict=True) if ok]
        self.stats.keys_copied += len(done)
        self.stats.bytes_copied += sum(meta.payload_bytes for (_, meta, _), ok
                                       in zip(batch, stored, strict=True) if ok)
        return done

    def _client(self, target: str, address: str, ns: str) -> CopyClient:
        key = (target, address, ns)
        client = self._clients.get(key)
        if client is None:
            scheme = self.local.scheme(ns) or KeyScheme("kvstore-rebalance", "uint8")
            client = self._clients[key] = CopyClient(address, scheme, _COPY_OPTIONS,
                                                     self.security)
        return client

    # ---- shutdown ----------------------------------------------------------------------------
    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def close(self) -> None:
        await self._stop_loop()
        for c in self._clients.values():
            await c.close()
        self._clients.clear()


def _restarted(old: ClusterView, new: ClusterView) -> frozenset[str]:
    """Members with a new incarnation since ``old``: same ring position, memory empty."""
    return frozenset(m.node_id for m in new.members
                     if (o := old.get(m.node_id)) is not None and o.incarnation != m.incarnation)


def _batches(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]
