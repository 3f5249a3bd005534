from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouterJoinRequest(_message.Message):
    __slots__ = ("worker_id", "kv_capacity_tokens", "weight")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    kv_capacity_tokens: int
    weight: float
    def __init__(self, worker_id: _Optional[str] = ..., kv_capacity_tokens: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class RouterJoinResponse(_message.Message):
    __slots__ = ("ring_epoch", "workers")
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ring_epoch: int
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ring_epoch: _Optional[int] = ..., workers: _Optional[_Iterable[str]] = ...) -> None: ...

class RouterLeaveRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class RouterLeaveResponse(_message.Message):
    __slots__ = ("ring_epoch", "orphaned_request_ids")
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    ring_epoch: int
    orphaned_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ring_epoch: _Optional[int] = ..., orphaned_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportLoadRequest(_message.Message):
    __slots__ = ("worker_id", "pending_prefill_tokens", "started_request_ids")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STARTED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pending_prefill_tokens: float
    started_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., pending_prefill_tokens: _Optional[float] = ..., started_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteMigration(_message.Message):
    __slots__ = ("request_id", "source_worker", "target_worker", "gain_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKER_FIELD_NUMBER: _ClassVar[int]
    TARGET_WORKER_FIELD_NUMBER: _ClassVar[int]
    GAIN_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    source_worker: str
    target_worker: str
    gain_s: float
    def __init__(self, request_id: _Optional[str] = ..., source_worker: _Optional[str] = ..., target_worker: _Optional[str] = ..., gain_s: _Optional[float] = ...) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ("migrations", "ring_epoch")
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[RouteMigration]
    ring_epoch: int
    def __init__(self, migrations: _Optional[_Iterable[_Union[RouteMigration, _Mapping]]] = ..., ring_epoch: _Optional[int] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "token_ids", "block_hashes", "prompt_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., block_hashes: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("worker_id", "candidates", "key_blocks", "reason", "predicted_ttft_s", "cached_tokens", "ring_epoch")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    KEY_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TTFT_S_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    key_blocks: int
    reason: str
    predicted_ttft_s: float
    cached_tokens: int
    ring_epoch: int
    def __init__(self, worker_id: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., key_blocks: _Optional[int] = ..., reason: _Optional[str] = ..., predicted_ttft_s: _Optional[float] = ..., cached_tokens: _Optional[int] = ..., ring_epoch: _Optional[int] = ...) -> None: ...
