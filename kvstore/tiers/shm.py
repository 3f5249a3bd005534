"""A CPU tier in a shared-memory file, so co-located clients can read chunks without a socket.

With ``shared_memory: true`` the CPU tier's page pool is a file in /dev/shm (created O_EXCL,
mode 0600, sized with ftruncate, mapped MAP_SHARED): only processes of the same user can map it.
The node tells clients its path in Handshake (``shm_path``); the data plane's GET_SHM op hands out
(offset, length) spans of a leased chunk, and the client copies them straight out of its own
read-only mapping (docs/PROTOCOL.md). The file is unlinked when the node stops.

tmpfs pages are committed lazily: a pool larger than the free space of /dev/shm would crash the
node with SIGBUS once it fills, so the node refuses to start then (docker: raise --shm-size).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)
SHM_DIR = "/dev/shm"


class SharedMemoryFile:
    """A read-write MAP_SHARED mapping of a fresh /dev/shm file, and a uint8 tensor over it."""

    def __init__(self, capacity_bytes: int, tag: str, directory: str = SHM_DIR) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:64]
        self.path = os.path.join(directory,
                                 f"kvstore-{safe}-{os.getpid()}-{secrets.token_hex(6)}")
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if capacity_bytes > free:
            raise OSError(f"{directory} has {free} bytes free, the shared-memory CPU tier needs "
                          f"{capacity_bytes}: shrink cpu_capacity_bytes or enlarge {directory}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity_bytes)
            self._mmap = mmap.mmap(fd, capacity_bytes, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        self.size = capacity_bytes
        self.buffer = torch.frombuffer(self._mmap, dtype=torch.uint8)
        self.base = self.buffer.data_ptr()
        log.info("CPU tier in shared memory %s (%d bytes)", self.path, capacity_bytes)

    def spans_of(self, views: Sequence[memoryview]) -> list[tuple[int, int]] | None:
        """(offset, length) in the file of each view, or None if any lies outside the mapping."""
        spans: list[tuple[int, int]] = []
        for v in views:
            n = len(v)
            if n == 0:
                continue
            addr = np.frombuffer(v, dtype=np.uint8).ctypes.data
            off = addr - self.base
            if off < 0 or off + n > self.size:
                return None
            spans.append((off, n))
        return spans

    def close(self) -> None:
        """Unlink the file (clients keep their mappings until they unmap)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            self._mmap.close()
        except BufferError:
            pass  # views still exported (the pool tensor); the mapping goes with them
