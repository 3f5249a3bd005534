"""Authentication and authorization of gRPC calls (docs/SECURITY.md).

    token (metadata "authorization: Bearer <token>")
      -> TokenTable: sha256(token) -> Principal(tenant, role)      (the file holds hashes only)
      -> AuthInterceptor: no/unknown token -> UNAUTHENTICATED; admin-only method and role user
         -> PERMISSION_DENIED; health checks and reflection pass without a token
      -> Handshake: authorize_tenant() binds the session to the principal (own tenant: read-write;
         a tenant that shares with it: read-only; role admin: any tenant)

With no ``auth_tokens_file`` there is no table and no interceptor: the embedded local default.
The data plane carries no token: its HELLO presents the session id, a 128-bit secret that only
the authenticated Handshake caller received (so it is as good as the token over TLS).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kvstore.errors import (
    ERROR_METADATA,
    ConfigError,
    KVStoreError,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger(__name__)
AUTH_METADATA = "authorization"
ROLES = ("user", "admin")
TOKEN_KEYS = ("sha256", "tenant", "role", "name")
# Methods any caller may use without a token: load balancers' health checks, grpcurl listing.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# Methods only role admin may call. The whole Admin service is matched by prefix, so methods added
# to it later are covered without touching this list.
ADMIN_PREFIXES = ("/kvstore.v1.Admin/", "/kvstore.v1.KVStore/Stats")
_RELOAD_CHECK_S = 1.0


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str = "user"
    name: str = ""  # free text from the tokens file, for logs

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(data: Any, source: str) -> dict[str, Principal]:
    """{sha256 hex: Principal} from a tokens document ``{"tokens": [{sha256, tenant, role}]}``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tokens"), list):
        raise ConfigError(f"auth_tokens_file {source}: expected a mapping with a 'tokens' list, "
                          "e.g. tokens: [{sha256: <hex>, tenant: acme, role: user}]")
    table: dict[str, Principal] = {}
    for i, item in enumerate(data["tokens"]):
        where = f"auth_tokens_file {source}: tokens[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping with keys {TOKEN_KEYS}")
        unknown = sorted(set(item) - set(TOKEN_KEYS), key=str)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {TOKEN_KEYS} (the "
                              "file holds sha256 hashes of tokens, never tokens)")
        digest, tenant = str(item.get("sha256", "")).lower(), item.get("tenant")
        role = item.get("role", "user")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}: sha256 must be 64 hex digits (`kvstore token new` "
                              "prints the entry)")
        if not isinstance(tenant, str) or not tenant or "\0" in tenant:
            raise ConfigError(f"{where}: tenant must be a non-empty string")
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {ROLES}, got {role!r}")
        if digest in table:
            raise ConfigError(f"{where}: the same token hash is listed twice")
        table[digest] = Principal(tenant, role, str(item.get("name", "")))
    return table


def load_tokens(path: str) -> dict[str, Principal]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"auth_tokens_file={path!r}: cannot read it: {exc.strerror}") from None
    import yaml  # a superset of JSON: one parser reads both

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"auth_tokens_file={path!r} is not valid YAML/JSON: {exc}") from None
    return parse_tokens(data, repr(path))


class TokenTable:
    """The node's tokens, re-read when the file changes (checked at most once a second), so a
    revoked token stops working without a restart. A file that turns bad keeps the old table."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._table = load_tokens(path)
        self._mtime = _mtime(path)
        self._checked = time.monotonic()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RELOAD_CHECK_S:
            return
        self._checked = now
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return
        try:
            self._table = load_tokens(self.path)
            self._mtime = mtime
            log.info("auth: reloaded %d tokens from %s", len(self._table), self.path)
        except ConfigError as exc:
            log.error("auth: keeping the previous tokens: %s", exc)

    def authenticate(self, metadata: Mapping[str, Any]) -> Principal:
        """The caller named by the metadata's bearer token, else Unauthenticated."""
        value = metadata.get(AUTH_METADATA)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if not value:
            raise Unauthenticated("this node requires a token: send metadata 'authorization: "
                                  "Bearer <token>' (client: ClientSecurity(token=...) or "
                                  "KVSTORE_TOKEN; docs/SECURITY.md)")
        scheme, _, token = str(value).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
        self._maybe_reload()
        principal = self._table.get(token_hash(token.strip()))
        if principal is None:
            raise Unauthenticated("unknown or revoked token")
        return principal

    def __len__(self) -> int:
        return len(self._table)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return -1.0


def authorize_tenant(principal: Principal | None, tenant: str,
                     tenants: Mapping[str, Mapping[str, Any]]) -> bool:
    """May ``principal`` open a session on ``tenant``'s namespaces? Returns read_only; raises
    PermissionDenied. ``None`` = auth off (anyone may use any tenant, read-write)."""
    if principal is None or principal.is_admin or tenant == principal.tenant:
        return False
    if principal.tenant in tenants.get(tenant, {}).get("share_with", ()):
        return True  # the owner opted in to share, for reading only
    raise PermissionDenied(f"tenant {principal.tenant!r} may not use tenant {tenant!r}'s "
                           "namespace: set KeyScheme(tenant=...) to your own tenant, or ask the "
                           f"owner to list {principal.tenant!r} in its share_with")


def needs_admin(method: str) -> bool:
    return method.startswith(ADMIN_PREFIXES)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every call but health checks and reflection needs a known token; admin methods need
    role admin. A refused call never reaches the servicer."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        try:
            principal = self.table.authenticate(dict(details.invocation_metadata or ()))
            if needs_admin(method) and not principal.is_admin:
                raise PermissionDenied(f"{method} needs role admin; the token of tenant "
                                       f"{principal.tenant!r} has role {principal.role!r}")
        except KVStoreError as exc:
            handler = await continuation(details)
            return _refusal(handler, exc) if handler is not None else handler
        return await continuation(details)


def _refusal(handler: grpc.RpcMethodHandler, exc: KVStoreError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers with ``exc``'s status."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_trailing_metadata(((ERROR_METADATA, type(exc).__name__),))
        await context.abort(exc.code, str(exc))

    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kw)
    return grpc.unary_unary_rpc_method_handler(refuse, **kw)
