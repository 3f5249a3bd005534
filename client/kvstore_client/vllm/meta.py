"""What the scheduler side tells the worker side each step (vLLM carries it, pickled or not).

Token positions are absolute in the request; block ids are vLLM's for exactly the tokens named.
Keys come per tensor-parallel rank (index = rank): each rank loads and saves its own heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclass
class LoadOp:
    req_id: str
    start: int                 # first token to load (a block boundary)
    end: int                   # one past the last (a block boundary, <= the chunks' end)
    first_chunk: int           # chunk index of keys[rank][0]
    keys: list[list[bytes]]    # per rank: the chunks covering [start, end)
    block_ids: list[int]       # vLLM blocks of tokens [start, end), in order


@dataclass
class SaveOp:
    req_id: str
    first_chunk: int
    keys: list[list[bytes]]               # per rank: the chunks to save, in order
    parents: list[list[bytes | None]]     # per rank: each chunk's parent key (None for chunk 0)
    block_ids: list[int]                  # vLLM blocks of those chunks' tokens, in order


@dataclass
class ConnectorMeta(KVConnectorMetadata):
    loads: list[LoadOp] = field(default_factory=list)
    saves: list[SaveOp] = field(default_factory=list)
    preempted: set[str] = field(default_factory=set)
