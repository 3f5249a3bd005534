"""Client-side security settings: TLS (optionally mutual) and the bearer token of a tenant.

One small value object that every way of reaching a node uses: gRPC channels (``open_channel``),
per-call metadata (``auth_metadata``) and the bulk data plane (``ssl_context``). Empty settings
are the embedded local default: plaintext, no token (docs/SECURITY.md).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTH_METADATA = "authorization"  # gRPC metadata keys are lower case
ENV = {"token": "KVSTORE_TOKEN", "tls_ca": "KVSTORE_TLS_CA", "tls_cert": "KVSTORE_TLS_CERT",
       "tls_key": "KVSTORE_TLS_KEY", "server_name": "KVSTORE_TLS_SERVER_NAME"}


@dataclass(frozen=True)
class ClientSecurity:
    token: str = ""        # bearer token that maps this caller to a tenant and role; "" = none
    tls_ca: str = ""       # PEM file of the CA that signed the nodes' certificates; "" = plaintext
    tls_cert: str = ""     # PEM client certificate, for nodes that require mutual TLS
    tls_key: str = ""      # PEM private key of tls_cert
    server_name: str = ""  # name to check in the node's certificate instead of the dialed host

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_cert and not self.tls_ca:
            raise ValueError("a client certificate (mutual TLS) needs tls_ca to verify the node")

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSecurity:
        """Settings from KVSTORE_TOKEN, KVSTORE_TLS_CA, KVSTORE_TLS_CERT, KVSTORE_TLS_KEY and
        KVSTORE_TLS_SERVER_NAME (unset = empty)."""
        env = os.environ if env is None else env
        return cls(**{field: env.get(var, "") for field, var in ENV.items()})


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path!r}: {exc.strerror}") from exc


def auth_metadata(security: ClientSecurity | None) -> tuple[tuple[str, str], ...]:
    """The metadata entry carrying the token (empty without one)."""
    if security is None or not security.token:
        return ()
    return ((AUTH_METADATA, f"Bearer {security.token}"),)


def open_channel(target: str, security: ClientSecurity | None = None,
                 options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target``: TLS when ``security.tls_ca`` is set, else plaintext."""
    opts = list(options)
    if security is None or not security.tls:
        return grpc.aio.insecure_channel(target, options=opts)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(security.tls_ca, "tls_ca"),
        private_key=_read(security.tls_key, "tls_key") if security.tls_key else None,
        certificate_chain=_read(security.tls_cert, "tls_cert") if security.tls_cert else None)
    if security.server_name:
        opts.append(("grpc.ssl_target_name_override", security.server_name))
    return grpc.aio.secure_channel(target, creds, options=opts)


def ssl_context(security: ClientSecurity | None) -> ssl.SSLContext | None:
    """A client SSLContext for the data plane's TCP socket (None = plaintext): verifies the
    node's certificate against ``tls_ca`` and its name (``server_hostname``), TLS 1.2 at least."""
    if security is None or not security.tls:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=security.tls_ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if security.tls_cert:
            ctx.load_cert_chain(security.tls_cert, security.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the client TLS files (tls_ca={security.tls_ca!r}, "
                         f"tls_cert={security.tls_cert!r}): {exc}") from exc
    return ctx


def server_hostname(security: ClientSecurity | None, host: str) -> str:
    """The name to check in the node's certificate: ``server_name`` if set, else the host."""
    return security.server_name if security is not None and security.server_name else host


def connect_hint(security: ClientSecurity | None) -> str:
    """Appended to "node unreachable" errors: the usual TLS mistakes look the same as a node
    that is down (the connection just closes)."""
    if security is None or not security.tls:
        return ("if the node is up, it may require TLS: give ClientSecurity(tls_ca=...) or set "
                "KVSTORE_TLS_CA (docs/SECURITY.md)")
    return ("if the node is up, check TLS: does it serve TLS at all, is its certificate signed "
            "by tls_ca and issued for this host (else set server_name), and does it require a "
            "client certificate (tls_cert/tls_key)? (docs/SECURITY.md)")
