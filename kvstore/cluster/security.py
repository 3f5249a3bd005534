"""How this node presents itself to other nodes (rebalancing, drain hand-over): the CA it trusts
(``tls_ca``), its own certificate as the client certificate (``tls_cert``/``tls_key``, for peers
that require mutual TLS) and the token in ``peer_token_file`` (role admin, so it may write into
any tenant's namespace). Empty settings = plaintext, no token (docs/SECURITY.md)."""

from __future__ import annotations

from pathlib import Path

from kvstore.config import NodeConfig
from kvstore.errors import ConfigError
from kvstore_client.security import ClientSecurity


def peer_security(config: NodeConfig) -> ClientSecurity:
    """Never from the environment: a node's KVSTORE_TOKEN is no business of its peer traffic."""
    token = ""
    if config.peer_token_file:
        try:
            token = Path(config.peer_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"peer_token_file={config.peer_token_file!r}: cannot read it: "
                              f"{exc.strerror}") from None
        if not token:
            raise ConfigError(f"peer_token_file={config.peer_token_file!r} is empty")
    if not config.tls_ca:
        return ClientSecurity(token=token)
    return ClientSecurity(token=token, tls_ca=config.tls_ca, tls_cert=config.tls_cert,
                          tls_key=config.tls_key)
