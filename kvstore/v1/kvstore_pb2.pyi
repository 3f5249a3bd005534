from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyScheme(_message.Message):
    __slots__ = ("hash_algorithm", "version", "model_id", "kv_dtype", "kv_layout", "chunk_tokens", "tenant")
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    KV_DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    hash_algorithm: str
    version: int
    model_id: str
    kv_dtype: str
    kv_layout: str
    chunk_tokens: int
    tenant: str
    def __init__(self, hash_algorithm: _Optional[str] = ..., version: _Optional[int] = ..., model_id: _Optional[str] = ..., kv_dtype: _Optional[str] = ..., kv_layout: _Optional[str] = ..., chunk_tokens: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("scheme", "client_name")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    scheme: KeyScheme
    client_name: str
    def __init__(self, scheme: _Optional[_Union[KeyScheme, _Mapping]] = ..., client_name: _Optional[str] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("session_id", "node_id", "namespace_id", "data_port", "max_chunk_bytes", "frame_bytes", "server_version", "shm_path")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: str
    namespace_id: str
    data_port: int
    max_chunk_bytes: int
    frame_bytes: int
    server_version: str
    shm_path: str
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., namespace_id: _Optional[str] = ..., data_port: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., frame_bytes: _Optional[int] = ..., server_version: _Optional[str] = ..., shm_path: _Optional[str] = ...) -> None: ...

class ChunkMeta(_message.Message):
    __slots__ = ("key", "dtype", "shape", "payload_bytes", "checksum", "codec", "codec_params", "parent_key", "num_tokens", "start_pos")
    class CodecParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    payload_bytes: int
    checksum: int
    codec: str
    codec_params: _containers.ScalarMap[str, str]
    parent_key: bytes
    num_tokens: int
    start_pos: int
    def __init__(self, key: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., payload_bytes: _Optional[int] = ..., checksum: _Optional[int] = ..., codec: _Optional[str] = ..., codec_params: _Optional[_Mapping[str, str]] = ..., parent_key: _Optional[bytes] = ..., num_tokens: _Optional[int] = ..., start_pos: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("meta", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: ChunkMeta
    data: bytes
    def __init__(self, meta: _Optional[_Union[ChunkMeta, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutResult(_message.Message):
    __slots__ = ("key", "stored", "tier")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    stored: bool
    tier: str
    def __init__(self, key: _Optional[bytes] = ..., stored: _Optional[bool] = ..., tier: _Optional[str] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PutResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PutResult, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("keys", "frame_bytes")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    frame_bytes: int
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., frame_bytes: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: GetHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[GetHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetHeader(_message.Message):
    __slots__ = ("key", "found", "meta", "tier")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    meta: ChunkMeta
    tier: str
    def __init__(self, key: _Optional[bytes] = ..., found: _Optional[bool] = ..., meta: _Optional[_Union[ChunkMeta, _Mapping]] = ..., tier: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("keys", "prefetch", "prefetch_next")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_NEXT_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    prefetch: bool
    prefetch_next: int
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., prefetch: _Optional[bool] = ..., prefetch_next: _Optional[int] = ...) -> None: ...

class KeyLocation(_message.Message):
    __slots__ = ("key", "found", "tier", "payload_bytes", "node_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    tier: str
    payload_bytes: int
    node_id: str
    def __init__(self, key: _Optional[bytes] = ..., found: _Optional[bool] = ..., tier: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("locations", "prefix_hits")
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HITS_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[KeyLocation]
    prefix_hits: int
    def __init__(self, locations: _Optional[_Iterable[_Union[KeyLocation, _Mapping]]] = ..., prefix_hits: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("name", "capacity_bytes", "used_bytes", "chunks", "hits", "evictions", "demotions_in", "promotions_out", "corrupt_dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    DEMOTIONS_IN_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_OUT_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity_bytes: int
    used_bytes: int
    chunks: int
    hits: int
    evictions: int
    demotions_in: int
    promotions_out: int
    corrupt_dropped: int
    def __init__(self, name: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., hits: _Optional[int] = ..., evictions: _Optional[int] = ..., demotions_in: _Optional[int] = ..., promotions_out: _Optional[int] = ..., corrupt_dropped: _Optional[int] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("op", "count", "p50_ms", "p99_ms")
    OP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    op: str
    count: int
    p50_ms: float
    p99_ms: float
    def __init__(self, op: _Optional[str] = ..., count: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace_id", "model_id", "tenant", "hits", "misses", "bytes_in", "bytes_out", "used_bytes", "chunks", "lookup_keys", "lookup_hits", "lookup_misses")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MISSES_FIELD_NUMBER: _ClassVar[int]
    namespace_id: str
    model_id: str
    tenant: str
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    used_bytes: int
    chunks: int
    lookup_keys: int
    lookup_hits: int
    lookup_misses: int
    def __init__(self, namespace_id: _Optional[str] = ..., model_id: _Optional[str] = ..., tenant: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., used_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., lookup_keys: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., lookup_misses: _Optional[int] = ...) -> None: ...

class TenantStats(_message.Message):
    __slots__ = ("tenant", "hits", "misses", "bytes_in", "bytes_out", "used_bytes", "chunks", "lookup_keys", "lookup_hits", "lookup_misses")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MISSES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    used_bytes: int
    chunks: int
    lookup_keys: int
    lookup_hits: int
    lookup_misses: int
    def __init__(self, tenant: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., used_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., lookup_keys: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., lookup_misses: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("node_id", "tiers", "hits", "misses", "bytes_in", "bytes_out", "puts", "rejected", "prefetches", "latencies", "namespaces", "uptime_s", "tenants", "lookup_keys", "lookup_hits", "lookup_misses")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PREFETCHES_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MISSES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    puts: int
    rejected: int
    prefetches: int
    latencies: _containers.RepeatedCompositeFieldContainer[LatencyStats]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    uptime_s: float
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStats]
    lookup_keys: int
    lookup_hits: int
    lookup_misses: int
    def __init__(self, node_id: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., puts: _Optional[int] = ..., rejected: _Optional[int] = ..., prefetches: _Optional[int] = ..., latencies: _Optional[_Iterable[_Union[LatencyStats, _Mapping]]] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., tenants: _Optional[_Iterable[_Union[TenantStats, _Mapping]]] = ..., lookup_keys: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., lookup_misses: _Optional[int] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkReport(_message.Message):
    __slots__ = ("key", "found", "tiers", "payload_bytes", "codec", "checksum", "dtype", "shape", "num_tokens", "namespace_id", "model_id", "tenant", "age_s", "hits")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    tiers: _containers.RepeatedScalarFieldContainer[str]
    payload_bytes: int
    codec: str
    checksum: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_tokens: int
    namespace_id: str
    model_id: str
    tenant: str
    age_s: float
    hits: int
    def __init__(self, key: _Optional[bytes] = ..., found: _Optional[bool] = ..., tiers: _Optional[_Iterable[str]] = ..., payload_bytes: _Optional[int] = ..., codec: _Optional[str] = ..., checksum: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_tokens: _Optional[int] = ..., namespace_id: _Optional[str] = ..., model_id: _Optional[str] = ..., tenant: _Optional[str] = ..., age_s: _Optional[float] = ..., hits: _Optional[int] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("node_id", "chunks")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkReport]
    def __init__(self, node_id: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkReport, _Mapping]]] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("model_id", "tenant", "namespace_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tenant: str
    namespace_id: str
    def __init__(self, model_id: _Optional[str] = ..., tenant: _Optional[str] = ..., namespace_id: _Optional[str] = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("node_id", "chunks", "bytes", "namespace_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    chunks: int
    bytes: int
    namespace_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., chunks: _Optional[int] = ..., bytes: _Optional[int] = ..., namespace_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("node_id", "message")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    message: str
    def __init__(self, node_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
