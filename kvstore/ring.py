"""Dual consistent-hash ring: two independent candidates for every key.

Shared by chunk placement (store nodes) and request routing (inference workers): both need the same
"which two members own this key" answer, so both use this one module.

Layout. Each member gets ``round(vnodes_per_weight * weight)`` virtual nodes on *each* of two
rings. A virtual node's position on ring r is ``xxh3_64(b"kvstore-ring/v1\\0" + r + member +
b"\\0" + index_u32le)``; a key's position on ring r is ``xxh3_64(key, seed=SEED_r)`` with two
fixed seeds, so the two rings are independent hash functions over explicit bytes (never Python's
``hash()``, which is salted per process). A key belongs to the first virtual node at or after its
position, wrapping around.

Candidates. ``candidates(key) = (owner on ring 1, owner on ring 2)``; if both rings name the same
member, the second walks clockwise on ring 2 to the next virtual node of a *different* member. With
one member only, both candidates are that member (there is nobody else to name).

Remapping. Adding or removing a member inserts or deletes only its own virtual nodes, so only the
arcs that end at them change owner: about ``1/(n+1)`` of the keys move on a join and the leaving
member's share on a leave. ``epoch`` grows by one on every membership change so callers can tell
stale answers apart.

Numbers (tests/test_ring.py): with 2000 virtual nodes per unit weight and 8 equal members, the
largest member holds <= 1.10x the average of 1M keys (shared/PAPERS.md section 4: the share's
coefficient of variation is about 1/sqrt(v)).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import xxhash

from kvstore.errors import ConfigError, FailedPrecondition, InvalidArgument

DEFAULT_VNODES_PER_WEIGHT = 2000
# Two fixed seeds make two independent hash functions over the same key bytes.
RING_SEEDS = (0x6B7673746F726531, 0x6B7673746F726532)
_VNODE_DOMAIN = b"kvstore-ring/v1\0"


def key_position(key: bytes, ring: int) -> int:
    """Position of ``key`` on ring 0 or 1 (an unsigned 64-bit integer)."""
    return xxhash.xxh3_64_intdigest(key, seed=RING_SEEDS[ring])


def key_positions(keys: Iterable[bytes], ring: int) -> np.ndarray:
    """Positions of many keys on one ring, as a uint64 array."""
    seed = RING_SEEDS[ring]
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(k, seed=seed) for k in keys), dtype=np.uint64)


def _vnode_positions(node_id: str, ring: int, count: int) -> list[int]:
    prefix = _VNODE_DOMAIN + bytes([ring]) + node_id.encode("utf-8") + b"\0"
    digest = xxhash.xxh3_64_intdigest
    return [digest(prefix + struct.pack("<I", i)) for i in range(count)]


class _Ring:
    """One ring: sorted vnode positions and the member index that owns each."""

    def __init__(self) -> None:
        self.positions = np.empty(0, dtype=np.uint64)
        self.owners = np.empty(0, dtype=np.int32)
        self._pos_list: list[int] = []  # Python ints: bisect on a list beats numpy per lookup
        self._owner_list: list[int] = []

    def rebuild(self, points: dict[int, list[int]]) -> None:
        pos = np.fromiter(
            (p for plist in points.values() for p in plist),
            dtype=np.uint64,
            count=sum(len(p) for p in points.values()),
        )
        own = np.fromiter(
            (idx for idx, plist in points.items() for _ in plist), dtype=np.int32, count=len(pos)
        )
        # Ties between positions are astronomically unlikely; lexsort keeps them deterministic.
        order = np.lexsort((own, pos))
        self.positions, self.owners = pos[order], own[order]
        self._pos_list = self.positions.tolist()
        self._owner_list = self.owners.tolist()

    def slot(self, position: int) -> int:
        i = bisect.bisect_left(self._pos_list, position)
        return 0 if i == len(self._pos_list) else i

    def slots(self, positions: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.positions, positions, side="left")
        idx[idx == len(self.positions)] = 0
        return idx


class DualHashRing:
    """Members on two consistent-hash rings with capacity-weighted virtual nodes.

    Not thread-safe: callers that share one ring across threads hold their own lock (the router
    service does). Lookups never allocate per call beyond the answer.
    """

    def __init__(self, vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT) -> None:
        if vnodes_per_weight < 1:
            raise ConfigError(f"vnodes_per_weight must be >= 1, got {vnodes_per_weight}")
        self.vnodes_per_weight = vnodes_per_weight
        self.epoch = 0
        self._weights: dict[str, float] = {}
        self._names: list[str] = []  # member index -> id (indices are stable until rebuild)
        self._rings = (_Ring(), _Ring())
        self._points: tuple[dict[str, list[int]], dict[str, list[int]]] = ({}, {})

    # -- membership -------------------------------------------------------------------------

    def add_node(self, node_id: str, weight: float = 1.0) -> None:
        if not node_id or "\0" in node_id:
            raise InvalidArgument("node_id must be a non-empty string without NUL bytes")
        if node_id in self._weights:
            raise FailedPrecondition(f"node {node_id!r} is already on the ring")
        if not weight > 0:
            raise InvalidArgument(f"weight must be > 0, got {weight}")
        count = max(1, round(self.vnodes_per_weight * weight))
        self._weights[node_id] = float(weight)
        for r in (0, 1):
            self._points[r][node_id] = _vnode_positions(node_id, r, count)
        self._rebuild()

    def remove_node(self, node_id: str) -> None:
        if node_id not in self._weights:
            raise FailedPrecondition(f"node {node_id!r} is not on the ring")
        del self._weights[node_id]
        for r in (0, 1):
            del self._points[r][node_id]
        self._rebuild()

    def _rebuild(self) -> None:
        self._names = sorted(self._weights)
        index = {name: i for i, name in enumerate(self._names)}
        for r in (0, 1):
            self._rings[r].rebuild({index[n]: pts for n, pts in self._points[r].items()})
        self.epoch += 1

    @property
    def nodes(self) -> list[str]:
        return list(self._names)

    def weight(self, node_id: str) -> float:
        return self._weights[node_id]

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._weights

    # -- lookups ----------------------------------------------------------------------------

    def _require_nodes(self) -> None:
        if not self._names:
            raise FailedPrecondition("the ring has no nodes")

    def primary(self, key: bytes) -> str:
        self._require_nodes()
        ring = self._rings[0]
        return self._names[ring._owner_list[ring.slot(key_position(key, 0))]]

    def candidates(self, key: bytes) -> tuple[str, str]:
        """The key's two candidates: distinct whenever the ring has two or more members."""
        self._require_nodes()
        r1, r2 = self._rings
        first = r1._owner_list[r1.slot(key_position(key, 0))]
        i = r2.slot(key_position(key, 1))
        owners = r2._owner_list
        if len(self._names) > 1:
            n = len(owners)
            while owners[i] == first:
                i = (i + 1) % n
        return self._names[first], self._names[owners[i]]

    def candidates_many(self, keys: Sequence[bytes]) -> list[tuple[str, str]]:
        """Batch form of ``candidates`` (the single-key form is the reference)."""
        first, second = self.candidate_indices(key_positions(keys, 0), key_positions(keys, 1))
        names = self._names
        return [(names[a], names[b]) for a, b in zip(first.tolist(), second.tolist(), strict=True)]

    def candidate_indices(
        self, pos1: np.ndarray, pos2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Member indices (into ``nodes``) of both candidates, from precomputed key positions."""
        self._require_nodes()
        r1, r2 = self._rings
        first = r1.owners[r1.slots(pos1)]
        slot2 = r2.slots(pos2)
        second = r2.owners[slot2]
        if len(self._names) > 1:
            clash = np.flatnonzero(second == first)
            n = len(r2.owners)
            # Runs of one member's consecutive vnodes are short (about 1/(1-1/n) on average), so
            # a few vectorized steps resolve every clash.
            while clash.size:
                slot2[clash] = (slot2[clash] + 1) % n
                second[clash] = r2.owners[slot2[clash]]
                clash = clash[second[clash] == first[clash]]
        return first, second

    def primary_indices(self, positions: np.ndarray) -> np.ndarray:
        self._require_nodes()
        ring = self._rings[0]
        return ring.owners[ring.slots(positions)]

    def shares(self, keys: Sequence[bytes] | np.ndarray) -> dict[str, float]:
        """Share of the sample keys whose primary is each member (keys or ring-1 positions)."""
        self._require_nodes()
        pos = keys if isinstance(keys, np.ndarray) else key_positions(keys, 0)
        if pos.size == 0:
            raise InvalidArgument("shares needs at least one sample key")
        counts = np.bincount(self.primary_indices(pos), minlength=len(self._names))
        return {name: float(c) / pos.size for name, c in zip(self._names, counts, strict=True)}
