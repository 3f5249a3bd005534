"""The gRPC Admin servicer (`kvstore admin inspect | evict | drain`): thin, over one StoreCore.

Every method lives in the ``kvstore.v1.Admin`` service so that one rule (role admin for
"/kvstore.v1.Admin/*") guards them all once auth is on. Namespaces are resolved to models and
tenants through the schemes clients handshook with since the node started (NodeStats): chunks
restored from disk whose namespace no client has opened yet can be evicted by namespace id only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kvstore.errors import FailedPrecondition, InvalidArgument
from kvstore.server.core import StoreCore
from kvstore.server.service import _abort
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name

# Starts a graceful drain and returns at once (cli/serve.py sets one on cluster members).
DrainHook = Callable[[], None]


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, core: StoreCore, drain_hook: Callable[[], DrainHook | None]) -> None:
        self.core = core
        self._drain_hook = drain_hook  # read at call time: serve.py sets it after start()
        self._draining = False

    async def Inspect(self, request: pb.InspectRequest, context: Any) -> pb.InspectResponse:
        try:
            return self.inspect(request.keys)
        except Exception as exc:  # every error becomes a status; the node keeps serving
            await _abort(context, exc)
            raise

    async def Evict(self, request: pb.EvictRequest, context: Any) -> pb.EvictResponse:
        try:
            return self.evict(request)
        except Exception as exc:
            await _abort(context, exc)
            raise

    async def Drain(self, request: pb.DrainRequest, context: Any) -> pb.DrainResponse:
        try:
            return self.drain()
        except Exception as exc:
            await _abort(context, exc)
            raise

    # ---- the operations (plain functions of the core; tests call them directly too) -------
    def inspect(self, keys: Any) -> pb.InspectResponse:
        for k in keys:
            if len(k) != 16:
                raise InvalidArgument(f"chunk key must be 16 bytes, got {len(k)}")
        if len(keys) > 4096:
            raise InvalidArgument(f"{len(keys)} keys in one Inspect; at most 4096")
        resp = pb.InspectResponse(node_id=self.core.node_id)
        now = time.time()
        for key, rec in zip(keys, self.core.manager.inspect(keys), strict=True):
            if rec is None:
                resp.chunks.add(key=key, found=False)
                continue
            ns = self.core.stats.namespaces.get(rec.namespace)
            info = rec.info
            resp.chunks.add(
                key=key, found=True, tiers=rec.tiers, payload_bytes=info.payload_bytes,
                codec=info.codec, checksum=info.checksum, dtype=info.dtype, shape=info.shape,
                num_tokens=info.num_tokens, namespace_id=rec.namespace,
                model_id=ns.model_id if ns else "", tenant=ns.tenant if ns else "",
                age_s=max(0.0, now - rec.created), hits=rec.hits)
        return resp

    def evict(self, req: pb.EvictRequest) -> pb.EvictResponse:
        which = req.WhichOneof("selector")
        value = getattr(req, which) if which else ""
        if not value:
            raise InvalidArgument("Evict needs a non-empty model_id, tenant or namespace_id")
        if which == "namespace_id":
            namespaces = [value]
        else:
            field = "model_id" if which == "model_id" else "tenant"
            namespaces = sorted(ns for ns, c in list(self.core.stats.namespaces.items())
                                if getattr(c, field) == value)
        chunks, nbytes = self.core.manager.evict_namespaces(namespaces)
        log.info("admin evict %s=%r: %d chunks, %d bytes from namespaces %s", which, value,
                 chunks, nbytes, namespaces)
        return pb.EvictResponse(node_id=self.core.node_id, chunks=chunks, bytes=nbytes,
                                namespace_ids=namespaces)

    def drain(self) -> pb.DrainResponse:
        hook = self._drain_hook()
        if hook is None:
            raise FailedPrecondition(
                f"node {self.core.node_id} is standalone (not started with --redis-url): there "
                "are no other members to hand its chunks to; stop it with SIGINT/SIGTERM")
        if self._draining:
            raise FailedPrecondition(f"node {self.core.node_id} is already draining")
        self._draining = True
        hook()
        return pb.DrainResponse(node_id=self.core.node_id,
                                message="draining: handing chunks to their new owners, then "
                                        "leaving the cluster and stopping")


__all__ = ["SERVICE_NAME", "AdminServicer", "DrainHook"]
