"""From a prompt's layout and one store lookup to the chunks worth fetching (LoadSlots).

* Prefix slots: the leading run of chained-key hits, rows [0, P). The last prompt row is never
  taken from the cache (its logits must be computed), so P <= N - 1.
* Content slots: content-key hits of cacheable segments beyond the prefix, each trimmed to the
  rows the prefix does not already cover (and to N - 1). Their keys move by ``delta = the
  chunk's new start`` (content chunks are stored rotated as if they began at position 0).

A lookup that raises is a miss for every key (recorded in ``lookup_error``), never an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .loader import LoadSlot
from .segments import ChunkSpan, PromptLayout
from .store import ChunkStore

log = logging.getLogger(__name__)


@dataclass
class LoadPlan:
    prefix: list[LoadSlot] = field(default_factory=list)
    content: list[LoadSlot] = field(default_factory=list)
    prefix_found: list[bool] = field(default_factory=list)   # per layout.prefix_chunks
    content_found: list[bool] = field(default_factory=list)  # per layout.content_chunks
    lookup_error: str | None = None

    @property
    def prefix_rows(self) -> int:
        return self.prefix[-1].rows[1] if self.prefix else 0


def plan_loads(store: ChunkStore, layout: PromptLayout, *, with_content: bool) -> LoadPlan:
    plan = LoadPlan()
    prefix_spans = list(layout.prefix_chunks)
    content_spans = list(layout.content_chunks) if with_content else []
    keys = [s.key for s in prefix_spans + content_spans]
    found = [False] * len(keys)
    if keys:
        try:
            found = list(store.lookup(keys, prefetch=True).found)
        except Exception as exc:  # noqa: BLE001 - fault boundary: a lookup never fails a request
            plan.lookup_error = f"{type(exc).__name__}: {exc}"
            log.warning("lookup failed, treating every chunk as a miss: %r", exc)
        if len(found) != len(keys):
            plan.lookup_error = f"lookup returned {len(found)} results for {len(keys)} keys"
            found = [False] * len(keys)
    plan.prefix_found = found[: len(prefix_spans)]
    plan.content_found = found[len(prefix_spans) :]
    last = layout.n_tokens - 1
    for span, hit in zip(prefix_spans, plan.prefix_found, strict=True):
        if not hit or span.start >= last:
            break
        plan.prefix.append(LoadSlot(span, 0, min(span.num_tokens, last - span.start), 0))
    covered = plan.prefix_rows
    for span, hit in zip(content_spans, plan.content_found, strict=True):
        slot = _content_slot(span, covered, last) if hit else None
        if slot is not None:
            plan.content.append(slot)
    return plan


def _content_slot(span: ChunkSpan, covered: int, last: int) -> LoadSlot | None:
    use_from = max(0, covered - span.start)
    use_to = min(span.num_tokens, last - span.start)
    if use_from >= use_to:
        return None
    return LoadSlot(span, use_from, use_to, delta=span.start)
