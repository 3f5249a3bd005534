"""`kvstore token new --tenant T [--role user|admin]`: a fresh bearer token and its tokens-file
entry. The node's auth_tokens_file keeps only the sha256 of a token (docs/SECURITY.md), so the
token itself is printed once, here, for the caller to keep (KVSTORE_TOKEN, or a peer_token_file
for role admin tokens that nodes present to each other)."""

from __future__ import annotations

import argparse
import json
import secrets

from kvstore.errors import ConfigError
from kvstore.server.auth import ROLES, token_hash

TOKEN_PREFIX = "kvs_"  # recognisable in logs and secret scanners


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def entry(token: str, tenant: str, role: str, name: str = "") -> dict[str, str]:
    out = {"sha256": token_hash(token), "tenant": tenant, "role": role}
    if name:
        out["name"] = name
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_command", required=True)
    new = sub.add_parser("new", help="print a new token and the line for auth_tokens_file")
    new.add_argument("--tenant", required=True, help="tenant the token acts for")
    new.add_argument("--role", choices=ROLES, default="user",
                     help="admin: Stats, the Admin service, any tenant's namespace (peers)")
    new.add_argument("--name", default="", help="free text kept in the tokens file (who/what)")


def run(args: argparse.Namespace) -> int:
    if not args.tenant or "\0" in args.tenant:
        raise ConfigError("--tenant must be a non-empty name")
    token = new_token()
    line = json.dumps(entry(token, args.tenant, args.role, args.name))
    print(f"token: {token}")
    print("keep it secret (KVSTORE_TOKEN=..., or a peer_token_file); it is not stored anywhere.")
    print("add this entry to the node's auth_tokens_file, under `tokens:`:")
    print(f"  - {line}")
    return 0
