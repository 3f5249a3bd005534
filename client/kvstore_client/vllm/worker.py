"""The worker side of the connector: chunks into vLLM's paged cache and out of it.

Loads: ``start_load`` sends one batched get for every chunk the step loads (a thread: the forward
pass starts meanwhile); ``wait_layer`` (vLLM calls it as each attention layer starts) waits for
the chunks once, checks them, and writes that layer's slice of every good chunk into its blocks.
A chunk that is missing (lost, evicted), late (past load_deadline_s), unreachable or not what
this model stores (shape or dtype) fails: its blocks and the later blocks of its request are
reported by ``take_load_errors`` (get_block_ids_with_load_errors), and vLLM, with
``kv_load_failure_policy: "recompute"``, recomputes from there. Never wrong KV: a failed chunk is
never written, and if a layer's load hook did not run, the whole load counts as failed.

Saves: ``submit_saves`` (from wait_for_save, after the step's last layer) queues each SaveOp on a
background thread that copies the chunks out of vLLM's blocks and puts them; the scheduler keeps
a finished request's blocks until ``finished_saving`` reports that request (its saves landed,
or failed: a failed save is a future miss, logged, never a failed request). The copy happens in
the background, not per layer, because a chunk is one tensor of all layers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kvstore.errors import KVStoreError
from kvstore.keys import KeyScheme
from kvstore_client.vllm.config import ConnectorConfig, blocks_per_chunk
from kvstore_client.vllm.layout import chunk_shape, gather_chunk, scatter_layer
from kvstore_client.vllm.meta import ConnectorMeta, LoadOp, SaveOp
from kvstore_client.vllm.store import Store

log = logging.getLogger(__name__)


@dataclass
class _Load:
    ops: list[LoadOp]
    fetch: Future[list[torch.Tensor | None]]
    chunks: list[list[torch.Tensor]] | None = None   # per op: the leading good chunks
    layers_done: int = 0


class WorkerSide:
    def __init__(self, config: ConnectorConfig, scheme: KeyScheme, store: Store, tp_rank: int,
                 block_size: int) -> None:
        self.config = config
        self.scheme = scheme
        self.store = store
        self.rank = tp_rank
        self.block_size = block_size
        self.chunk = config.chunk_tokens
        self.bpc = blocks_per_chunk(self.chunk, block_size)
        self.caches: list[torch.Tensor] = []
        self._index: dict[str, int] = {}
        self._shape: tuple[int, ...] = ()
        self._load: _Load | None = None
        self._load_errors: set[int] = set()
        self._fetch_pool = ThreadPoolExecutor(1, thread_name_prefix="kvstore-load")
        self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="kvstore-save")
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()   # saves in flight per request
        self._saving: set[str] = set()             # requests that had saves
        self._finishing: set[str] = set()          # ... and that vLLM has finished
        # counts, bytes and seconds (load_fetch_s: the batched get; load_wait_s: the forward
        # pass waiting for it; load_scatter_s: writing chunks into blocks; save_gather_s)
        self.stats: defaultdict[str, float] = defaultdict(float)

    def register(self, layers: list[tuple[str, torch.Tensor]]) -> None:
        self.caches = [t for _, t in layers]
        self._index = {name: i for i, (name, _) in enumerate(layers)}
        self._shape = chunk_shape(layers, self.chunk)

    # ---- loads --------------------------------------------------------------------------
    def start_load(self, meta: ConnectorMeta) -> None:
        if not meta.loads:
            return
        keys = [k for op in meta.loads for k in op.keys[self.rank]]
        self._load = _Load(meta.loads, self._fetch_pool.submit(self._fetch, keys))

    def _fetch(self, keys: list[bytes]) -> list[torch.Tensor | None]:
        t0 = time.perf_counter()
        try:
            return self.store.get_many(keys, deadline_s=self.config.load_deadline_s)
        except KVStoreError as exc:
            log.warning("kvstore load of %d chunk(s) failed, recomputing them: %s",
                        len(keys), exc)
            return [None] * len(keys)
        finally:
            self.stats["load_fetch_s"] += time.perf_counter() - t0

    def wait_layer(self, layer_name: str) -> None:
        load = self._load
        layer = self._index.get(layer_name)
        if load is None or layer is None:
            return
        t0 = time.perf_counter()
        if load.chunks is None:
            load.chunks = self._check(load)
            self.stats["load_wait_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
        for op, chunks in zip(load.ops, load.chunks, strict=True):
            for i, chunk in enumerate(chunks):
                c = op.first_chunk + i
                lo, hi = max(op.start, c * self.chunk), min(op.end, (c + 1) * self.chunk)
                blocks = op.block_ids[(lo - op.start) // self.block_size:
                                      (hi - op.start) // self.block_size]
                scatter_layer(self.caches[layer], chunk[layer], lo - c * self.chunk, blocks)
        load.layers_done += 1
        self.stats["load_scatter_s"] += time.perf_counter() - t0

    def _check(self, load: _Load) -> list[list[torch.Tensor]]:
        """Per op, its leading run of good chunks; blocks from the first bad one on fail."""
        results = iter(load.fetch.result())
        good: list[list[torch.Tensor]] = []
        dtype = self.caches[0].dtype
        for op in load.ops:
            chunks = [next(results) for _ in op.keys[self.rank]]
            ok: list[torch.Tensor] = []
            for t in chunks:
                if t is None:
                    break
                if tuple(t.shape) != self._shape or t.dtype != dtype:
                    log.warning("kvstore chunk of request %s has shape %s %s, this model's "
                                "chunks are %s %s: recomputing it", op.req_id, tuple(t.shape),
                                t.dtype, self._shape, dtype)
                    break
                ok.append(t)
            good.append(ok)
            loaded_end = min(op.end, (op.first_chunk + len(ok)) * self.chunk)
            if loaded_end < op.end:
                self._fail(op, loaded_end)
            self.stats["tokens_loaded"] += max(0, loaded_end - op.start)
            self.stats["bytes_loaded"] += sum(t.numel() * t.element_size() for t in ok)
        return good

    def _fail(self, op: LoadOp, from_token: int) -> None:
        first = max(0, from_token - op.start) // self.block_size
        self._load_errors.update(op.block_ids[first:])
        self.stats["tokens_failed"] += op.end - max(op.start, from_token)

    def end_load(self) -> None:
        """After the step: a load whose layers were not all written failed as a whole."""
        load, self._load = self._load, None
        if load is None or load.layers_done >= len(self.caches):
            return
        log.error("kvstore: only %d of %d layers ran their load hook; recomputing the load",
                  load.layers_done, len(self.caches))
        for op in load.ops:
            self._fail(op, op.start)

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # ---- saves --------------------------------------------------------------------------
    def submit_saves(self, meta: ConnectorMeta) -> None:
        for op in meta.saves:
            with self._lock:
                self._pending[op.req_id] += 1
                self._saving.add(op.req_id)
            self._save_pool.submit(self._save, op)

    def _save(self, op: SaveOp) -> None:
        try:
            keys, parents = op.keys[self.rank], op.parents[self.rank]
            t0 = time.perf_counter()
            tensors = [gather_chunk(self.caches, op.block_ids[i * self.bpc:(i + 1) * self.bpc])
                       for i in range(len(keys))]
            self.stats["save_gather_s"] += time.perf_counter() - t0
            stored = self.store.put_many(keys, tensors, parent_keys=parents,
                                         start_pos=[(op.first_chunk + i) * self.chunk
                                                    for i in range(len(keys))],
                                         num_tokens=[self.chunk] * len(keys),
                                         deadline_s=self.config.save_deadline_s)
            self.stats["chunks_saved"] += sum(stored)
            self.stats["bytes_saved"] += sum(t.numel() * t.element_size() for t in tensors)
        except KVStoreError as exc:
            self.stats["saves_failed"] += len(op.keys[self.rank])
            log.warning("kvstore save of %d chunk(s) of request %s failed (a future miss): %s",
                        len(op.keys[self.rank]), op.req_id, exc)
        finally:
            with self._lock:
                self._pending[op.req_id] -= 1

    def wait_saves(self, req_ids: set[str] | None = None, timeout_s: float | None = None) -> None:
        """Block until the saves of ``req_ids`` (all, if None) are done (preemption, shutdown)."""
        def busy() -> bool:
            with self._lock:
                return any(n > 0 for r, n in self._pending.items()
                           if req_ids is None or r in req_ids)
        end = time.monotonic() + (timeout_s or self.config.save_deadline_s * 2)
        while busy() and time.monotonic() < end:
            time.sleep(0.005)

    def finished_saving(self, finished_req_ids: set[str]) -> set[str]:
        with self._lock:
            self._finishing |= finished_req_ids & self._saving
            done = {r for r in self._finishing if self._pending[r] <= 0}
            self._finishing -= done
            self._saving -= done
            for r in done:
                del self._pending[r]
        return done

    def close(self) -> None:
        self.wait_saves()
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._save_pool.shutdown(wait=True)
        self.store.close()
