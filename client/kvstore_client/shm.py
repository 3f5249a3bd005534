"""Shared-memory fast path for a client on the same machine as its node.

A node started with ``shared_memory: true`` keeps its CPU tier in a /dev/shm file and names it in
Handshake (``shm_path``). A client whose node address is local maps that file read-only; a get
then asks the node for leases on the chunks (data-plane GET_SHM), copies each chunk's spans out
of the mapping into the destination (a CPU tensor, the caller's ``out=`` buffer, or a GPU tensor),
and releases the leases in one RELEASE message. While a lease is held the node neither evicts nor
reuses the chunk's pages, so the copy reads stable bytes; checksums are verified as on TCP.

Only processes of the node's user can open the file (mode 0600). Any failure to map it (remote
node, other container, permissions, /dev/shm not shared) leaves the client on TCP, logged once at
INFO. With CUDA available the mapping is registered as pinned host memory (cudaHostRegister), so
copies into GPU memory run as DMA at PCIe speed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import mmap
import os
import socket
import warnings
from collections.abc import Callable, Sequence

import torch

from kvstore.chunk import checksum
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client.dataplane import DataConnection
from kvstore_client.tensors import empty_for

log = logging.getLogger(__name__)
_CUDA_HOST_REGISTER_READ_ONLY = 0x08
_logged: set[tuple[str, str]] = set()

Spans = list[tuple[int, int]]
Raw = tuple[pb.ChunkMeta, torch.Tensor]


def is_local_address(host: str) -> bool:
    """True for loopback and for addresses bound on this machine (a bind succeeds only there)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        ip = ipaddress.ip_address(addr[0])
        if ip.is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
            return True
        except OSError:
            continue
    return False


class SharedMemoryMapping:
    """A read-only mapping of a node's shared-memory CPU tier."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.path = path
        with warnings.catch_warnings():  # read-only buffer: this tensor is only ever read
            warnings.simplefilter("ignore", UserWarning)
            self.tensor: torch.Tensor | None = torch.frombuffer(self._mmap, dtype=torch.uint8)
        self._view: memoryview | None = memoryview(self._mmap)
        self.registered = False

    @classmethod
    def attach(cls, host: str, path: str, register_cuda: bool = True
               ) -> SharedMemoryMapping | None:
        """The node's mapping, or None (TCP it is) when it is not local or cannot be mapped."""
        if not path:
            return None
        why = ""
        if not is_local_address(host):
            why = f"node host {host!r} is not a local address"
        elif not os.path.exists(path):
            why = f"{path} does not exist here (another machine or container?)"
        if not why:
            try:
                mapping = cls(path)
            except (OSError, ValueError) as exc:
                why = f"cannot map {path}: {exc}"
            else:
                if register_cuda:
                    mapping.register_cuda()
                return mapping
        if (host, why) not in _logged:
            _logged.add((host, why))
            log.info("shared memory not used, chunks go over TCP: %s", why)
        return None

    def register_cuda(self) -> bool:
        """Page-lock the mapping for CUDA (pinned host memory: async DMA to the GPU)."""
        if self.registered or self.tensor is None or not torch.cuda.is_available():
            return self.registered
        cudart = torch.cuda.cudart()
        ptr = self.tensor.data_ptr()
        rc = int(cudart.cudaHostRegister(ptr, self.size, 0))
        if rc != 0:  # a read-only mapping may need cudaHostRegisterReadOnly
            _clear_cuda_error()
            rc = int(cudart.cudaHostRegister(ptr, self.size, _CUDA_HOST_REGISTER_READ_ONLY))
        if rc != 0:
            _clear_cuda_error()
            log.info("cudaHostRegister of %s failed (error %d): GPU copies from shared memory "
                     "are staged, not DMA", self.path, rc)
            return False
        self.registered = True
        return True

    def check(self, spans: Spans, nbytes: int) -> bool:
        return (sum(n for _, n in spans) == nbytes
                and all(0 <= o and o + n <= self.size for o, n in spans))

    def views(self, spans: Spans) -> list[memoryview]:
        assert self._view is not None
        return [self._view[o:o + n] for o, n in spans]

    def copy_out(self, spans: Spans, dst: torch.Tensor) -> None:
        """Copy the spans into flat uint8 ``dst`` (CPU, or CUDA: non_blocking, caller syncs)."""
        assert self.tensor is not None
        pos = 0
        if dst.is_cuda:
            for o, n in spans:
                dst[pos:pos + n].copy_(self.tensor[o:o + n], non_blocking=True)
                pos += n
            return
        # Host copies are plain memcpy through memoryviews, not torch's copy_: torch spreads a
        # large copy over its OpenMP threads, and with several client processes on one machine
        # those threads oversubscribe the cores (measured: 8 clients on 16 cores fell from
        # GB/s to 0.05 GB/s).
        out = dst.numpy().data
        src = self.views(spans)
        for view in src:
            out[pos:pos + len(view)] = view
            pos += len(view)

    def close(self) -> None:
        if self.registered and self.tensor is not None:
            rc = int(torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr()))
            if rc != 0:
                log.warning("cudaHostUnregister of %s failed (error %d)", self.path, rc)
            self.registered = False
        self.tensor = None
        if self._view is not None:
            self._view.release()
            self._view = None
        try:
            self._mmap.close()
        except BufferError:
            pass  # a tensor slice is still alive somewhere; the mapping goes with it


async def fetch(conn: DataConnection, mapping: SharedMemoryMapping, keys: Sequence[bytes],
                receive_buffer: Callable[[int, pb.ChunkMeta], tuple[torch.Tensor, memoryview]]
                | None, device: torch.device | None, verify: bool
                ) -> tuple[list[Raw | None], int, int, list[int]]:
    """One GET_SHM round for ``keys``: (results, chunks copied from shared memory, corrupt,
    indices of the keys fetched over TCP instead).

    Hits are copied out of the mapping into ``receive_buffer(index, meta)`` (CPU), or with
    ``device`` into fresh tensors there (checksum verified on the mapping first, corrupt ones
    become None); chunks the node could not serve from shared memory come over GET. CPU results
    are returned unverified (the caller checks them as it does TCP payloads).
    """
    replies = await conn.get_shm(keys)
    results: list[Raw | None] = [None] * len(keys)
    copies: list[tuple[int, pb.ChunkMeta, Spans]] = []
    fallback: list[int] = []
    for i, rep in enumerate(replies):
        if rep is None:
            continue
        meta, _, spans = rep
        if spans and mapping.check(spans, meta.payload_bytes):
            copies.append((i, meta, spans))
        else:  # not in shared memory (or spans this mapping lacks): GET it
            fallback.append(i)
    lease_ids = [rep[1] for rep in replies if rep is not None and rep[2]]
    corrupt = 0

    def alloc(i: int, meta: pb.ChunkMeta) -> tuple[torch.Tensor, memoryview]:
        if receive_buffer is not None:
            return receive_buffer(i, meta)
        return empty_for(meta.dtype, meta.shape, meta.payload_bytes)

    def copy_all() -> int:
        bad = 0
        for i, meta, spans in copies:
            if device is None:
                raw, _ = alloc(i, meta)
            else:
                if verify and checksum(mapping.views(spans)) != meta.checksum:
                    bad += 1
                    continue
                raw = torch.empty(meta.payload_bytes, dtype=torch.uint8, device=device)
            mapping.copy_out(spans, raw)
            results[i] = (meta, raw)
        if device is not None and device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        return bad

    try:
        if copies:
            corrupt = await asyncio.to_thread(copy_all)
    finally:
        if lease_ids:
            await conn.release(lease_ids)
    if fallback:
        want = [bytes(keys[i]) for i in fallback]
        pending = iter(fallback)
        bufs: list[torch.Tensor] = []

        def receive(meta: pb.ChunkMeta) -> memoryview:
            index = next(pending)
            while bytes(keys[index]) != meta.key:
                index = next(pending)
            raw, view = alloc(index, meta)
            bufs.append(raw)
            return view
        metas = await conn.get(want, receive)
        it = iter(bufs)
        for i, m in zip(fallback, metas, strict=True):
            results[i] = None if m is None else (m, next(it))
    n_copied = len(copies) - corrupt
    return results, n_copied, corrupt, fallback


def _clear_cuda_error() -> None:
    """Reset CUDA's last error after a failed cudaHostRegister (else torch reports it later)."""
    for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0"):
        try:
            ctypes.CDLL(name).cudaGetLastError()
            return
        except (OSError, AttributeError):
            continue
