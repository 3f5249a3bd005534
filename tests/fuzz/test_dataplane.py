"""Property-based fuzzing of the bulk data plane over raw sockets.

A case is the whole byte stream one client sends on a connection (HELLO, then requests, well-
formed or not) followed by a half-close. oracle.DataPlaneModel reads the same bytes the way
docs/PROTOCOL.md describes and says what the node must answer, frame by frame, before it closes
the connection; what the node stored is checked against the model's store afterwards.
"""

from __future__ import annotations

import socket
import threading

from hypothesis import given
from hypothesis import strategies as st

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb

from . import oracle
from . import strategies as fs
from .budget import fuzz_settings
from .harness import MAX_CHUNK, read_status, record, recv_exact


def _send_all_then_half_close(sock: socket.socket, wire: bytes) -> threading.Thread:
    """Send on a thread: the node answers while we send, and a GET answer can outgrow the
    socket buffers; a node that hung up early turns the rest of the send into an error."""

    def send() -> None:
        try:
            sock.sendall(wire)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node closed the connection (checked by the reader)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _read_get_answer(sock: socket.socket) -> bytes | None:
    if recv_exact(sock, 1) == b"\x00":
        return None
    (m,) = dp.U32.unpack(recv_exact(sock, 4))
    meta = pb.ChunkMeta.FromString(recv_exact(sock, m))
    return recv_exact(sock, meta.payload_bytes)


def _assert_closed(sock: socket.socket) -> None:
    try:
        rest = sock.recv(1)
    except ConnectionResetError:
        return  # closed with our unread bytes queued: TCP resets instead of FIN
    assert rest == b"", f"node sent more than the protocol says: {rest!r}"


def run_connection(target, wire: bytes, stored: dict[bytes, bytes], label: str) -> list:
    model = oracle.DataPlaneModel(stored, MAX_CHUNK, target.verdicts, {target.session_id})
    expected = model.run(wire)
    with socket.create_connection(("127.0.0.1", target.node.data_port), timeout=20) as sock:
        sender = _send_all_then_half_close(sock, wire)
        try:
            for kind, want in expected:
                if kind == "status":
                    code, msg = read_status(sock)
                    record(label, want)
                    assert code == want.value[0], (want, code, msg)
                else:
                    key, data = want
                    assert _read_get_answer(sock) == data, key.hex()
            _assert_closed(sock)
        except ConnectionResetError:
            if not model.unread:
                raise
            record(label, "reset after hang-up")  # answers the node sent may be lost
        sender.join(20)
    return expected


def test_hello(target):
    @fuzz_settings("dp_hello")
    @given(fs.dp_sessions(target.session_id), st.sampled_from([0] * 8 + list(range(1, 9))),
           st.binary(max_size=8))
    def prop(hello, chop, trailer):
        # trailer: whatever follows (a request, or junk); chop: a client that dies mid-HELLO
        wire = hello[:len(hello) - chop] if chop else hello + trailer
        run_connection(target, wire, dict(target.canaries), "dp HELLO (statuses)")
        target.after_case(())

    prop()
    target.check_rss()


def test_requests(target):
    sid = target.session_id.encode()
    hello = dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid
    known = sorted(target.canaries)

    @fuzz_settings("dp_requests")
    @given(st.lists(fs.dp_requests(target.verdicts, known), min_size=1, max_size=4),
           st.integers(0, 3))
    def prop(requests, chop):
        wire = hello + b"".join(requests)
        if chop:  # a client that dies mid-request
            wire = wire[:len(wire) - chop * 7]
        stored = dict(target.canaries)
        with target.case() as touched:
            touched.update(_put_keys(requests))
            run_connection(target, wire, stored, "dp requests (statuses)")
            new = sorted(set(stored) - set(target.canaries))
            if new:
                assert target.get_all(new) == {k: stored[k] for k in new}

    prop()
    target.check_rss()


def _put_keys(requests: list[bytes]) -> set[bytes]:
    """Keys of the well-formed PUT metas among the requests (cleanup: the model may have cut a
    request differently than the node only if the node is wrong, which the test reports)."""
    keys = set()
    for r in requests:
        if r[:1] == dp.OP.pack(dp.OP_PUT) and len(r) >= 5:
            (m,) = dp.U32.unpack(r[1:5])
            try:
                meta = pb.ChunkMeta.FromString(r[5:5 + m])
            except Exception:  # DecodeError
                continue
            if len(meta.key) == 16:
                keys.add(bytes(meta.key))
    return keys
