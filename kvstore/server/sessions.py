"""Handshake checks and the session table.

A session binds a connection's calls to one key scheme (model, dtype, layout, chunk size, tenant).
The node refuses a scheme it does not serve with FAILED_PRECONDITION naming the differing field:
a silent 0% hit rate from mismatched keys is the failure users of other caches report most.

With auth on, a session is also bound to the caller (kvstore/server/auth.py): ``scheme.tenant``
owns the chunks the session puts (quotas count them there), ``principal`` is who opened it, and
``read_only`` marks a session on another tenant's namespace that its owner shares.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvstore.config import ModelSpec
from kvstore.errors import PermissionDenied, SchemeMismatch, SessionRequired
from kvstore.keys import HASH_ALGORITHM, SCHEME_VERSION, KeyScheme
from kvstore.server.auth import Principal, authorize_tenant
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.wire import scheme_from_pb


@dataclass(frozen=True)
class Session:
    session_id: str
    scheme: KeyScheme
    namespace_id: str
    principal: Principal | None = None  # None: auth off
    read_only: bool = False

    @property
    def tenant(self) -> str:
        """The tenant owning this session's chunks (the scheme's; bound to the caller)."""
        return self.scheme.tenant

    def check_caller(self, principal: Principal | None) -> None:
        """A session id is usable only by the principal that opened it (or an admin)."""
        if self.principal is None or principal is None or principal.is_admin:
            return
        if principal != self.principal:
            raise PermissionDenied("this session was opened by another caller; call Handshake "
                                   "with your own token")

    def check_writable(self) -> None:
        if self.read_only:
            raise PermissionDenied(f"tenant {self.tenant!r} shares this namespace with tenant "
                                   f"{self.principal.tenant if self.principal else '?'!r} for "
                                   "reading only: put and delete are refused")


def check_scheme(m: pb.KeyScheme, models: tuple[ModelSpec, ...]) -> KeyScheme:
    """The client's scheme if this node serves it, else SchemeMismatch naming the difference."""
    if m.hash_algorithm != HASH_ALGORITHM or m.version != SCHEME_VERSION:
        raise SchemeMismatch(
            f"key scheme differs: client hashes with {m.hash_algorithm or '?'}/v{m.version}, "
            f"this node with {HASH_ALGORITHM}/v{SCHEME_VERSION}; upgrade the older side")
    scheme = scheme_from_pb(m)  # INVALID_ARGUMENT for fields no scheme may have
    if not models:
        return scheme
    same_model = [s for s in models if s.model_id == scheme.model_id]
    if not same_model:
        served = ", ".join(sorted({s.model_id for s in models}))
        raise SchemeMismatch(f"model {scheme.model_id!r} is not served by this node "
                             f"(served: {served})")
    for field_name, client_value in (("kv_dtype", scheme.kv_dtype),
                                     ("kv_layout", scheme.kv_layout),
                                     ("chunk_tokens", scheme.chunk_tokens)):
        values = {getattr(s, field_name) for s in same_model}
        if client_value not in values:
            raise SchemeMismatch(
                f"{field_name} differs for model {scheme.model_id!r}: client {client_value!r}, "
                f"node {sorted(values)!r}")
        same_model = [s for s in same_model if getattr(s, field_name) == client_value]
    return scheme


class SessionTable:
    def __init__(self, models: tuple[ModelSpec, ...], max_sessions: int = 65536,
                 tenants: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.models = models
        self.tenants = tenants or {}
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._schemes: dict[str, KeyScheme] = {}  # namespace id -> scheme; never forgotten

    def open(self, m: pb.KeyScheme, principal: Principal | None = None) -> Session:
        scheme = check_scheme(m, self.models)
        read_only = authorize_tenant(principal, scheme.tenant, self.tenants)
        s = Session(secrets.token_hex(16), scheme, scheme.namespace_id(), principal, read_only)
        with self._lock:
            self._sessions[s.session_id] = s
            self._schemes[s.namespace_id] = scheme
            while len(self._sessions) > self.max_sessions:  # forget the oldest; it re-handshakes
                self._sessions.popitem(last=False)
        return s

    def get(self, session_id: str | None) -> Session:
        if not session_id:
            raise SessionRequired("no session: call Handshake first and send its session_id "
                                  "in the 'kvstore-session' metadata")
        with self._lock:
            s = self._sessions.get(session_id)
        if s is None:
            raise SessionRequired("unknown session (the node may have restarted): "
                                  "call Handshake again")
        return s

    def scheme(self, namespace_id: str) -> KeyScheme | None:
        """The key scheme of a namespace some session opened since start (None if none did)."""
        with self._lock:
            return self._schemes.get(namespace_id)
