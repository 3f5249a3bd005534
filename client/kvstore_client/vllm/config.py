"""The connector's settings (``kv_connector_extra_config``) and the key scheme it derives.

One frozen object, read in one place (``ConnectorConfig.from_extra``), that raises on unknown keys
and bad values instead of guessing. The key scheme comes from vLLM's own config, so that every
field which changes what a chunk's bytes mean is part of the namespace, and a node whose handshake
sees another scheme refuses it, naming the field:

* model id: ``model_id`` if given, else the model's name (a local directory's basename, or the
  hub id) plus ``@revision``;
* KV dtype: the cache dtype (``auto`` means the model dtype, e.g. ``float32``);
* layout: ``vllm-LHT2D/tp{rank}of{size}``: a chunk is one tensor [layers, kv heads, tokens,
  2 * head_dim] (K then V in the last dimension) of *this* tensor-parallel rank's heads;
* chunk size: 256 tokens (kvstore's, not vLLM's block size);
* tenant: ``tenant``.

No vLLM import here: the functions read attributes of the VllmConfig they are given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kvstore.keys import DEFAULT_CHUNK_TOKENS, KeyScheme
from kvstore_client.security import ClientSecurity

LAYOUT = "vllm-LHT2D"


class ConnectorConfigError(ValueError):
    """A bad kv_connector_extra_config, or a vLLM setup the connector cannot serve."""


@dataclass(frozen=True)
class ConnectorConfig:
    address: str = ""              # one node, host:port of its gRPC service; or
    members: tuple[str, ...] = ()  # a static cluster: host:port of every node; or
    redis_url: str = ""            # a cluster whose members register in Redis
    replication: int = 2           # cluster only: copies of each chunk (1 or 2)
    tenant: str = ""               # salts the key namespace: tenants never share chunks
    model_id: str = ""             # overrides the model identity in the key scheme
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    lookup_deadline_s: float = 2.0   # a lookup that takes longer counts as a miss
    load_deadline_s: float = 10.0    # a load that takes longer is recomputed
    save_deadline_s: float = 30.0    # a save that takes longer is dropped (a future miss)
    token: str = ""                # bearer token (tenant and role on the node)
    tls_ca: str = ""               # PEM CA of the nodes' certificates: TLS on
    tls_cert: str = ""             # client certificate for mutual TLS
    tls_key: str = ""
    server_name: str = ""          # name to check in the node's certificate

    def __post_init__(self) -> None:
        targets = [bool(self.address), bool(self.members), bool(self.redis_url)]
        if sum(targets) != 1:
            raise ConnectorConfigError(
                "kv_connector_extra_config needs exactly one of 'address' (one node, "
                "host:port), 'members' (a list of host:port) or 'redis_url' (a cluster "
                f"registered in Redis); got address={self.address!r}, members="
                f"{list(self.members)}, redis_url={self.redis_url!r}")
        for addr in (self.address, *self.members):
            if addr and ":" not in addr:
                raise ConnectorConfigError(f"a node address is host:port, got {addr!r}")
        if self.replication not in (1, 2):
            raise ConnectorConfigError(f"replication must be 1 or 2, got {self.replication}")
        if self.chunk_tokens <= 0:
            raise ConnectorConfigError(f"chunk_tokens must be > 0, got {self.chunk_tokens}")
        for name in ("lookup_deadline_s", "load_deadline_s", "save_deadline_s"):
            if not getattr(self, name) > 0:
                raise ConnectorConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        self.security()  # bad TLS combinations fail here, at start-up

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> ConnectorConfig:
        extra = dict(extra or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ConnectorConfigError(
                f"unknown kv_connector_extra_config key(s) {unknown}; known: {sorted(known)}")
        if "members" in extra:
            members = extra["members"]
            if isinstance(members, str):
                members = [m for m in members.split(",") if m]
            extra["members"] = tuple(members)
        try:
            return cls(**extra)
        except TypeError as exc:
            raise ConnectorConfigError(f"bad kv_connector_extra_config: {exc}") from None

    def security(self) -> ClientSecurity:
        """Token and TLS as given; none given: the KVSTORE_TOKEN/KVSTORE_TLS_* environment."""
        given = {"token": self.token, "tls_ca": self.tls_ca, "tls_cert": self.tls_cert,
                 "tls_key": self.tls_key, "server_name": self.server_name}
        try:
            if any(given.values()):
                return ClientSecurity(**given)
            return ClientSecurity.from_env()
        except ValueError as exc:
            raise ConnectorConfigError(str(exc)) from None


def model_identity(model: str, revision: str | None) -> str:
    """``name@revision``; a local directory counts by its name, not its path (which differs
    between machines)."""
    name = Path(model).name if Path(model).is_dir() else model
    return f"{name}@{revision or ''}"


def kv_dtype_name(cache_dtype: str, model_dtype: Any) -> str:
    if cache_dtype and cache_dtype != "auto":
        return cache_dtype
    return str(model_dtype).removeprefix("torch.")


def scheme_for(config: ConnectorConfig, vllm_config: Any, tp_rank: int) -> KeyScheme:
    """The key scheme of tensor-parallel rank ``tp_rank`` (each rank stores its own heads)."""
    mc = vllm_config.model_config
    tp_size = vllm_config.parallel_config.tensor_parallel_size
    if not 0 <= tp_rank < tp_size:
        raise ConnectorConfigError(f"tensor-parallel rank {tp_rank} outside 0..{tp_size - 1}")
    return KeyScheme(
        model_id=config.model_id or model_identity(mc.model, mc.revision),
        kv_dtype=kv_dtype_name(vllm_config.cache_config.cache_dtype, mc.dtype),
        kv_layout=f"{LAYOUT}/tp{tp_rank}of{tp_size}",
        chunk_tokens=config.chunk_tokens,
        tenant=config.tenant,
    )


def blocks_per_chunk(chunk_tokens: int, block_size: int) -> int:
    """vLLM blocks in one kvstore chunk; a clear error when they do not tile it."""
    if block_size <= 0 or chunk_tokens % block_size:
        raise ConnectorConfigError(
            f"kvstore chunks are {chunk_tokens} tokens and vLLM's block size is {block_size}: "
            f"the chunk must be a whole number of blocks; use a block size that divides "
            f"{chunk_tokens} (--block-size 16, 32, 64, 128 or 256)")
    return chunk_tokens // block_size
