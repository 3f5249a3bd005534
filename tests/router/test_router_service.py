"""Router gRPC service over a real socket: membership, routing, load reports, status codes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore.router import RouterConfig
from kvstore.router.blocks import block_hashes, chain_block_ids
from kvstore.router.service import RouterServiceConfig, create_server
from kvstore.v1 import router_pb2 as pb
from kvstore.v1 import router_pb2_grpc


@pytest.fixture()
def service():
    config = RouterServiceConfig(
        router=RouterConfig(
            prefill_s_per_token=1e-3, prefill_s_per_cached_token=0.0, prefill_overhead_s=0.0
        )
    )
    server, port, router = create_server(config)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield router_pb2_grpc.RouterStub(channel), channel, router
    finally:
        channel.close()
        server.stop(grace=None)


def _join(stub, *workers: str) -> None:
    for w in workers:
        stub.Join(pb.RouterJoinRequest(worker_id=w, kv_capacity_tokens=100_000))


def test_join_route_and_affinity_over_the_wire(service):
    stub, _, router = service
    _join(stub, "a", "b", "c")
    tokens = list(range(1500))
    first = stub.Route(pb.RouteRequest(request_id="r1", token_ids=tokens))
    assert first.worker_id in first.candidates and len(set(first.candidates)) == 2
    assert first.ring_epoch == 3 and first.reason == "affinity"
    stub.ReportLoad(
        pb.ReportLoadRequest(
            worker_id=first.worker_id, pending_prefill_tokens=0, started_request_ids=["r1"]
        )
    )
    # Same prompt by block hashes: same worker, prefix now cached there.
    again = stub.Route(
        pb.RouteRequest(request_id="r2", block_hashes=block_hashes(tokens, 512), prompt_tokens=1500)
    )
    assert again.worker_id == first.worker_id and again.cached_tokens == 1500
    assert router.cluster.owner_of == {"r2": first.worker_id}


def test_migrations_reach_the_source_worker_on_its_next_report(service):
    stub, _, router = service
    _join(stub, "a", "b", "c")

    def prompt(pair: set[str], skip: int) -> list[int]:
        found = [
            chain_block_ids([i])
            for i in range(5000)
            if set(router.candidates(chain_block_ids([i]))) == pair
        ]
        return found[skip]

    def route(rid: str, blocks: list[int]) -> pb.RouteResponse:
        return stub.Route(pb.RouteRequest(request_id=rid, block_hashes=blocks, prompt_tokens=500))

    # Same scenario as the library test, over the wire: {a, c} requests pile on a while c is
    # busy; c drains, b gets busy, and two {a, b} requests make a's pair a hotspot.
    stub.ReportLoad(pb.ReportLoadRequest(worker_id="c", pending_prefill_tokens=10_000))
    assert [route(f"ac{i}", prompt({"a", "c"}, i)).worker_id for i in range(9)] == ["a"] * 9
    stub.ReportLoad(pb.ReportLoadRequest(worker_id="c", pending_prefill_tokens=0))
    stub.ReportLoad(pb.ReportLoadRequest(worker_id="b", pending_prefill_tokens=10_000))
    assert route("ab0", prompt({"a", "b"}, 0)).reason == "affinity"
    assert route("ab1", prompt({"a", "b"}, 1)).reason == "both-over-slo"
    moved = stub.ReportLoad(pb.ReportLoadRequest(worker_id="a", pending_prefill_tokens=0))
    assert len(moved.migrations) == router.migrations > 0
    for m in moved.migrations:
        assert (m.source_worker, m.target_worker) == ("a", "c") and m.gain_s > 0
        assert m.request_id.startswith("ac")
    # Delivered once: the next report carries nothing, and c's report never carried a's moves.
    assert not stub.ReportLoad(pb.ReportLoadRequest(worker_id="a")).migrations
    assert not stub.ReportLoad(pb.ReportLoadRequest(worker_id="c")).migrations


def test_bad_requests_get_clear_status_codes(service):
    stub, _, _ = service
    with pytest.raises(grpc.RpcError) as err:
        stub.Route(pb.RouteRequest(request_id="r", token_ids=[1, 2]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no workers yet
    _join(stub, "a")
    cases = [
        pb.RouteRequest(request_id="", token_ids=[1]),
        pb.RouteRequest(request_id="r"),
        pb.RouteRequest(request_id="r", token_ids=[1], block_hashes=[2]),
        pb.RouteRequest(request_id="r", block_hashes=[1, 2], prompt_tokens=5000),
    ]
    for request in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Route(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    for call, request, code in [
        (
            stub.Join,
            pb.RouterJoinRequest(worker_id="a", kv_capacity_tokens=100_000),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            stub.Join,
            pb.RouterJoinRequest(worker_id="z", kv_capacity_tokens=1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.Leave,
            pb.RouterLeaveRequest(worker_id="nobody"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            stub.ReportLoad,
            pb.ReportLoadRequest(worker_id="nobody"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == code
    # The service keeps serving after every refusal.
    assert stub.Route(pb.RouteRequest(request_id="ok", token_ids=[1, 2, 3])).worker_id == "a"


def test_leave_and_health(service):
    stub, channel, _ = service
    _join(stub, "a", "b")
    resp = stub.Route(pb.RouteRequest(request_id="r1", token_ids=[5] * 700))
    left = stub.Leave(pb.RouterLeaveRequest(worker_id=resp.worker_id))
    assert list(left.orphaned_request_ids) == ["r1"] and left.ring_epoch == 3
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="kvstore.v1.Router")).status
    assert status == health_pb2.HealthCheckResponse.SERVING
