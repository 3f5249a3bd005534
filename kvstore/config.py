"""Node configuration: one typed, frozen object, loaded in one place (file -> environment -> flags).

Every value is checked; a bad one raises ConfigError naming the setting, where it came from and
what is allowed. Nothing is silently "fixed". Sizes accept integers or strings like "512MiB".
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvstore.errors import ConfigError

if TYPE_CHECKING:
    from kvstore.codecs import TierCodecPolicy

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
TIER_NAMES = ("gpu", "cpu", "disk")  # tier_codecs keys


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = ""                     # default: "<host>:<port>"
    host: str = "127.0.0.1"
    port: int = 50051                     # gRPC; 0 = pick a free port
    data_plane: bool = True               # bulk TCP data plane beside gRPC
    data_port: int = 50052                # 0 = pick a free port
    data_dir: str = "./kvstore-data"
    gpu_device: str = "auto"              # auto (cuda if any), sim (CPU stand-in), none, cuda[:N]
    gpu_capacity_bytes: int = 0           # 0 = no GPU tier
    cpu_capacity_bytes: int = 1 << 30
    disk_capacity_bytes: int = 8 << 30    # 0 = no disk tier
    page_bytes: int = 256 << 10           # memory tiers are pools of fixed pages: no fragmentation
    max_chunk_bytes: int = 64 << 20
    frame_bytes: int = 1 << 20            # gRPC stream frame payload
    eviction_policy: str = "lru"
    disk_admission: str = "on-demotion"
    fsync: bool = False                   # fsync disk-tier files before rename (durable vs fast)
    shared_memory: bool = False           # CPU tier in a /dev/shm file co-located clients map
    prefetch_workers: int = 1
    prefetch_queue: int = 256
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)  # empty = accept any model
    # tier -> codec applied when a chunk is demoted into it, e.g. {"disk": "kivi-int4"} or
    # {"disk": {"codec": "kivi-int4", "group_size": 64}}; empty = store chunks as received
    tier_codecs: Mapping[str, Any] = field(default_factory=dict)
    # Cluster membership (kvstore/cluster); an empty redis_url keeps the node standalone.
    redis_url: str = ""                   # redis://host:port[/db] holding the node registry
    advertise_host: str = ""              # host others dial; default: host
    capacity_weight: float = 1.0          # share of the hash rings relative to other members
    replication: int = 2                  # copies the cluster keeps (1 or 2); as its clients use
    heartbeat_ttl_s: float = 5.0          # a member silent this long leaves the ring
    rebalance_bytes_per_s: int = 64 << 20  # bandwidth of background copies to new owners
    drain_timeout_s: float = 60.0         # SIGTERM: longest time spent handing chunks over
    # Operations (kvstore/server/metrics.py): Prometheus text format over HTTP on host.
    metrics_port: int = 9464              # 0 = pick a free port; -1 = no metrics endpoint
    # Security (docs/SECURITY.md). All empty = the embedded local default: plaintext, no auth.
    tls_cert: str = ""                    # PEM server certificate (gRPC and data plane over TLS)
    tls_key: str = ""                     # PEM private key of tls_cert
    tls_client_ca: str = ""               # PEM CA bundle; set = clients must present a cert (mTLS)
    tls_ca: str = ""                      # PEM CA this node trusts when it dials other nodes
    auth_tokens_file: str = ""            # JSON/YAML: token (sha256) -> tenant and role
    peer_token_file: str = ""             # file holding the token this node presents to peers
    # A node on a non-loopback host needs TLS (tls_cert) and tokens (auth_tokens_file) unless
    # this is set: plaintext without auth only by explicit choice (a trusted, isolated network)
    insecure: bool = False
    # tenant -> {"quota_bytes": N, "share_with": [tenants allowed to read its chunks]}
    tenants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if not -1 <= self.metrics_port <= 65535:
            raise bad("metrics_port", "must be a TCP port 0-65535 (0 picks one, -1 turns it off)")
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
        if self.gpu_device not in GPU_DEVICES and not re.fullmatch(r"cuda(:\d+)?", self.gpu_device):
            raise bad("gpu_device", f"must be one of {GPU_DEVICES}, 'cuda' or 'cuda:N'")
        if self.prefetch_workers < 1 or self.prefetch_queue < 1:
            raise ConfigError("prefetch_workers and prefetch_queue must be >= 1")
        if not self.data_dir:
            raise bad("data_dir", "must be a directory path")
        if self.tier_codecs:
            self.tier_codec_policy()  # raises ConfigError for an unknown tier or codec
        self._check_cluster(bad)
        self._check_security(bad)

    def _check_cluster(self, bad: Any) -> None:
        if self.redis_url and not re.match(r"^(redis|rediss|unix)://", self.redis_url):
            raise bad("redis_url", "must be empty or a redis://, rediss:// or unix:// URL")
        if self.redis_url and not self.advertise_host and self.host in ("0.0.0.0", "::", ""):
            raise bad("advertise_host", f"must be set when host={self.host!r} binds every "
                      "interface: other members need an address they can dial")
        if not (0 < self.capacity_weight < float("inf")):
            raise bad("capacity_weight", "must be a positive number")
        if self.replication not in (1, 2):
            raise bad("replication", "must be 1 or 2")
        if not (0 < self.heartbeat_ttl_s <= 3600):
            raise bad("heartbeat_ttl_s", "must be > 0 and <= 3600 seconds")
        if self.rebalance_bytes_per_s <= 0:
            raise bad("rebalance_bytes_per_s", "must be > 0")
        if not (0 <= self.drain_timeout_s < float("inf")):
            raise bad("drain_timeout_s", "must be >= 0 seconds")

    def _check_security(self, bad: Any) -> None:
        """TLS files go in pairs; tenants are checked and their sizes parsed (docs/SECURITY.md).
        Files are read when the node starts (a missing one stops it there, naming the setting)."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise bad("tls_cert" if self.tls_key else "tls_key",
                      "tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise bad("tls_client_ca", "mutual TLS needs the node's own tls_cert and tls_key")
        if self.shared_memory and self.auth_tokens_file:
            raise bad("shared_memory", "cannot be combined with auth_tokens_file: the /dev/shm "
                      "CPU tier file holds every tenant's chunks and any process of the node's "
                      "user could map it")
        object.__setattr__(self, "tenants", _check_tenants(self.tenants))
        if not self.insecure and not _loopback(self.host):
            missing = [n for n in ("tls_cert", "auth_tokens_file") if not getattr(self, n)]
            if missing:
                raise bad("host", f"is not a loopback address, so others can reach this node, "
                          f"but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          "not set: set tls_cert/tls_key and auth_tokens_file "
                          "(docs/SECURITY.md), or insecure: true (--insecure) to serve "
                          "plaintext without tokens on a trusted network")

    @property
    def resolved_node_id(self) -> str:
        return self.node_id or f"{self.host}:{self.port}"

    def tier_codec_policy(self) -> TierCodecPolicy:
        """tier_codecs parsed (kvstore.codecs is imported only here: it needs torch)."""
        if not isinstance(self.tier_codecs, Mapping):
            raise ConfigError(f"tier_codecs={self.tier_codecs!r}: expected a mapping of tier "
                              "name to codec, e.g. {'disk': 'kivi-int4'}")
        unknown = sorted(set(self.tier_codecs) - set(TIER_NAMES), key=str)
        if unknown:
            raise ConfigError(f"tier_codecs={dict(self.tier_codecs)!r}: unknown tier(s) "
                              f"{unknown}; tiers are {TIER_NAMES}")
        from kvstore.codecs import TierCodecPolicy

        try:
            return TierCodecPolicy.from_dict(self.tier_codecs)
        except ConfigError as exc:
            raise ConfigError(f"tier_codecs={dict(self.tier_codecs)!r}: {exc}") from None


TENANT_KEYS = ("quota_bytes", "share_with")


def _check_tenants(tenants: Any) -> dict[str, dict[str, Any]]:
    """tenants as {name: {"quota_bytes": int | None, "share_with": tuple[str, ...]}}: sizes
    parsed (``None`` = no quota), unknown keys and wrong types refused."""
    if not isinstance(tenants, Mapping):
        raise ConfigError(f"tenants={tenants!r}: expected a mapping of tenant name to "
                          "{quota_bytes: SIZE, share_with: [tenants]}")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in tenants.items():
        where = f"tenants[{name!r}]"
        if not isinstance(name, str) or not name or "\0" in name:
            raise ConfigError(f"{where}: a tenant name must be a non-empty string")
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}={spec!r}: expected a mapping with keys {TENANT_KEYS}")
        unknown = sorted(set(spec) - set(TENANT_KEYS), key=str)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {TENANT_KEYS}")
        quota = spec.get("quota_bytes")
        if quota is not None:
            quota = parse_size(quota, f"{where}.quota_bytes")
            if quota < 0:
                raise ConfigError(f"{where}.quota_bytes={quota}: must be >= 0")
        share = spec.get("share_with", ())
        if isinstance(share, str) or not isinstance(share, (list, tuple)) or not all(
                isinstance(t, str) and t for t in share):
            raise ConfigError(f"{where}.share_with={share!r}: expected a list of tenant names")
        out[name] = {"quota_bytes": quota, "share_with": tuple(share)}
    return out


def _loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect (the embedded default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
_SIZE_FIELDS = {n for n in _FIELDS if n.endswith(("_bytes", "_bytes_per_s"))}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a value from a file, the environment (strings) or flags into the field's type."""
    where = f"{name} (from {source})"
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r} (from {source}); known: {sorted(_FIELDS)}")
    if name in _SIZE_FIELDS:
        return parse_size(value, where)
    if name in ("tier_codecs", "tenants"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: expected a JSON object like "
                                  f'{{"disk": "kivi-int4"}}: {exc}') from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping (JSON object)")
        return dict(value)
    if name == "models":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: expected a JSON list of model specs: {exc}") \
                    from None
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
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
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
