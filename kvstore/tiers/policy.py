"""Eviction and disk-admission policies: tiny strategy classes chosen once at construction."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol


class EvictionPolicy(Protocol):
    def add(self, key: bytes) -> None: ...
    def touch(self, key: bytes) -> None: ...
    def remove(self, key: bytes) -> None: ...
    def victims(self) -> Iterator[bytes]:
        """Keys in the order they should leave the tier (first = first to go)."""
        ...


class LRU:
    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def add(self, key: bytes) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: bytes) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: bytes) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[bytes]:
        return iter(list(self._order))


class FIFO(LRU):
    def touch(self, key: bytes) -> None:  # insertion order only
        pass


class LFU:
    """Least frequently used, ties broken by age; counts reset when a chunk leaves the tier."""

    def __init__(self) -> None:
        self._count: dict[bytes, int] = {}
        self._tick: dict[bytes, int] = {}
        self._clock = 0

    def add(self, key: bytes) -> None:
        self._clock += 1
        self._count[key] = self._count.get(key, 0) + 1
        self._tick[key] = self._clock

    touch = add

    def remove(self, key: bytes) -> None:
        self._count.pop(key, None)
        self._tick.pop(key, None)

    def victims(self) -> Iterator[bytes]:
        return iter(sorted(self._count, key=lambda k: (self._count[k], self._tick[k])))


POLICIES: dict[str, type[LRU] | type[LFU]] = {"lru": LRU, "fifo": FIFO, "lfu": LFU}


def make_policy(name: str) -> EvictionPolicy:
    return POLICIES[name]()


def admit_to_disk(rule: str, hits: int) -> bool:
    """Whether a chunk leaving memory is written to disk.

    on-demotion: always; second-use: only chunks read at least once since they were stored (as
    Dynamo does, disk bandwidth goes to what is likely to be read again); write-through: chunks
    are already on disk from their put, so demotion just drops the memory copy.
    """
    if rule == "second-use":
        return hits >= 1
    return True
