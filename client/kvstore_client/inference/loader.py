"""Fetching chunks and preparing each layer's K/V on a loader thread, ahead of the compute.

Data flow for one request::

    lookup -> ChunkFetch (get_many batches on a pool, started at once)
           -> LayerLoader thread: wait prefix chunks -> layers < check: exact rows only
                                  wait content chunks -> layers >= check: exact + content rows,
                                  keys re-rotated to their new positions
           -> the compute thread takes layer l's buffers while the loader prepares l+1..l+k

The content fetch hides under the layers before the check layer (they recompute every
non-exact row, so they need only the exact prefix); the per-layer work (slice, copy to the
device, dtype conversion, re-rotation) hides under every layer's compute. On CUDA the loader
runs on its own stream and hands each layer over with an event.

Failure policy: a chunk that the store misses, that fails (get raises), that arrives after the
deadline or has the wrong shape/dtype is *not loaded*; its rows are recomputed. Never an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .segments import ChunkSpan
from .store import ChunkStore, chunk_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSlot:
    """Rows [span.start + use_from, span.start + use_to) come from this chunk; keys are rotated by
    ``delta`` positions on load (content chunks: the chunk's new start; prefix chunks: 0)."""

    span: ChunkSpan
    use_from: int
    use_to: int
    delta: int

    @property
    def rows(self) -> tuple[int, int]:
        return self.span.start + self.use_from, self.span.start + self.use_to


@dataclass
class FetchStats:
    requested: int = 0
    loaded: int = 0
    missing: int = 0
    failed: int = 0
    timed_out: int = 0
    bad: int = 0
    errors: list[str] = field(default_factory=list)


class ChunkFetch:
    """``get_many`` over ``keys`` in batches on ``pool``, collected against a deadline."""

    def __init__(
        self, store: ChunkStore, pool: cf.Executor, keys: Sequence[bytes], batch_chunks: int,
        device: torch.device | None = None,
    ) -> None:
        self.n = len(keys)
        get = _getter(store, device)
        self._parts = [
            (i, min(batch_chunks, self.n - i), pool.submit(get, list(keys[i : i + batch_chunks])))
            for i in range(0, self.n, batch_chunks)
        ]

    def collect(
        self, deadline: float, expected: Sequence[tuple[tuple[int, ...], torch.dtype]],
        stats: FetchStats,
    ) -> list[torch.Tensor | None]:
        """Tensors in key order; None where not loaded (see the module's failure policy)."""
        out: list[torch.Tensor | None] = [None] * self.n
        cf.wait([f for _, _, f in self._parts], timeout=max(0.0, deadline - time.perf_counter()))
        stats.requested += self.n
        for start, size, fut in self._parts:
            if not fut.done():
                fut.cancel()  # a running get_many finishes in the background; its result is dropped
                stats.timed_out += size
                stats.errors.append(f"fetch of {size} chunks passed its deadline")
                continue
            try:
                got = fut.result()
            except Exception as exc:  # noqa: BLE001 - fault boundary: a fetch never fails a request
                stats.failed += size
                stats.errors.append(f"get_many failed: {type(exc).__name__}: {exc}")
                log.warning("chunk fetch failed, recomputing its tokens: %r", exc)
                continue
            if len(got) != size:
                stats.bad += size
                stats.errors.append(f"get_many returned {len(got)} results for {size} keys")
                continue
            for j, tensor in enumerate(got):
                shape, dtype = expected[start + j]
                if tensor is None:
                    stats.missing += 1
                elif tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    stats.bad += 1
                    stats.errors.append(
                        f"chunk {start + j}: got {tuple(tensor.shape)} {tensor.dtype}, "
                        f"want {shape} {dtype}"
                    )
                else:
                    out[start + j] = tensor
                    stats.loaded += 1
        return out


def _getter(store: ChunkStore, device: torch.device | None) -> Any:
    """store.get_many, asked to deliver straight to ``device`` when that is a GPU and the store
    can (kvstore_client's clients copy from a co-located node's shared memory into GPU memory,
    skipping a host staging copy); otherwise chunks arrive on the CPU and the loader moves them."""
    if device is None or device.type != "cuda":
        return store.get_many
    try:
        params = inspect.signature(store.get_many).parameters.values()
    except (TypeError, ValueError):
        return store.get_many
    if any(p.name == "device" or p.kind is p.VAR_KEYWORD for p in params):
        return functools.partial(store.get_many, device=device)  # type: ignore[call-arg]
    return store.get_many


@dataclass
class LoaderTimings:
    fetch_wait_s: float = 0.0  # loader thread blocked on the store
    prepare_s: float = 0.0     # slicing, copying to the device, dtype conversion
    rerotate_s: float = 0.0


class LayerLoader:
    """Produces each layer's full-length K/V buffers ``[1, Hkv, N, D]`` in the compute dtype.

    The buffers are views of one [layers, 2, 1, Hkv, N, D] tensor and become the request's
    cache: rows that were not loaded hold zeros until the compute thread scatters fresh rows into
    them. Layers below ``check_layer`` get only the exact (prefix) rows, later layers also the
    content rows. ``lookahead`` bounds how many layers re-rotation runs ahead of the compute.
    """

    def __init__(
        self, *, store: ChunkStore, pool: cf.Executor, prefix: Sequence[LoadSlot],
        content: Sequence[LoadSlot], n_rows: int, n_layers: int, kv_heads: int, head_dim: int,
        check_layer: int, dtype: torch.dtype, device: torch.device, kv_dtype: torch.dtype,
        inv_freq: torch.Tensor, pairing: str, deadline: float, batch_chunks: int,
        lookahead: int, backend: str,
    ) -> None:
        self.prefix, self.content = list(prefix), list(content)
        self.n_rows, self.n_layers, self.check_layer = n_rows, n_layers, check_layer
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype, self.device, self.kv_dtype = dtype, device, kv_dtype
        self.inv_freq, self.pairing, self.backend = inv_freq, pairing, backend
        self.deadline, self.lookahead = deadline, lookahead
        self.stats = FetchStats()
        self.timings = LoaderTimings()
        keys = [s.span.key for s in self.prefix]
        self._prefix_fetch = ChunkFetch(store, pool, keys, batch_chunks, device)
        keys = [s.span.key for s in self.content]
        self._content_fetch = ChunkFetch(store, pool, keys, batch_chunks, device)
        self._prefix_loaded: list[tuple[LoadSlot, torch.Tensor]] | None = None
        self._content_loaded: list[tuple[LoadSlot, torch.Tensor]] | None = None
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor, object]] = {}
        self._kv = torch.empty(0)  # [layers, 2, 1, Hkv, N, D] once the prefix fetch settled
        self._consumed = 0
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, name="kv-layer-loader", daemon=True)
        self._thread.start()

    # ---- compute-thread side -------------------------------------------------------------

    def exact_mask(self) -> torch.Tensor:
        """bool [N]: rows whose exact KV was loaded (blocks until the prefix fetch settles)."""
        loaded = self._wait_for(lambda: self._prefix_loaded)
        return self._mask(loaded)

    def content_mask(self) -> torch.Tensor:
        """bool [N]: rows loaded from content chunks (blocks until the content fetch settles)."""
        loaded = self._wait_for(lambda: self._content_loaded)
        return self._mask(loaded)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values, event = self._wait_for(lambda: self._layers.get(index))
        with self._cond:
            del self._layers[index]
            self._consumed = index + 1
            self._cond.notify_all()
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)  # type: ignore[arg-type]
            keys.record_stream(current)
            values.record_stream(current)
        return keys, values

    def loaded_keys(self) -> set[bytes]:
        """Keys of the chunks that were loaded (valid once both fetches settled)."""
        with self._cond:
            got = (self._prefix_loaded or []) + (self._content_loaded or [])
        return {slot.span.key for slot, _ in got}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # ---- loader-thread side --------------------------------------------------------------

    def _run(self) -> None:
        ctx = torch.cuda.stream(self._stream) if self._stream is not None else (
            contextlib.nullcontext())
        try:
            with ctx:
                prefix = self._collect(self._prefix_fetch, self.prefix)
                with self._cond:
                    self._prefix_loaded = prefix
                    self._cond.notify_all()
                check = min(self.check_layer, self.n_layers)
                t0 = time.perf_counter()
                # Every layer's K/V lives in one buffer, filled with one copy per chunk for all
                # its layers (not one per chunk and layer: thousands of launches at 16K tokens).
                self._kv = torch.empty(
                    (self.n_layers, 2, 1, self.kv_heads, self.n_rows, self.head_dim),
                    dtype=self.dtype, device=self.device)
                self._place(prefix, 0)
                self._zero_gaps(prefix, 0, check)
                self.timings.prepare_s += time.perf_counter() - t0
                for layer in range(check):
                    if not self._produce(layer, None):
                        return
                content = self._collect(self._content_fetch, self.content)
                with self._cond:
                    self._content_loaded = content
                    self._cond.notify_all()
                t0 = time.perf_counter()
                self._place(content, check)  # content rows only from the check layer on
                self._zero_gaps(prefix + content, check, self.n_layers)
                self.timings.prepare_s += time.perf_counter() - t0
                delta = self._delta(content)
                for layer in range(check, self.n_layers):
                    if not self._produce(layer, delta):
                        return
        except BaseException as exc:  # handed to the compute thread, which re-raises it
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _place(self, loaded: list[tuple[LoadSlot, torch.Tensor]], first_layer: int) -> None:
        """Copy each loaded chunk's rows, layers first_layer.., into the buffer."""
        for slot, chunk in loaded:
            a, b = slot.rows
            self._kv[first_layer:, :, 0, :, a:b].copy_(
                chunk[first_layer:, :, :, slot.use_from : slot.use_to], non_blocking=True)

    def _zero_gaps(self, loaded: list[tuple[LoadSlot, torch.Tensor]], lo: int, hi: int) -> None:
        """Zero rows no chunk covered in layers [lo, hi) (they are recomputed; zeros until then)."""
        if lo >= hi:
            return
        pos = 0
        for a, b in sorted(slot.rows for slot, _ in loaded) + [(self.n_rows, self.n_rows)]:
            if a > pos:
                self._kv[lo:hi, :, :, :, pos:a].zero_()
            pos = max(pos, b)

    def _collect(
        self, fetch: ChunkFetch, slots: list[LoadSlot]
    ) -> list[tuple[LoadSlot, torch.Tensor]]:
        t0 = time.perf_counter()
        expected = [
            (chunk_shape(self.n_layers, self.kv_heads, s.span.num_tokens, self.head_dim),
             self.kv_dtype) for s in slots
        ]
        tensors = fetch.collect(self.deadline, expected, self.stats)
        self.timings.fetch_wait_s += time.perf_counter() - t0
        loaded = [(s, t) for s, t in zip(slots, tensors, strict=True) if t is not None]
        if slots and slots[0].span.kind == "prefix":
            # Keep the leading run only, as the prefix-reuse path must (a DynamicCache is a
            # prefix), so both paths agree on what "exact" means after a failed fetch.
            run = 0
            while run < len(loaded) and loaded[run][0] is slots[run]:
                run += 1
            loaded = loaded[:run]
        return loaded

    def _delta(self, content: list[tuple[LoadSlot, torch.Tensor]]) -> torch.Tensor | None:
        if not content:
            return None
        delta = torch.zeros(self.n_rows, dtype=torch.int32)
        for slot, _ in content:
            a, b = slot.rows
            delta[a:b] = slot.delta
        return delta.to(self.device)

    def _produce(self, layer: int, delta: torch.Tensor | None) -> bool:
        with self._cond:
            while not self._closed and layer - self._consumed >= self.lookahead:
                self._cond.wait()
            if self._closed:
                return False
        keys, values = self._kv[layer, 0], self._kv[layer, 1]  # [1, Hkv, N, D] views
        t1 = time.perf_counter()
        if delta is not None:
            from kvstore_kernels.rope import rerotate_keys

            rerotate_keys(keys, delta, self.inv_freq, self.pairing, out=keys,
                          backend=self.backend)
        t2 = time.perf_counter()
        event = None
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(self._stream)
        self.timings.rerotate_s += t2 - t1
        with self._cond:
            self._layers[layer] = (keys, values, event)
            self._cond.notify_all()
        return True

    def _wait_for(self, get):  # type: ignore[no-untyped-def]
        with self._cond:
            while (value := get()) is None:
                if self._error is not None:
                    raise self._error
                self._cond.wait()
            return value

    def _mask(self, loaded: list[tuple[LoadSlot, torch.Tensor]]) -> torch.Tensor:
        mask = torch.zeros(self.n_rows, dtype=torch.bool)
        for slot, _ in loaded:
            a, b = slot.rows
            mask[a:b] = True
        return mask.to(self.device)
