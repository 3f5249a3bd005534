"""The scheduler side of the connector: which tokens to load, which chunks to save.

Per request, from its prompt's token ids, kvstore's chained prefix keys (``kvstore.keys``:
seedless xxh3 over the token ids and the namespace, the same in every process, never vLLM's
per-process block hashes), one key list per tensor-parallel rank.

* Lookup: the first ``get_num_new_matched_tokens`` starts one batched Lookup in a thread and
  answers None (vLLM asks again next step) until it returns: the scheduler never waits on the
  network. A failed or late lookup is a miss (logged), never a failed request.
* Hit: the leading run of chunks every rank holds, capped so that at least one prompt token is
  computed (vLLM needs that token's logits) and rounded down to whole vLLM blocks. Loads are
  synchronous: the worker loads them in the step that computes the rest of the prompt.
* Saves: a prompt chunk is saved in the step after which all its tokens are computed (with
  chunked prefill that may be several steps after it started); chunks the store already had and
  the partial last chunk are not saved. ``request_finished`` keeps the request's blocks (returns
  True) when any save was scheduled: the worker copies chunks out of vLLM's blocks in the
  background and reports the request in ``finished_sending`` once its saves have landed.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvstore.errors import KVStoreError
from kvstore.keys import KeyScheme, prefix_keys
from kvstore_client.vllm.config import ConnectorConfig, blocks_per_chunk
from kvstore_client.vllm.meta import ConnectorMeta, LoadOp, SaveOp
from kvstore_client.vllm.store import Store, prefix_hits

log = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt: list[int]
    keys: list[list[bytes]]               # per rank: chained keys of the prompt's full chunks
    lookup: Future[int] | None = None
    hit_chunks: int | None = None         # chunks every rank's store holds (None: not known)
    load_from: int = 0                    # the tokens vLLM computed itself when it asked
    block_ids: list[int] = field(default_factory=list)
    next_save: int = 0                    # first chunk not yet saved or scheduled for saving
    saving: bool = False                  # some save was scheduled: hold blocks at the end


class SchedulerSide:
    def __init__(self, config: ConnectorConfig, schemes: list[KeyScheme], stores: list[Store],
                 block_size: int) -> None:
        self.config = config
        self.schemes = schemes
        self.stores = stores
        self.block_size = block_size
        self.chunk = config.chunk_tokens
        self.blocks_per_chunk = blocks_per_chunk(self.chunk, block_size)
        self._reqs: dict[str, _Request] = {}
        self._loads: list[LoadOp] = []
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="kvstore-lookup")
        self.lookups_failed = 0

    # ---- lookups ------------------------------------------------------------------------
    def _request(self, request: Any) -> _Request:
        st = self._reqs.get(request.request_id)
        if st is None:
            prompt = list(request.prompt_token_ids or ())
            st = _Request(prompt, [prefix_keys(s, prompt) for s in self.schemes])
            self._reqs[request.request_id] = st
        return st

    def _lookup(self, keys: list[list[bytes]]) -> int:
        try:
            return min(prefix_hits(store, k, self.config.lookup_deadline_s)
                       for store, k in zip(self.stores, keys, strict=True))
        except KVStoreError as exc:  # a store that cannot answer is a miss, not an error
            self.lookups_failed += 1
            log.warning("kvstore lookup failed, prefilling instead: %s", exc)
            return 0

    def matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        st = self._request(request)
        if not st.keys[0]:
            return 0, False
        if st.hit_chunks is None:
            if st.lookup is None:
                st.lookup = self._pool.submit(self._lookup, st.keys)
            if not st.lookup.done():
                return None, False
            st.hit_chunks = st.lookup.result()
        hit = st.hit_chunks * self.chunk
        # one token at least is computed here (its logits start decoding); whole blocks only
        usable = min(hit, (request.num_tokens - 1) // self.block_size * self.block_size)
        st.load_from = num_computed_tokens
        return max(0, usable - num_computed_tokens), False

    def after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        if num_external_tokens <= 0:
            return
        st = self._reqs[request.request_id]
        start, end = st.load_from, st.load_from + num_external_tokens
        block_ids = list(blocks.get_block_ids()[0])
        first, last = start // self.chunk, -(-end // self.chunk)
        self._loads.append(LoadOp(
            req_id=request.request_id, start=start, end=end, first_chunk=first,
            keys=[k[first:last] for k in st.keys],
            block_ids=block_ids[start // self.block_size:end // self.block_size]))

    # ---- per step -----------------------------------------------------------------------
    def build_meta(self, out: Any) -> ConnectorMeta:
        meta = ConnectorMeta(loads=self._loads,
                             preempted=set(getattr(out, "preempted_req_ids", None) or ()))
        self._loads = []
        for new in out.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is not None:
                st.block_ids = list(new.block_ids[0])
                done = new.num_computed_tokens + out.num_scheduled_tokens.get(new.req_id, 0)
                self._plan_saves(new.req_id, st, done, meta)
        cached = out.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                st.block_ids.extend(new_ids[0])
            done = cached.num_computed_tokens[i] + out.num_scheduled_tokens.get(req_id, 0)
            self._plan_saves(req_id, st, done, meta)
        return meta

    def _plan_saves(self, req_id: str, st: _Request, computed: int, meta: ConnectorMeta) -> None:
        full = min(computed, len(st.prompt)) // self.chunk  # complete prompt chunks after this step
        first = max(st.next_save, st.hit_chunks or 0)  # chunks the store had need no saving
        if full <= first:
            st.next_save = max(st.next_save, full)
            return
        bpc = self.blocks_per_chunk
        meta.saves.append(SaveOp(
            req_id=req_id, first_chunk=first,
            keys=[k[first:full] for k in st.keys],
            parents=[[k[c - 1] if c else None for c in range(first, full)] for k in st.keys],
            block_ids=st.block_ids[first * bpc:full * bpc]))
        st.next_save = full
        st.saving = True

    def finished(self, request: Any) -> bool:
        """True: keep the request's blocks until the worker reports its saves done."""
        st = self._reqs.pop(request.request_id, None)
        if st is not None and st.lookup is not None:
            st.lookup.cancel()
        return bool(st and st.saving)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for store in self.stores:
            store.close()
