"""--token/--tls-ca/--tls-cert/--tls-key for CLI commands that call nodes as a client
(`kvstore admin`, `kvstore warmup`): one set of flags, defaulting to the KVSTORE_* environment
(ClientSecurity.from_env, client/kvstore_client/security.py; docs/SECURITY.md)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from kvstore.errors import ConfigError

if TYPE_CHECKING:
    from kvstore_client.security import ClientSecurity

# (flag, ClientSecurity field, help)
_FLAGS = (("--token", "token", "bearer token (default $KVSTORE_TOKEN)"),
          ("--tls-ca", "tls_ca", "CA of the nodes' certificates (default $KVSTORE_TLS_CA)"),
          ("--tls-cert", "tls_cert", "client certificate for mutual TLS ($KVSTORE_TLS_CERT)"),
          ("--tls-key", "tls_key", "key of --tls-cert ($KVSTORE_TLS_KEY)"))


def add_security_arguments(p: argparse.ArgumentParser) -> None:
    for flag, _, what in _FLAGS:
        p.add_argument(flag, default=None, help=what)


def security_from_args(args: argparse.Namespace, command: str) -> ClientSecurity:
    """The environment's settings with the flags given on the command line on top; a bad
    combination (a certificate without its key, ...) is a ConfigError naming ``command``."""
    from kvstore_client.security import ClientSecurity

    given = {field: getattr(args, field) for _, field, _ in _FLAGS
             if getattr(args, field, None) is not None}
    try:
        return dataclasses.replace(ClientSecurity.from_env(), **given)
    except ValueError as exc:
        raise ConfigError(f"{command}: {exc}") from exc


__all__ = ["add_security_arguments", "security_from_args"]
