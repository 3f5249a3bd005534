"""Node configuration: one typed, frozen object, loaded in one place (file -> environment -> flags).

Every value is checked; a bad one raises ConfigError naming the setting, where it came from and
what is allowed. Nothing is silently "fixed". Sizes accept integers or strings like "512MiB".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.errors import ConfigError

ENV_PREFIX = "KVSTORE_"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KI": 1024, "KIB": 1024, "M": 10**6,
          "MB": 10**6, "MI": 2**20, "MIB": 2**20, "G": 10**9, "GB": 10**9, "GI": 2**30,
          "GIB": 2**30, "T": 10**12, "TB": 10**12, "TI": 2**40, "TIB": 2**40}


def parse_size(value: Any, name: str = "size") -> int:
    """Bytes from an int or a string such as '64MiB' / '1.5GB'."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a byte size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    raise ConfigError(f"{name}: expected a byte size like 1073741824 or '1GiB', got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A model whose KV this node accepts; the handshake compares against these."""

    model_id: str
    kv_dtype: str
    kv_layout: str = "LKHTD"
    chunk_tokens: int = 256


EVICTION_POLICIES = ("lru", "fifo", "lfu")
DISK_ADMISSION = ("on-demotion", "second-use", "write-through")
GPU_DEVICES = ("none", "auto", "sim")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = ""                     # default: "<host>:<port>"
    host: str = "127.0.0.1"
    port: int = 50051                     # gRPC; 0 = pick a free port
    data_plane: bool = True               # bulk TCP data plane beside gRPC
    data_port: int = 50052                # 0 = pick a free port
    data_dir: str = "./kvstore-data"
    gpu_device: str = "auto"              # auto (cuda if present), sim (CPU stand-in), none, cuda:N
    gpu_capacity_bytes: int = 0           # 0 = no GPU tier
    cpu_capacity_bytes: int = 1 << 30
    disk_capacity_bytes: int = 8 << 30    # 0 = no disk tier
    page_bytes: int = 256 << 10           # memory tiers are pools of fixed pages: no fragmentation
    max_chunk_bytes: int = 64 << 20
    frame_bytes: int = 1 << 20            # gRPC stream frame payload
    eviction_policy: str = "lru"
    disk_admission: str = "on-demotion"
    fsync: bool = False                   # fsync disk-tier files before rename (durable vs fast)
    prefetch_workers: int = 1
    prefetch_queue: int = 256
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)  # empty = accept any model

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("port", "data_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise bad(name, "must be a TCP port 0-65535 (0 picks a free one)")
        if self.data_plane and self.port and self.port == self.data_port:
            raise bad("data_port", "must differ from port")
        for name in ("cpu_capacity_bytes", "gpu_capacity_bytes", "disk_capacity_bytes"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.page_bytes < 4096 or self.page_bytes & (self.page_bytes - 1):
            raise bad("page_bytes", "must be a power of two >= 4096")
        if self.cpu_capacity_bytes < self.page_bytes:
            raise bad("cpu_capacity_bytes", f"must hold at least one page ({self.page_bytes} B)")
        if self.max_chunk_bytes <= 0:
            raise bad("max_chunk_bytes", "must be > 0")
        if self.max_chunk_bytes > self.cpu_capacity_bytes:
            raise bad("max_chunk_bytes", "a chunk larger than the CPU tier could never be stored")
        if not 4096 <= self.frame_bytes <= 3 << 20:
            raise bad("frame_bytes", "must be 4 KiB..3 MiB (gRPC's default limit is 4 MiB)")
        if self.eviction_policy not in EVICTION_POLICIES:
            raise bad("eviction_policy", f"must be one of {EVICTION_POLICIES}")
        if self.disk_admission not in DISK_ADMISSION:
            raise bad("disk_admission", f"must be one of {DISK_ADMISSION}")
        if self.gpu_device not in GPU_DEVICES and not re.fullmatch(r"cuda:\d+", self.gpu_device):
            raise bad("gpu_device", f"must be one of {GPU_DEVICES} or 'cuda:N'")
        if self.prefetch_workers < 1 or self.prefetch_queue < 1:
            raise ConfigError("prefetch_workers and prefetch_queue must be >= 1")
        if not self.data_dir:
            raise bad("data_dir", "must be a directory path")

    @property
    def resolved_node_id(self) -> str:
        return self.node_id or f"{self.host}:{self.port}"


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
_SIZE_FIELDS = {n for n in _FIELDS if n.endswith("_bytes")}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a value from a file, the environment (strings) or flags into the field's type."""
    where = f"{name} (from {source})"
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r} (from {source}); known: {sorted(_FIELDS)}")
    if name in _SIZE_FIELDS:
        return parse_size(value, where)
    if name == "models":
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of model specs")
        try:
            return tuple(ModelSpec(**m) for m in value)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    default = _FIELDS[name].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        try:
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Defaults, then the YAML/JSON file, then KVSTORE_* environment, then explicit overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        import yaml  # YAML is a superset of JSON, so one parser reads both

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of settings")
        values.update({k: _coerce(k, v, str(p)) for k, v in data.items()})
    env = os.environ if env is None else env
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in _FIELDS:
            name = key[len(ENV_PREFIX):].lower()
            values[name] = _coerce(name, raw, f"environment {key}")
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = _coerce(k, v, "command line")
    return NodeConfig(**values)
