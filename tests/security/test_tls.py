"""TLS and mutual TLS with a CA made in the test (conftest.pki): byte-exact round trips over
gRPC and the data plane, refused clients (no client certificate, unknown CA, plaintext), and the
node-to-node path (peer token + the node's own certificate as client certificate)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from kvstore import dataplane as dp
from kvstore.errors import Unavailable
from kvstore.keys import prefix_keys
from kvstore_client.dataplane import TLSDataConnection
from kvstore_client.security import ClientSecurity

from .conftest import TOKENS, scheme_of

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]


def tls_node(start_node, pki, mutual: bool = False, **kw):
    return start_node(tls_cert=pki["node_cert"], tls_key=pki["node_key"],
                      tls_client_ca=pki["ca"] if mutual else "", **kw)


@pytest.mark.parametrize("plane", PLANES)
def test_tls_round_trip_is_byte_exact(plane, start_node, pki, connect, payload):
    node = tls_node(start_node, pki)
    c = connect(node.address, scheme_of("alice"), security=ClientSecurity(tls_ca=pki["ca"]),
                use_data_plane=plane)
    keys = prefix_keys(scheme_of("alice"), list(range(3 * 256)))
    blobs = [payload(n, n) for n in (1, 300_000, 3 << 20)]
    assert c.put_many(keys, blobs) == [True] * 3
    assert [bytes(g) for g in c.get_bytes_many(keys)] == blobs
    if plane:  # the bytes really went over a TLS data-plane connection
        assert c._client._pool._idle and all(isinstance(x, TLSDataConnection)
                                              for x in c._client._pool._idle)


@pytest.mark.parametrize("plane", PLANES)
def test_mutual_tls_with_auth_round_trip(plane, start_node, pki, connect, tokens_file, payload):
    node = tls_node(start_node, pki, mutual=True, auth_tokens_file=str(tokens_file))
    sec = ClientSecurity(token=TOKENS["alice"], tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                         tls_key=pki["client_key"])
    c = connect(node.address, scheme_of("alice"), security=sec, use_data_plane=plane)
    key = prefix_keys(scheme_of("alice"), list(range(256)))[0]
    data = payload(123_457, "mtls")
    assert c.put(key, data) and bytes(c.get_bytes_many([key])[0]) == data


def test_mutual_tls_refuses_a_client_without_a_certificate(start_node, pki, connect):
    node = tls_node(start_node, pki, mutual=True)
    with pytest.raises(Unavailable, match="check TLS"):
        connect(node.address, scheme_of("a"), security=ClientSecurity(tls_ca=pki["ca"]),
                deadline_s=5)
    rogue = ClientSecurity(tls_ca=pki["ca"], tls_cert=pki["rogue_cert"], tls_key=pki["rogue_key"])
    with pytest.raises(Unavailable):  # a certificate from another CA is no better
        connect(node.address, scheme_of("a"), security=rogue, deadline_s=5)

    ctx = ssl.create_default_context(cafile=pki["ca"])  # the data plane refuses it too
    with socket.create_connection(("127.0.0.1", node.core.data_port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, 1) + b"x")
                if not s.recv(dp.STATUS.size):  # TLS 1.3: the refusal arrives on first read
                    raise ConnectionError("closed without a reply")


def test_plaintext_client_against_a_tls_node_fails_clearly(start_node, pki, connect):
    node = tls_node(start_node, pki)
    with pytest.raises(Unavailable, match="may require TLS.*KVSTORE_TLS_CA"):
        connect(node.address, scheme_of("a"), security=ClientSecurity(), deadline_s=5)
    with socket.create_connection(("127.0.0.1", node.core.data_port), timeout=10) as s:
        s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, 1) + b"x")
        try:  # the TLS server answers a plaintext HELLO with a TLS alert or a reset, never OK
            reply = s.recv(64)
        except ConnectionResetError:
            reply = b""
        assert reply != dp.pack_status(0) and not reply.startswith(b"\x00")


def test_tls_client_that_trusts_another_ca_or_a_plaintext_node_fails(start_node, pki, connect):
    node = tls_node(start_node, pki)
    with pytest.raises(Unavailable, match="check TLS"):
        connect(node.address, scheme_of("a"), security=ClientSecurity(tls_ca=pki["rogue_ca"]),
                deadline_s=5)
    plain = start_node()
    with pytest.raises(Unavailable, match="check TLS"):
        connect(plain.address, scheme_of("a"), security=ClientSecurity(tls_ca=pki["ca"]),
                deadline_s=5)


def test_server_name_override(start_node, pki, connect):
    """The certificate names 127.0.0.1 and localhost; dialing by IP and checking "localhost"
    works, checking a name the certificate lacks does not (gRPC and data plane alike)."""
    node = tls_node(start_node, pki)
    ok = ClientSecurity(tls_ca=pki["ca"], server_name="localhost")
    c = connect(node.address, scheme_of("a"), security=ok)
    key = prefix_keys(scheme_of("a"), list(range(256)))[0]
    assert c.put(key, b"12345") and bytes(c.get_bytes_many([key])[0]) == b"12345"
    with pytest.raises(Unavailable):
        connect(node.address, scheme_of("a"), deadline_s=5,
                security=ClientSecurity(tls_ca=pki["ca"], server_name="kvstore.example"))


def test_node_to_node_copies_use_the_peer_token_and_the_node_certificate(
        start_node, node_config, pki, tokens_file, tmp_path, connect, make_chunk):
    """What the rebalancer and a drain do: CopyClient with peer_security(config) writes into
    alice's namespace on a peer that requires mutual TLS and tokens."""
    from kvstore.cluster.rebalance import _COPY_OPTIONS, CopyClient
    from kvstore.cluster.security import peer_security
    from kvstore.wire import info_to_pb

    peer = tls_node(start_node, pki, mutual=True, auth_tokens_file=str(tokens_file))
    token_file = tmp_path / "peer-token"
    token_file.write_text(TOKENS["admin"] + "\n")
    me = node_config(tls_cert=pki["node_cert"], tls_key=pki["node_key"], tls_ca=pki["ca"],
                     peer_token_file=str(token_file))
    sec = peer_security(me)
    assert sec.token == TOKENS["admin"] and sec.tls_cert == pki["node_cert"]
    info, data = make_chunk("handed-over", 50_000)

    async def copy() -> list[bool]:
        client = CopyClient(peer.address, scheme_of("alice"), _COPY_OPTIONS, sec)
        try:
            return await client.put_chunks([info_to_pb(info)], [memoryview(data)])
        finally:
            await client.close()

    assert asyncio.run(copy()) == [True]
    alice = connect(peer.address, scheme_of("alice"), security=ClientSecurity(
        token=TOKENS["alice"], tls_ca=pki["ca"], tls_cert=pki["client_cert"],
        tls_key=pki["client_key"]))
    assert bytes(alice.get_bytes_many([info.key])[0]) == data
    assert peer.core.manager.tenant_usage() == {"alice": 50_000}
