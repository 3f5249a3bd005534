"""Cluster membership as the client sees it: members, views, sources, and the rings they imply.

A ``ClusterView`` is an epoch plus the members at that epoch. Placement uses only members whose
state is ``up``; members that are ``draining`` still serve reads (they hand their chunks over) but
take no new writes. A ``MembershipSource`` (a fixed list here; a static file or the Redis watcher
in ``kvstore.cluster``) delivers views; epochs only grow, so an older view is never applied.
A ``Placement`` is what a client derives from one view: the rings for writes and for reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.errors import InvalidArgument, Unavailable
from kvstore.ring import DEFAULT_VNODES_PER_WEIGHT, DualHashRing

UP = "up"
DRAINING = "draining"
STATES = (UP, DRAINING)


@dataclass(frozen=True)
class Member:
    node_id: str
    address: str          # host:port of the node's gRPC service
    weight: float = 1.0   # capacity weight: share of the rings relative to the others
    state: str = UP
    incarnation: str = ""  # new on every process start: a restart at the same address shows

    def __post_init__(self) -> None:
        if not self.node_id or "\0" in self.node_id:
            raise InvalidArgument(f"member id must be a non-empty string, got {self.node_id!r}")
        if not self.address or ":" not in self.address:
            raise InvalidArgument(f"member {self.node_id}: address must be host:port, "
                                  f"got {self.address!r}")
        if not self.weight > 0:
            raise InvalidArgument(f"member {self.node_id}: weight must be > 0")
        if self.state not in STATES:
            raise InvalidArgument(f"member {self.node_id}: state must be one of {STATES}")


@dataclass(frozen=True)
class ClusterView:
    epoch: int
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        ids = [m.node_id for m in self.members]
        if len(ids) != len(set(ids)):
            raise InvalidArgument(f"duplicate member ids in {ids}")

    @property
    def ids(self) -> set[str]:
        return {m.node_id for m in self.members}

    def up(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.state == UP)

    def get(self, node_id: str) -> Member | None:
        return next((m for m in self.members if m.node_id == node_id), None)

    def same_members(self, other: ClusterView) -> bool:
        return set(self.members) == set(other.members)


OnChange = Callable[[ClusterView], None]


class MembershipSource(Protocol):
    """Delivers cluster views: ``start`` returns the first one and calls ``on_change`` later."""

    async def start(self, on_change: OnChange) -> ClusterView: ...

    async def close(self) -> None: ...


def build_ring(members: Iterable[Member],
               vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT) -> DualHashRing | None:
    """The dual hash ring over ``members`` (None when there are none). Every client and node
    builds it the same way from the same view, so they agree on every key's candidates."""
    ring = DualHashRing(vnodes_per_weight)
    for m in members:
        ring.add_node(m.node_id, m.weight)
    return ring if len(ring) else None


class Placement:
    """The rings of one view, plus the previous view's write ring for reads in a transition."""

    def __init__(self, view: ClusterView, vnodes: int, previous: Placement | None,
                 transition_s: float) -> None:
        self.view = view
        self.write_ring = build_ring(view.up(), vnodes)
        self.read_rings: list[DualHashRing] = [self.write_ring] if self.write_ring else []
        if any(m.state == DRAINING for m in view.members):
            self.read_rings.append(build_ring(view.members, vnodes))  # type: ignore[arg-type]
        self.previous = previous.write_ring if previous else None
        self.previous_until = time.monotonic() + transition_s

    def write_pairs(self, keys: Sequence[bytes]) -> list[tuple[str, str]]:
        if self.write_ring is None:
            raise Unavailable(f"no cluster member is up (epoch {self.view.epoch})")
        return self.write_ring.candidates_many(keys)

    def read_candidates(self, keys: Sequence[bytes]) -> list[list[str]]:
        rings = list(self.read_rings)
        if self.previous is not None and time.monotonic() < self.previous_until:
            rings.append(self.previous)
        if not rings:
            raise Unavailable(f"the cluster has no members (epoch {self.view.epoch})")
        per_ring = [r.candidates_many(keys) for r in rings]
        out = []
        for i in range(len(keys)):
            cands: list[str] = []
            for pairs in per_ring:
                cands.extend(n for n in pairs[i] if n not in cands)
            out.append(cands)
        return out
