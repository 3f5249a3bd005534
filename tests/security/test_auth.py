"""Authentication and roles on a real node: tokens, the handshake's tenant binding, admin-only
methods, sessions bound to their caller, token revocation and the `kvstore token new` CLI."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore import wire
from kvstore.errors import PermissionDenied, Unauthenticated
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore_client.security import ClientSecurity

from .conftest import TOKENS, scheme_of


def bearer(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


def handshake(stub: pb_grpc.KVStoreStub, tenant: str, md: tuple = ()) -> pb.HandshakeResponse:
    return stub.Handshake(pb.HandshakeRequest(scheme=wire.scheme_to_pb(scheme_of(tenant))),
                          metadata=md, timeout=10)


def test_calls_without_a_token_are_unauthenticated(secure_node, grpc_channel, connect):
    node = secure_node()
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    for call in (lambda: handshake(stub, "alice"),
                 lambda: stub.Lookup(pb.LookupRequest(keys=[b"k" * 16]), timeout=10),
                 lambda: stub.Stats(pb.StatsRequest(), timeout=10),
                 lambda: list(stub.Get(pb.GetRequest(keys=[b"k" * 16]), timeout=10))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in err.value.details()  # says what to send
    with pytest.raises(Unauthenticated, match="requires a token"):  # the client library too
        connect(node.address, scheme_of("alice"), security=ClientSecurity())


def test_unknown_or_malformed_tokens_are_unauthenticated(secure_node, grpc_channel):
    node = secure_node()
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    for value, why in (("Bearer not-a-token", "unknown"), (f"Basic {TOKENS['alice']}", "malformed"),
                       ("Bearer ", "malformed"), (f"Bearer {TOKENS['alice']}x", "unknown")):
        with pytest.raises(grpc.RpcError) as err:
            handshake(stub, "alice", (("authorization", value),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert why in err.value.details()
        md = dict(err.value.trailing_metadata() or ())
        assert md.get("kvstore-error") == "Unauthenticated"


def test_health_checks_need_no_token(secure_node, grpc_channel):
    node = secure_node()
    resp = health_pb2_grpc.HealthStub(grpc_channel(node.address)).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_handshake_on_another_tenants_namespace_is_permission_denied(secure_node, client_as):
    node = secure_node()
    with pytest.raises(PermissionDenied, match="'bob' may not use tenant 'alice'"):
        client_as(node, "bob", tenant="alice")      # alice shares with carol only
    with pytest.raises(PermissionDenied):
        client_as(node, "alice", tenant="bob")      # bob shares with nobody
    assert client_as(node, "alice").session.session_id  # its own tenant: fine


def test_stats_and_admin_service_need_role_admin(secure_node, client_as, grpc_channel):
    node = secure_node()
    alice = client_as(node, "alice")
    with pytest.raises(PermissionDenied, match="needs role admin"):
        alice.stats()
    admin_stub = pb_grpc.AdminStub(grpc_channel(node.address))
    with pytest.raises(grpc.RpcError) as err:  # every method of kvstore.v1.Admin, by prefix
        admin_stub.Inspect(pb.InspectRequest(keys=[b"k" * 16]), metadata=bearer("alice"),
                           timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert client_as(node, "admin", tenant="alice").stats().node_id == node.core.node_id
    admin_stub.Inspect(pb.InspectRequest(keys=[b"k" * 16]), metadata=bearer("admin"), timeout=10)


def test_a_session_id_works_only_for_the_caller_that_opened_it(secure_node, grpc_channel):
    node = secure_node()
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    sid = handshake(stub, "alice", bearer("alice")).session_id
    req = pb.LookupRequest(keys=[b"k" * 16])
    stub.Lookup(req, metadata=(("kvstore-session", sid), *bearer("alice")), timeout=10)
    with pytest.raises(grpc.RpcError) as err:  # bob replays alice's session id with his token
        stub.Lookup(req, metadata=(("kvstore-session", sid), *bearer("bob")), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_may_open_any_tenants_namespace(secure_node, client_as, payload):
    """Nodes hand chunks over with an admin peer token, into the owner's namespace."""
    node = secure_node()
    key = b"\x01" * 16
    data = payload(5000, 1)
    assert client_as(node, "admin", tenant="bob").put(key, data)
    assert bytes(client_as(node, "bob").get_bytes_many([key])[0]) == data
    assert node.core.manager.tenant_usage() == {"bob": 5000}  # owned by bob, not by "ops"


def test_revoked_token_stops_working_and_cli_token_starts(secure_node, tokens_file, wait_until,
                                                          grpc_channel, capsys):
    """`kvstore token new` prints a token and its entry; the node re-reads the tokens file."""
    from kvstore.cli.main import main

    node = secure_node()
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    assert main(["token", "new", "--tenant", "dave", "--role", "user"]) == 0
    out = capsys.readouterr().out
    token = out.split("token: ", 1)[1].split()[0]
    entry = json.loads(out.rsplit("  - ", 1)[1])
    assert token not in json.dumps(entry) and entry["tenant"] == "dave"
    doc = json.loads(tokens_file.read_text())
    doc["tokens"] = [t for t in doc["tokens"] if t["tenant"] != "bob"] + [entry]
    tokens_file.write_text(json.dumps(doc))

    def dave_ok() -> bool:
        try:
            handshake(stub, "dave", (("authorization", f"Bearer {token}"),))
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

    wait_until(dave_ok, 10, "the new token to be accepted")
    with pytest.raises(grpc.RpcError) as err:
        handshake(stub, "bob", bearer("bob"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
