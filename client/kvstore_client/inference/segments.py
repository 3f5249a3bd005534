"""Prompts as segments, and their chunk layout (which rows each chunk key covers).

A prompt is a list of segments: a system prompt, retrieved documents, a question. Each segment is
tokenized on its own (never across a boundary), so a document yields the same tokens, and hence
the same content keys, wherever it appears. The prompt's tokens are the concatenation.

Two kinds of chunk keys cover the prompt (see kvstore.keys and shared/PAPERS.md section 1):

* prefix (chained) chunks: full ``chunk_tokens`` chunks over the whole prompt; a hit on chunk i
  means tokens [0, (i+1)*chunk) match exactly, so its KV is reused as is;
* content chunks: per cacheable segment, chunked from the segment's start, the partial tail
  keyed too (so short documents and system prompts can hit); position-independent, reused by
  blending. Uncacheable segments (the question) get no content keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kvstore.keys import KeyScheme, content_keys, prefix_keys

from .errors import ConfigError


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: text or token ids; ``cacheable`` False for the per-request part."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    cacheable: bool = True

    def __post_init__(self) -> None:
        if (self.text is None) == (self.token_ids is None):
            raise ConfigError("a Segment has exactly one of text or token_ids")

    @classmethod
    def doc(cls, text: str) -> Segment:
        return cls(text=text, cacheable=True)

    @classmethod
    def query(cls, text: str) -> Segment:
        return cls(text=text, cacheable=False)

    @classmethod
    def tokens(cls, ids: Sequence[int], cacheable: bool = True) -> Segment:
        return cls(token_ids=tuple(int(t) for t in ids), cacheable=cacheable)


def tokenize(tokenizer: Any, segment: Segment) -> list[int]:
    """The segment's token ids; text is encoded without special tokens (the caller's template
    puts them in the text)."""
    if segment.token_ids is not None:
        return list(segment.token_ids)
    if tokenizer is None:
        raise ConfigError("a text Segment needs a tokenizer; pass token_ids instead")
    return list(tokenizer(segment.text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class ChunkSpan:
    """A keyed chunk: rows [start, start + num_tokens) of the prompt."""

    key: bytes
    start: int
    num_tokens: int
    kind: Literal["prefix", "content"]
    parent: bytes | None = None

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass(frozen=True)
class PromptLayout:
    token_ids: tuple[int, ...]
    segment_spans: tuple[tuple[int, int, bool], ...]  # (start, end, cacheable)
    prefix_chunks: tuple[ChunkSpan, ...]
    content_chunks: tuple[ChunkSpan, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def build_layout(
    scheme: KeyScheme, token_segments: Sequence[Sequence[int]], cacheable: Sequence[bool]
) -> PromptLayout:
    tokens: list[int] = []
    spans: list[tuple[int, int, bool]] = []
    content: list[ChunkSpan] = []
    ct = scheme.chunk_tokens
    for ids, cache_it in zip(token_segments, cacheable, strict=True):
        start = len(tokens)
        tokens.extend(ids)
        spans.append((start, len(tokens), bool(cache_it)))
        if cache_it and ids:
            for j, key in enumerate(content_keys(scheme, ids, include_partial=True)):
                n = min(ct, len(ids) - j * ct)
                content.append(ChunkSpan(key, start + j * ct, n, "content"))
    if not tokens:
        raise ConfigError("the prompt has no tokens")
    chained: list[ChunkSpan] = []
    parent: bytes | None = None
    for i, key in enumerate(prefix_keys(scheme, tokens)):
        chained.append(ChunkSpan(key, i * ct, ct, "prefix", parent))
        parent = key
    return PromptLayout(tuple(tokens), tuple(spans), tuple(chained), tuple(content))
