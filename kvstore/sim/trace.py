"""Mooncake trace loading: one ``TraceRequest`` per JSON line, long prompts dropped or truncated.

Trace format (kvstore/data/traces/NOTICE): ``timestamp`` (arrival, ms from the start),
``input_length`` and ``output_length`` (tokens) and ``hash_ids`` (ids of the prompt's 512-token
blocks, the last one partial; equal ids at the same position mean a shared prefix).

Long prompts. The DualMap evaluation serves Qwen2.5-7B-Instruct with vLLM's ``max-model-len``
set to 20,480 tokens, and its artifact's request generator (github.com/ASISys/DualMap,
dualmap/request_generator: ``len(input_ids) >= max_model_len`` -> skip) *drops* every request
whose prompt does not fit; nothing is cut. ``long_prompts="drop"`` (the default) does the same:
1,941 of the conversation trace's 12,031 requests (16%, but 53% of its prompt tokens) have
prompts of 20,480 tokens or more and are left out. ``long_prompts="truncate"`` keeps them
instead, cut to their first ``max_context_tokens - output_length`` tokens (a prefix, so prefix
sharing is preserved; block ids past the cut are dropped): what a serving engine with that
context would need, and this benchmark's setup before it followed the artifact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvstore.errors import InvalidArgument
from kvstore.router.blocks import chain_block_ids

TRACE_BLOCK_TOKENS = 512
# The Mooncake FAST'25 traces shipped with the package (kvstore/data/traces, Apache-2.0, NOTICE).
BUILTIN_TRACES = {"conversation": "conversation_trace.jsonl",
                  "synthetic": "synthetic_trace.jsonl"}


def trace_path(name_or_path: str | Path) -> Path:
    """A shipped trace by name (``conversation``, ``synthetic``) or any JSON-lines file."""
    if str(name_or_path) in BUILTIN_TRACES:
        folder = resources.files("kvstore") / "data" / "traces"
        return Path(str(folder / BUILTIN_TRACES[str(name_or_path)]))
    path = Path(name_or_path)
    if not path.is_file():
        raise InvalidArgument(f"trace {path}: no such file (or give one of "
                              f"{', '.join(BUILTIN_TRACES)})")
    return path


@dataclass(frozen=True, slots=True)
class TraceRequest:
    request_id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]  # chained prefix hashes, one per (possibly partial) block
    truncated: bool


LONG_PROMPTS = ("drop", "truncate")


def load_trace(
    path: str | Path,
    max_context_tokens: int = 20480,
    limit: int | None = None,
    long_prompts: str = "drop",
) -> list[TraceRequest]:
    """Requests sorted by arrival; ``limit`` counts kept requests (dropped ones do not count)."""
    if long_prompts not in LONG_PROMPTS:
        raise InvalidArgument(f"long_prompts must be one of {LONG_PROMPTS}, got {long_prompts!r}")
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
                if long_prompts == "drop" and int(rec["input_length"]) >= max_context_tokens:
                    continue
                cut = max_context_tokens if long_prompts == "truncate" else None
                out.append(_parse(rec, lineno, cut))
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"{path}:{lineno}: not a trace record ({exc})") from exc
    out.sort(key=lambda r: r.arrival_s)
    return out


def _parse(rec: dict, lineno: int, max_context_tokens: int | None) -> TraceRequest:
    """One record; ``max_context_tokens`` set: cut the prompt to ``context - output`` tokens."""
    output = int(rec["output_length"])
    full = int(rec["input_length"])
    ids: Sequence[int] = rec["hash_ids"]
    keep = full if max_context_tokens is None else min(full, max_context_tokens - output)
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
