"""A byte pool of fixed-size pages, allocated once up front.

A chunk occupies ceil(size / page_bytes) pages that need not be adjacent, so steady-state puts
and evictions never fragment the pool and allocation is O(pages). Data moves between sockets and
the pool with scatter/gather I/O over the page views, so a chunk is never copied into one
contiguous buffer on the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Allocation:
    pages: tuple[int, ...]
    nbytes: int


class PagePool:
    """Pages over one torch uint8 tensor on ``device`` (CPU, optionally pinned, or CUDA)."""

    def __init__(self, capacity_bytes: int, page_bytes: int, device: str = "cpu",
                 pin_memory: bool = False, buffer: torch.Tensor | None = None) -> None:
        self.page_bytes = page_bytes
        self.num_pages = capacity_bytes // page_bytes
        self.capacity_bytes = self.num_pages * page_bytes
        # torch.empty does not touch the memory, so a large pool costs nothing until used.
        # ``buffer`` (e.g. a shared-memory mapping, kvstore/tiers/shm.py) replaces the allocation.
        self.buffer = (buffer[:self.capacity_bytes] if buffer is not None else
                       torch.empty(self.capacity_bytes, dtype=torch.uint8, device=device,
                                   pin_memory=pin_memory))
        self.device = self.buffer.device
        self._host_view = (self.buffer.numpy().data if self.device.type == "cpu"
                           else None)
        self._free = list(range(self.num_pages - 1, -1, -1))

    @property
    def free_bytes(self) -> int:
        return len(self._free) * self.page_bytes

    @property
    def used_bytes(self) -> int:
        return self.capacity_bytes - self.free_bytes

    def pages_for(self, nbytes: int) -> int:
        return -(-nbytes // self.page_bytes)

    def alloc(self, nbytes: int) -> Allocation | None:
        n = self.pages_for(nbytes)
        if n > len(self._free):
            return None
        pages = tuple(self._free.pop() for _ in range(n))
        return Allocation(pages, nbytes)

    def free(self, alloc: Allocation) -> None:
        self._free.extend(alloc.pages)

    def _spans(self, alloc: Allocation) -> list[tuple[int, int]]:
        """(offset, length) per page, merging adjacent pages into one span."""
        spans: list[tuple[int, int]] = []
        left = alloc.nbytes
        for p in alloc.pages:
            n = min(self.page_bytes, left)
            off = p * self.page_bytes
            if spans and spans[-1][0] + spans[-1][1] == off:
                spans[-1] = (spans[-1][0], spans[-1][1] + n)
            else:
                spans.append((off, n))
            left -= n
        return spans

    def host_views(self, alloc: Allocation) -> list[memoryview]:
        """Writable zero-copy views of the allocation (CPU pools only)."""
        if self._host_view is None:
            raise TypeError("device pool has no host views; use copy_to_host/copy_from_host")
        return [self._host_view[o:o + n] for o, n in self._spans(alloc)]

    def tensor_views(self, alloc: Allocation) -> list[torch.Tensor]:
        return [self.buffer[o:o + n] for o, n in self._spans(alloc)]

    def copy_from(self, alloc: Allocation, src: torch.Tensor) -> None:
        """Fill the allocation from a flat uint8 tensor on any device."""
        pos = 0
        for view in self.tensor_views(alloc):
            view.copy_(src[pos:pos + view.numel()], non_blocking=True)
            pos += view.numel()

    def copy_to(self, alloc: Allocation, dst: torch.Tensor) -> None:
        pos = 0
        for view in self.tensor_views(alloc):
            dst[pos:pos + view.numel()].copy_(view, non_blocking=True)
            pos += view.numel()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
