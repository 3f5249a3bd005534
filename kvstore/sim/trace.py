"""Mooncake trace loading: one ``TraceRequest`` per JSON line, inputs truncated to the context.

Trace format (shared/traces/NOTICE): ``timestamp`` (arrival, ms from the start), ``input_length``
and ``output_length`` (tokens) and ``hash_ids`` (ids of the prompt's 512-token blocks, the last one
partial; equal ids at the same position mean a shared prefix).

Truncation. The DualMap evaluation serves Qwen2.5-7B-Instruct, whose context is 32,768 tokens (its
exact preprocessing was not available to us), and a serving engine refuses a request whose prompt
plus output exceeds the context. We therefore keep the first
``max_context_tokens - output_length`` prompt tokens (a prefix, so prefix sharing is preserved)
and drop the hash ids past the truncated length; 846 of the conversation trace's 12,031 requests
are truncated this way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvstore.errors import InvalidArgument
from kvstore.router.blocks import chain_block_ids

TRACE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRequest:
    request_id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]  # chained prefix hashes, one per (possibly partial) block
    truncated: bool


def load_trace(
    path: str | Path, max_context_tokens: int = 32768, limit: int | None = None
) -> list[TraceRequest]:
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"trace file not found: {path}")
    out: list[TraceRequest] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out.append(_parse(rec, lineno, max_context_tokens))
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"{path}:{lineno}: not a trace record ({exc})") from exc
    out.sort(key=lambda r: r.arrival_s)
    return out


def _parse(rec: dict, lineno: int, max_context_tokens: int) -> TraceRequest:
    output = int(rec["output_length"])
    full = int(rec["input_length"])
    ids: Sequence[int] = rec["hash_ids"]
    keep = min(full, max_context_tokens - output)
    if keep <= 0:
        raise ValueError(f"output_length {output} leaves no room in a {max_context_tokens} context")
    n_blocks = -(-keep // TRACE_BLOCK_TOKENS)
    return TraceRequest(
        request_id=f"r{lineno}",
        arrival_s=float(rec["timestamp"]) / 1000.0,
        input_tokens=keep,
        output_tokens=output,
        blocks=tuple(chain_block_ids([int(i) for i in ids[:n_blocks]])),
        truncated=keep < full,
    )


def scale_load(requests: Sequence[TraceRequest], load: float) -> list[TraceRequest]:
    """The same requests arriving ``load`` times faster (arrival times divided by ``load``)."""
    if not load > 0:
        raise InvalidArgument(f"load must be > 0, got {load}")
    return [
        TraceRequest(
            r.request_id, r.arrival_s / load, r.input_tokens, r.output_tokens, r.blocks, r.truncated
        )
        for r in requests
    ]
