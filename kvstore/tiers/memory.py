"""Memory tiers: CPU (host pages) and GPU (device pages, or a CPU-simulated stand-in for tests)."""

from __future__ import annotations

import torch

from kvstore.tiers.pool import Allocation, PagePool
from kvstore.tiers.shm import SharedMemoryFile


class MemoryTier:
    """A named page pool. ``host`` tiers hand out zero-copy views; device tiers copy via staging."""

    def __init__(self, name: str, capacity_bytes: int, page_bytes: int, device: str = "cpu",
                 simulated_device: bool = False, shm_tag: str | None = None) -> None:
        pin = device == "cpu" and not simulated_device and torch.cuda.is_available()
        self.name = name
        # shm_tag (host CPU tiers only): back the pool with a /dev/shm file named after it
        self.shm = (SharedMemoryFile(capacity_bytes // page_bytes * page_bytes, shm_tag)
                    if shm_tag is not None and device == "cpu" and not simulated_device else None)
        self.pool = PagePool(capacity_bytes, page_bytes, device=device, pin_memory=pin,
                             buffer=self.shm.buffer if self.shm else None)
        # A simulated GPU tier lives in host memory but takes the device code path (copies
        # through a staging buffer), so the GPU tier's logic is tested on machines without one.
        self.host = device == "cpu" and not simulated_device

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()

    @property
    def capacity_bytes(self) -> int:
        return self.pool.capacity_bytes

    @property
    def used_bytes(self) -> int:
        return self.pool.used_bytes

    def fits(self, nbytes: int) -> bool:
        return self.pool.pages_for(nbytes) <= self.pool.num_pages

    def alloc(self, nbytes: int) -> Allocation | None:
        return self.pool.alloc(nbytes)

    def free(self, alloc: Allocation) -> None:
        self.pool.free(alloc)

    def write_views(self, alloc: Allocation) -> list[memoryview] | None:
        """Views to receive bytes into directly, or None if the tier needs write_from."""
        return self.pool.host_views(alloc) if self.host else None

    def write_from(self, alloc: Allocation, src: torch.Tensor) -> None:
        self.pool.copy_from(alloc, src)

    def read_views(self, alloc: Allocation) -> list[memoryview]:
        """The chunk's bytes as host memoryviews (zero-copy for host tiers, staged otherwise)."""
        if self.host:
            return self.pool.host_views(alloc)
        staging = torch.empty(alloc.nbytes, dtype=torch.uint8,
                              pin_memory=torch.cuda.is_available())
        self.pool.copy_to(alloc, staging)
        return [staging.numpy().data]

    def copy_between(self, src_alloc: Allocation, dst: MemoryTier, dst_alloc: Allocation) -> None:
        """Move bytes to another memory tier without a detour through Python bytes."""
        if dst.pool.device == self.pool.device:
            pos = 0
            for view in self.pool.tensor_views(src_alloc):
                dst._write_part(dst_alloc, pos, view)
                pos += view.numel()
            return
        staging = torch.empty(src_alloc.nbytes, dtype=torch.uint8, device=dst.pool.device)
        self.pool.copy_to(src_alloc, staging)
        dst.pool.copy_from(dst_alloc, staging)

    def _write_part(self, alloc: Allocation, offset: int, part: torch.Tensor) -> None:
        """Copy ``part`` to byte ``offset`` of the allocation."""
        pos = 0
        for view in self.pool.tensor_views(alloc):
            lo, hi = max(offset, pos), min(offset + part.numel(), pos + view.numel())
            if lo < hi:
                view[lo - pos:hi - pos].copy_(part[lo - offset:hi - offset])
            pos += view.numel()
