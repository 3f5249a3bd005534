"""The node's TLS material: gRPC server credentials and the data plane's SSLContext, both from
the same files (tls_cert, tls_key, and tls_client_ca for mutual TLS). Empty settings = plaintext,
the embedded local default (docs/SECURITY.md). Unreadable files stop the node at start, naming
the setting."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from kvstore.config import NodeConfig
from kvstore.errors import ConfigError


def _read(config: NodeConfig, name: str) -> bytes:
    path = getattr(config, name)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}={path!r}: cannot read it: {exc.strerror}") from None


def server_credentials(config: NodeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port (None = plaintext). With tls_client_ca, a client must
    present a certificate signed by that CA (mutual TLS) or the TLS handshake fails."""
    if not config.tls_cert:
        return None
    return grpc.ssl_server_credentials(
        [(_read(config, "tls_key"), _read(config, "tls_cert"))],
        root_certificates=_read(config, "tls_client_ca") if config.tls_client_ca else None,
        require_client_auth=bool(config.tls_client_ca))


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The data plane's server context (None = plaintext): same certificate and client-CA rule
    as gRPC, TLS 1.2 at least."""
    if not config.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_cert={config.tls_cert!r} / tls_key={config.tls_key!r}: cannot "
                          f"load the certificate and key: {exc}") from None
    if config.tls_client_ca:
        try:
            ctx.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls_client_ca={config.tls_client_ca!r}: cannot load it: "
                              f"{exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
