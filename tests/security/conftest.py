"""Fixtures of the security tests: a self-made CA (openssl CLI, made once per session), a tokens
file with tenants alice, bob, carol and an admin, secured nodes on real sockets and clients.

The `cryptography` package is not in the venv; the openssl CLI is (Debian's openssl package),
so certificates are made with it: EC P-256 keys (fast), 1-day validity, SANs for 127.0.0.1 and
localhost, and EKU serverAuth+clientAuth so a node's certificate also serves as its client
certificate towards peers under mutual TLS.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore.keys import KeyScheme
from kvstore.server.auth import token_hash

TENANTS = ("alice", "bob", "carol")
TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789",
          "carol": "tok-carol-0123456789", "admin": "tok-admin-0123456789"}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(d: Path, name: str, ca: str) -> None:
    (d / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, str]:
    """Paths: ca (the test CA), node_cert/node_key (signed by it), client_cert/client_key
    (signed by it), rogue_ca, rogue_cert/rogue_key (a different CA and a leaf it signed)."""
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "node", "ca")
    _make_leaf(d, "client", "ca")
    _make_leaf(d, "rogue", "rogue-ca")
    return {"ca": str(d / "ca.pem"), "node_cert": str(d / "node.pem"),
            "node_key": str(d / "node.key"), "client_cert": str(d / "client.pem"),
            "client_key": str(d / "client.key"), "rogue_ca": str(d / "rogue-ca.pem"),
            "rogue_cert": str(d / "rogue.pem"), "rogue_key": str(d / "rogue.key")}


@pytest.fixture
def tokens_file(tmp_path) -> Path:
    """A tokens file (hashes only) for TOKENS: alice, bob, carol are users, admin is admin."""
    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps({"tokens": [
        {"sha256": token_hash(tok), "tenant": "ops" if who == "admin" else who,
         "role": "admin" if who == "admin" else "user", "name": who}
        for who, tok in TOKENS.items()]}))
    return path


def scheme_of(tenant: str) -> KeyScheme:
    return KeyScheme("test/model", "float16", tenant=tenant)


@pytest.fixture
def secure_node(start_node, tokens_file) -> Callable[..., Any]:
    """``secure_node(**config)``: a node with auth on (tokens_file) on free ports; alice shares
    with carol unless ``tenants`` is given."""

    def start(**kw: Any) -> Any:
        kw.setdefault("auth_tokens_file", str(tokens_file))
        kw.setdefault("tenants", {"alice": {"share_with": ["carol"]}})
        return start_node(**kw)

    return start


@pytest.fixture
def client_as(connect) -> Callable[..., Any]:
    """``client_as(node, who, tenant=None, **options)``: a KVStoreClient with ``who``'s token
    on ``tenant``'s namespace (default: its own), plaintext unless ``security`` is given."""
    from kvstore_client.security import ClientSecurity

    def make(node: Any, who: str, tenant: str | None = None, **options: Any) -> Any:
        security = options.pop("security", None) or ClientSecurity(token=TOKENS[who])
        return connect(node.address, scheme_of(tenant or who), security=security, **options)

    return make


@pytest.fixture
def grpc_channel() -> Iterator[Callable[[str], Any]]:
    """``grpc_channel(address)``: a plain blocking gRPC channel, closed at teardown."""
    import grpc

    channels: list[grpc.Channel] = []

    def make(address: str) -> grpc.Channel:
        ch = grpc.insecure_channel(address)
        channels.append(ch)
        return ch

    yield make
    for ch in channels:
        ch.close()
