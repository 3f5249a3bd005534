"""AsyncClusterClient (asyncio core) and ClusterClient (blocking wrapper): many nodes, one store.

Placement: ``kvstore.ring.DualHashRing`` over the members that are *up* gives every chunk key two
distinct candidate nodes. ``replication=2`` writes both; ``replication=1`` writes the emptier
one (share of its memory tiers in use, from Stats refreshed in the background; it must lead by
``EMPTIER_MARGIN``, else the ring's first candidate) and falls back to the other when that one is
unavailable. A key is stored if at least one candidate took it; a key
that reached no candidate raises ``Unavailable``.

Reads: one batched Lookup round to every candidate of every key (one RPC per node, all nodes in
parallel), then one ``get_many`` per chosen holder (in parallel). The chosen holder of a key is
the one holding it in the fastest tier, ties going to the holder with fewer bytes assigned so far
(striping: a long prefix is pulled from both replicas at once). A holder that answers
UNAVAILABLE, misses its deadline or no longer has the chunk is replaced by the key's next
holder; one that fails mid-transfer keeps the chunks that arrived (get_many_partial), and only
the rest go to the next holder. Read candidates also include draining members and, for
``transition_s`` after a ring change, the previous ring's candidates, so chunks still being
copied are found where they were.

Membership: a fixed member list, or a ``MembershipSource`` (``kvstore.cluster``: a static file or
the Redis watcher) that calls ``apply_view`` on changes. A view builds a new placement that is
swapped in whole; calls already running keep the one they started with. A node that fails a call
is *suspect* for ``suspect_s``: other candidates are asked first meanwhile.

Deadlines: ``deadline_s`` bounds the whole cluster call. The lookup round, and a fetch round
after which another holder could still be tried, get half of the time left each, so one hung
node cannot use up the deadline of a read that another replica can serve.
Buffers: as ``AsyncKVStoreClient`` (results own their memory; ``out=`` buffers are filled in place).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from kvstore.errors import (
    DeadlineExceeded,
    InvalidArgument,
    KVStoreError,
    PermissionDenied,
    Unavailable,
)
from kvstore.keys import KeyScheme
from kvstore.ring import DEFAULT_VNODES_PER_WEIGHT
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client.aio import AsyncKVStoreClient, ClientOptions
from kvstore_client.gather import PENDING
from kvstore_client.loop_thread import LoopThread
from kvstore_client.membership import ClusterView, Member, MembershipSource, Placement
from kvstore_client.retry import RetryPolicy
from kvstore_client.security import ClientSecurity
from kvstore_client.tensors import BytesLike

log = logging.getLogger(__name__)
T = TypeVar("T")
FAILOVER_ERRORS = (Unavailable, DeadlineExceeded)
_TIER_RANK = {"gpu": 0, "cpu": 1, "disk": 2}
EMPTIER_MARGIN = 0.05  # replication=1: fraction of capacity by which the emptier must lead
# Per-node calls fail over to the other candidate rather than retrying one node for long.
CLUSTER_OPTIONS = ClientOptions(deadline_s=10.0, retry=RetryPolicy(max_attempts=2))
Job = Callable[[AsyncKVStoreClient, float], Awaitable[Any]]


@dataclass(frozen=True)
class ClusterLookupResult:
    found: list[bool]
    tiers: list[str]              # the best tier holding each key ("" for a miss)
    payload_bytes: list[int]
    nodes: list[list[str]]        # holders of each key, best first
    prefix_hits: int


class _Node:
    """One member's client, with what this client last saw of its health and fill."""

    def __init__(self, member: Member, scheme: KeyScheme, options: ClientOptions,
                 security: ClientSecurity) -> None:
        self.member = member
        self.client = AsyncKVStoreClient(member.address, scheme, options, security)
        self.suspect_until = 0.0
        self.used_bytes = 0
        self.capacity_bytes = 0
        self._ready = asyncio.Lock()

    async def ready(self) -> None:
        if self.client.session is None:
            async with self._ready:
                if self.client.session is None:
                    await self.client.handshake()

    @property
    def suspect(self) -> bool:
        return time.monotonic() < self.suspect_until

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0


class AsyncClusterClient:
    def __init__(self, scheme: KeyScheme, members: Sequence[Member] | None = None, *,
                 source: MembershipSource | None = None, replication: int = 2,
                 options: ClientOptions | None = None,
                 vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT,
                 transition_s: float = 30.0, suspect_s: float = 1.0,
                 stats_refresh_s: float = 1.0, security: ClientSecurity | None = None) -> None:
        if (members is None) == (source is None):
            raise InvalidArgument("give either a member list or a membership source")
        if replication not in (1, 2):
            raise InvalidArgument(f"replication must be 1 or 2, got {replication}")
        self.scheme = scheme
        self.replication = replication
        self.options = options or CLUSTER_OPTIONS
        # one token and TLS setting for every member (None = ClientSecurity.from_env())
        self.security = security if security is not None else ClientSecurity.from_env()
        self._members = tuple(members) if members is not None else None
        self._source = source
        self._vnodes = vnodes_per_weight
        self._transition_s = transition_s
        self._suspect_s = suspect_s
        self._stats_refresh_s = stats_refresh_s
        self._nodes: dict[str, _Node] = {}
        self._placement: Placement | None = None
        self._background: set[asyncio.Task] = set()
        self._usage_at = float("-inf")
        self.unreachable_misses = 0  # keys reported as misses because no candidate answered

    @classmethod
    async def connect(cls, scheme: KeyScheme, members: Sequence[Member] | None = None,
                      **kw: Any) -> AsyncClusterClient:
        client = cls(scheme, members, **kw)
        try:
            await client.start()
        except BaseException:
            await client.close()
            raise
        return client

    async def start(self) -> None:
        if self._source is not None:
            view = await self._source.start(self.apply_view)
        else:
            view = ClusterView(1, self._members or ())
        self.apply_view(view)

    # ---- membership --------------------------------------------------------------------------
    @property
    def view(self) -> ClusterView:
        if self._placement is None:
            raise Unavailable("the cluster client has not started")
        return self._placement.view

    def apply_view(self, view: ClusterView) -> None:
        """Use ``view`` from now on (ignored if older than the current one)."""
        cur = self._placement
        if cur is not None and (view.epoch < cur.view.epoch
                                or (view.epoch == cur.view.epoch and view.same_members(cur.view))):
            return
        # Members of the previous view stay reachable: transition reads may ask them.
        keep = view.ids | (cur.view.ids if cur else set())
        for m in view.members:
            node = self._nodes.get(m.node_id)
            if node is None or node.member.address != m.address:
                if node is not None:
                    self._spawn(node.client.close())
                self._nodes[m.node_id] = _Node(m, self.scheme, self.options, self.security)
            else:
                node.member = m
        for nid in [n for n in self._nodes if n not in keep]:
            self._spawn(self._nodes.pop(nid).client.close())
        self._placement = Placement(view, self._vnodes, cur, self._transition_s)
        log.info("cluster view epoch %d: %s", view.epoch,
                 ", ".join(f"{m.node_id}({m.state})" for m in view.members) or "no members")

    def update_members(self, members: Sequence[Member]) -> None:
        """Replace a fixed member list (the next epoch); with a source, the source decides."""
        self.apply_view(ClusterView(self.view.epoch + 1, tuple(members)))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- per-node calls ----------------------------------------------------------------------
    def _end(self, deadline_s: float | None) -> float:
        return asyncio.get_running_loop().time() + (deadline_s or self.options.deadline_s)

    async def _call(self, nid: str, job: Job, end: float) -> Any:
        """``job`` on one node; a failover error is returned (and marks the node), not raised."""
        node = self._nodes.get(nid)
        if node is None:
            return Unavailable(f"{nid} is no longer a cluster member")
        remaining = end - asyncio.get_running_loop().time()
        if remaining <= 0:
            return DeadlineExceeded(f"cluster call deadline passed before reaching {nid}")
        try:
            async with asyncio.timeout(remaining):
                await node.ready()
                result = await job(node.client, remaining)
        except FAILOVER_ERRORS as exc:
            node.suspect_until = time.monotonic() + self._suspect_s
            log.debug("node %s: %s", nid, exc)
            return exc
        except TimeoutError:
            node.suspect_until = time.monotonic() + self._suspect_s
            return DeadlineExceeded(f"node {nid} did not answer within {remaining:.3g} s")
        node.suspect_until = 0.0
        return result

    async def _fan_out(self, jobs: dict[str, Job], end: float) -> dict[str, Any]:
        ids = list(jobs)
        results = await asyncio.gather(*(self._call(n, jobs[n], end) for n in ids))
        return dict(zip(ids, results, strict=True))

    def _suspect(self, nid: str) -> bool:
        node = self._nodes.get(nid)
        return node is None or node.suspect

    # ---- put ---------------------------------------------------------------------------------
    async def put_many(self, keys: Sequence[bytes], tensors: Sequence[torch.Tensor | BytesLike],
                       *, parent_keys: Sequence[bytes | None] | None = None,
                       start_pos: Sequence[int] | None = None,
                       num_tokens: Sequence[int] | None = None,
                       deadline_s: float | None = None) -> list[bool]:
        """Store chunks on their candidates; stored flags in order (True if any copy stored)."""
        if len(keys) != len(tensors):
            raise InvalidArgument(f"{len(keys)} keys but {len(tensors)} payloads")
        if not keys:
            return []
        end = self._end(deadline_s)
        order = [self._write_order(p) for p in self.placement.write_pairs(keys)]
        pending = {i: self._first_targets(o) for i, o in enumerate(order)}
        tried = [set(t) for t in pending.values()]
        stored, reached = [False] * len(keys), [False] * len(keys)
        last_error: KVStoreError | None = None
        if self.replication == 1:
            self._maybe_refresh_usage()

        def job(idx: list[int]) -> Job:
            def sub(seq: Sequence[Any] | None) -> list[Any] | None:
                return [seq[i] for i in idx] if seq is not None else None
            return lambda c, t: c.put_many([keys[i] for i in idx], [tensors[i] for i in idx],
                                           parent_keys=sub(parent_keys), start_pos=sub(start_pos),
                                           num_tokens=sub(num_tokens), deadline_s=t)

        while pending:
            by_node = _group(pending)
            results = await self._fan_out({n: job(idx) for n, idx in by_node.items()}, end)
            for nid, idx in by_node.items():
                r = results[nid]
                if isinstance(r, KVStoreError):
                    last_error = r
                    continue
                for i, ok in zip(idx, r, strict=True):
                    reached[i] = True
                    stored[i] = stored[i] or ok
                self._account(nid, idx, tensors)
            pending = {}
            for i in range(len(keys)):
                nxt = [n for n in order[i] if n not in tried[i]][:1]
                if not reached[i] and nxt:
                    pending[i] = nxt
                    tried[i].update(nxt)
        lost = reached.count(False)
        if lost:
            raise Unavailable(f"{lost} of {len(keys)} chunks reached none of their candidates: "
                              f"{last_error}")
        return stored

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            raise Unavailable("the cluster client has not started")
        return self._placement

    def _write_order(self, pair: tuple[str, str]) -> list[str]:
        cands = list(dict.fromkeys(pair))
        if self.replication == 1 and len(cands) == 2:
            # The emptier wins only by a clear margin: on near-ties every client would pick the
            # same node until the next Stats refresh (herding); the ring's order balances them.
            first, second = (self._nodes[n].used_fraction for n in cands)
            if second + EMPTIER_MARGIN < first:
                cands.reverse()
        return sorted(cands, key=self._suspect)  # healthy first

    def _first_targets(self, order: list[str]) -> list[str]:
        healthy = [n for n in order if not self._suspect(n)]
        return healthy[:self.replication] or order[:1]

    def _account(self, nid: str, idx: list[int], tensors: Sequence[Any]) -> None:
        """Count our own writes into the node's fill until the next Stats refresh."""
        if self.replication == 1:
            node = self._nodes[nid]
            node.used_bytes += sum(_nbytes(tensors[i]) for i in idx)

    def _maybe_refresh_usage(self) -> None:
        now = time.monotonic()
        if now - self._usage_at >= self._stats_refresh_s:
            self._usage_at = now
            self._spawn(self.refresh_usage())

    async def refresh_usage(self) -> None:
        """Read every member's fill now (replication=1 places on the emptier candidate)."""
        try:
            results = await self.stats(deadline_s=min(2.0, self.options.deadline_s))
        except PermissionDenied as exc:  # Stats is for role admin where auth is on: fill stays
            log.debug("cannot read the nodes' fill: %s", exc)  # unknown (the ring decides)
            return
        for nid, s in results.items():
            node = self._nodes.get(nid)
            if node is not None and isinstance(s, pb.StatsResponse):
                mem = [t for t in s.tiers if t.name != "disk"]
                node.used_bytes = sum(t.used_bytes for t in mem)
                node.capacity_bytes = sum(t.capacity_bytes for t in mem)

    # ---- get ---------------------------------------------------------------------------------
    async def get_many(self, keys: Sequence[bytes], *, out: Sequence[torch.Tensor] | None = None,
                       device: str | torch.device | None = None,
                       deadline_s: float | None = None) -> list[torch.Tensor | None]:
        """Chunks as tensors (dtype and shape as put), None for a miss; see the module doc.

        Striping: each key goes to the holder with the fewest bytes assigned so far in this call
        among those holding it in its fastest tier, so a multi-chunk get is spread by bytes over
        both replicas and every node, all fetched in parallel. A holder that fails mid-transfer
        keeps the chunks that arrived; only the others go to their next holder."""
        if out is not None and len(out) != len(keys):
            raise InvalidArgument(f"{len(keys)} keys but {len(out)} output buffers")
        if not keys:
            return []
        end = self._end(deadline_s)
        holders = await self._locate(keys, _share(end))
        results: list[torch.Tensor | None] = [None] * len(keys)
        pending = {i: h for i, h in enumerate(holders) if h}
        load: Counter[str] = Counter()  # bytes assigned to each node in this call

        def job(idx: list[int]) -> Job:
            bufs = [out[i] for i in idx] if out is not None else None
            return lambda c, t: c.get_many_partial([keys[i] for i in idx], out=bufs,
                                                   device=device, deadline_s=t)

        while pending:
            by_node: dict[str, list[int]] = {}
            for i, hs in pending.items():
                best = min(hs, key=lambda h: (_TIER_RANK.get(h[1], 3), load[h[0]]))
                hs.remove(best)
                load[best[0]] += max(1, best[2])
                by_node.setdefault(best[0], []).append(i)
            # A hung holder must not eat the whole deadline while another holder is left.
            spare = any(pending[i] for idx in by_node.values() for i in idx)
            fetched = await self._fan_out({n: job(idx) for n, idx in by_node.items()},
                                          _share(end) if spare else end)
            for nid, idx in by_node.items():
                r = fetched[nid]
                if isinstance(r, KVStoreError):
                    continue
                got, error = r
                if error is not None:  # failed mid-transfer: keep what arrived
                    self._mark_suspect(nid, error)
                for i, t in zip(idx, got, strict=True):
                    if t is not PENDING:
                        results[i] = t  # type: ignore[assignment]
            pending = {i: hs for i, hs in pending.items() if results[i] is None and hs}
        return results

    def _mark_suspect(self, nid: str, why: object) -> None:
        node = self._nodes.get(nid)
        if node is not None:
            node.suspect_until = time.monotonic() + self._suspect_s
        log.debug("node %s: %s", nid, why)

    async def _locate(self, keys: Sequence[bytes], end: float, prefetch: bool = False,
                      prefetch_next: int = 0) -> list[list[tuple[str, str, int]]]:
        """Holders of each key as (node, tier, payload_bytes), in candidate order."""
        cands = self.placement.read_candidates(keys)
        by_node: dict[str, list[int]] = {}
        for i, c in enumerate(cands):
            for nid in [n for n in c if not self._suspect(n)] or c:
                by_node.setdefault(nid, []).append(i)

        def job(idx: list[int]) -> Job:
            return lambda c, t: c.lookup([keys[i] for i in idx], prefetch=prefetch,
                                         prefetch_next=prefetch_next, deadline_s=t)

        answers = await self._fan_out({n: job(idx) for n, idx in by_node.items()}, end)
        pos = {nid: {i: j for j, i in enumerate(idx)} for nid, idx in by_node.items()}
        holders: list[list[tuple[str, str, int]]] = [[] for _ in keys]
        unanswered = 0
        for i, c in enumerate(cands):
            answered = False
            for nid in c:
                r = answers.get(nid)
                if r is None or isinstance(r, KVStoreError) or i not in pos[nid]:
                    continue
                answered, j = True, pos[nid][i]
                if r.found[j]:
                    holders[i].append((nid, r.tiers[j], r.payload_bytes[j]))
            unanswered += not answered
        if unanswered:
            errors = [r for r in answers.values() if isinstance(r, KVStoreError)]
            if unanswered == len(keys):
                raise Unavailable(f"no candidate node answered for any of {len(keys)} keys: "
                                  f"{errors[0] if errors else 'no candidates'}")
            self.unreachable_misses += unanswered
            log.warning("%d of %d keys treated as misses: no candidate answered (%s)",
                        unanswered, len(keys), errors[0] if errors else "")
        return holders

    # ---- control -----------------------------------------------------------------------------
    async def lookup(self, keys: Sequence[bytes], *, prefetch: bool = False,
                     prefetch_next: int = 0,
                     deadline_s: float | None = None) -> ClusterLookupResult:
        holders = await self._locate(keys, self._end(deadline_s), prefetch, prefetch_next)
        for hs in holders:
            hs.sort(key=lambda h: _TIER_RANK.get(h[1], 3))
        found = [bool(hs) for hs in holders]
        prefix = next((i for i, f in enumerate(found) if not f), len(found))
        return ClusterLookupResult(found, [hs[0][1] if hs else "" for hs in holders],
                                   [hs[0][2] if hs else 0 for hs in holders],
                                   [[h[0] for h in hs] for hs in holders], prefix)

    async def delete_many(self, keys: Sequence[bytes], *, deadline_s: float | None = None) -> int:
        """Delete from every candidate; returns copies deleted (two per replicated key)."""
        if not keys:
            return 0
        cands = self.placement.read_candidates(keys)
        by_node: dict[str, list[int]] = {}
        for i, c in enumerate(cands):
            for nid in c:
                by_node.setdefault(nid, []).append(i)

        def job(idx: list[int]) -> Job:
            return lambda c, t: c.delete_many([keys[i] for i in idx], deadline_s=t)

        results = await self._fan_out({n: job(idx) for n, idx in by_node.items()},
                                      self._end(deadline_s))
        counts = [r for r in results.values() if not isinstance(r, KVStoreError)]
        if not counts:
            raise Unavailable(f"no candidate node answered the delete: {list(results.values())}")
        return sum(counts)

    async def stats(self, *, deadline_s: float | None = None
                    ) -> dict[str, pb.StatsResponse | KVStoreError]:
        """Stats of every member of the current view (an error for the ones that failed)."""
        jobs: dict[str, Job] = {m.node_id: (lambda c, t: c.stats(deadline_s=t))
                                for m in self.view.members}
        return await self._fan_out(jobs, self._end(deadline_s))

    async def put(self, key: bytes, data: torch.Tensor | BytesLike, **kw: Any) -> bool:
        return (await self.put_many([key], [data], **kw))[0]

    async def get(self, key: bytes, **kw: Any) -> torch.Tensor | None:
        return (await self.get_many([key], **kw))[0]

    async def close(self) -> None:
        if self._source is not None:
            await self._source.close()
        for node in self._nodes.values():
            await node.client.close()
        self._nodes.clear()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def __aenter__(self) -> AsyncClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ClusterClient:
    """Blocking wrapper: runs an AsyncClusterClient on a private event loop thread.

    Thread-safe like KVStoreClient. A ``source`` given here is started on that loop.
    """

    def __init__(self, scheme: KeyScheme, members: Sequence[Member] | None = None,
                 **kw: Any) -> None:
        self._loop = LoopThread("kvstore-cluster-client")
        try:
            self._client: AsyncClusterClient = self._loop.run(
                AsyncClusterClient.connect(scheme, members, **kw))
        except BaseException:
            self._loop.stop()
            raise

    @property
    def view(self) -> ClusterView:
        return self._client.view

    @property
    def replication(self) -> int:
        return self._client.replication

    def update_members(self, members: Sequence[Member]) -> None:
        self._loop.run(_call_soon(self._client.update_members, members))

    def put_many(self, keys: Sequence[bytes], tensors: Sequence[torch.Tensor | BytesLike],
                 **kw: Any) -> list[bool]:
        return self._loop.run(self._client.put_many(keys, tensors, **kw))

    def get_many(self, keys: Sequence[bytes], **kw: Any) -> list[torch.Tensor | None]:
        return self._loop.run(self._client.get_many(keys, **kw))

    def lookup(self, keys: Sequence[bytes], **kw: Any) -> ClusterLookupResult:
        return self._loop.run(self._client.lookup(keys, **kw))

    def delete_many(self, keys: Sequence[bytes], **kw: Any) -> int:
        return self._loop.run(self._client.delete_many(keys, **kw))

    def stats(self, **kw: Any) -> dict[str, pb.StatsResponse | KVStoreError]:
        return self._loop.run(self._client.stats(**kw))

    def put(self, key: bytes, data: torch.Tensor | BytesLike, **kw: Any) -> bool:
        return self.put_many([key], [data], **kw)[0]

    def get(self, key: bytes, **kw: Any) -> torch.Tensor | None:
        return self.get_many([key], **kw)[0]

    def close(self) -> None:
        if self._loop.running:
            self._loop.run(self._client.close())
            self._loop.stop()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _call_soon(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def _share(end: float) -> float:
    """Half of the time left until ``end``: a round that may need a retry leaves room for it."""
    now = asyncio.get_running_loop().time()
    return now + max(0.0, end - now) / 2


def _group(pending: dict[int, list[str]]) -> dict[str, list[int]]:
    by_node: dict[str, list[int]] = {}
    for i, nodes in pending.items():
        for nid in nodes:
            by_node.setdefault(nid, []).append(i)
    return by_node


def _nbytes(data: Any) -> int:
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    return len(memoryview(data).cast("B"))


__all__ = ["AsyncClusterClient", "ClusterClient", "ClusterLookupResult", "ClusterView", "Member"]
