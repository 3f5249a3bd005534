"""Background write-back of newly computed chunks: never on the TTFT path, never fails a request.

One worker thread packs chunks (slicing the request's K/V, re-rotating content chunks' keys to
their canonical position 0, converting to the storage dtype, copying to the CPU) and calls
``put_many``. The captured K/V tensors are the cache's layer tensors at prefill time: decoding
appends by concatenation (new tensors), so they are not modified while the job runs.

At most ``max_pending`` jobs queue; a job beyond that is dropped and counted (a slow store must
not pile up copies of KV in memory).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .store import ChunkStore, chunk_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkWrite:
    key: bytes
    start: int            # first row in the request
    num_tokens: int
    parent: bytes | None
    canonical_start: int  # position the stored keys are rotated at (content: 0; prefix: start)


@dataclass
class WriteStats:
    jobs: int = 0
    chunks_written: int = 0
    chunks_failed: int = 0
    jobs_dropped: int = 0
    errors: list[str] = field(default_factory=list)


def pack_chunks(
    writes: Sequence[ChunkWrite], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
    kv_dtype: torch.dtype, inv_freq: torch.Tensor | None, pairing: str, backend: str,
) -> list[torch.Tensor]:
    """One CPU ``[L, 2, H, T, D]`` tensor per write (see store.py for the layout)."""
    _, kv_heads, _, head_dim = keys[0].shape
    out = []
    for w in writes:
        a, b = w.start, w.start + w.num_tokens
        chunk = torch.empty(chunk_shape(len(keys), kv_heads, b - a, head_dim), dtype=kv_dtype)
        shift = w.canonical_start - a
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            k_rows = k[:, :, a:b]
            if shift:
                from kvstore_kernels.rope import rerotate_keys

                if inv_freq is None:
                    raise ValueError("re-rotating a chunk needs the model's inv_freq")
                delta = torch.full((b - a,), shift, dtype=torch.int32, device=k.device)
                k_rows = rerotate_keys(k_rows, delta, inv_freq, pairing, backend=backend)
            chunk[layer, 0].copy_(k_rows[0])
            chunk[layer, 1].copy_(v[0, :, a:b])
        out.append(chunk)
    return out


class WriteBack:
    def __init__(self, store: ChunkStore, max_pending: int) -> None:
        self.store = store
        self.max_pending = max_pending
        self.stats = WriteStats()
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="kv-writeback")
        self._pending: set[cf.Future[None]] = set()
        self._lock = threading.Lock()

    def submit(
        self, writes: Sequence[ChunkWrite], pack: Callable[[], list[torch.Tensor]]
    ) -> cf.Future[None] | None:
        if not writes:
            return None
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.stats.jobs_dropped += 1
                log.warning("write-back queue full (%d jobs): dropped %d chunks",
                            self.max_pending, len(writes))
                return None
            fut = self._pool.submit(self._run, list(writes), pack)
            self._pending.add(fut)
            self.stats.jobs += 1
        fut.add_done_callback(self._done)
        return fut

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait for queued writes; True if none is left."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = cf.wait(pending, timeout=timeout_s)
        return not not_done

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _done(self, fut: cf.Future[None]) -> None:
        with self._lock:
            self._pending.discard(fut)

    def _run(self, writes: list[ChunkWrite], pack: Callable[[], list[torch.Tensor]]) -> None:
        try:
            tensors = pack()
            ok = self.store.put_many(
                [w.key for w in writes], tensors,
                parent_keys=[w.parent for w in writes],
                start_pos=[w.canonical_start for w in writes],
                num_tokens=[w.num_tokens for w in writes],
            )
        except Exception as exc:  # noqa: BLE001 - fault boundary: write-back never fails a request
            self.stats.chunks_failed += len(writes)
            self.stats.errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("write-back of %d chunks failed: %r", len(writes), exc)
            return
        written = sum(bool(x) for x in ok)
        self.stats.chunks_written += written
        self.stats.chunks_failed += len(writes) - written
