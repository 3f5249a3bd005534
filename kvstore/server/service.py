"""The gRPC KVStore servicer (grpc.aio): thin, delegating to StoreCore.

Errors from the core (the kvstore.errors hierarchy) become gRPC statuses here and nowhere else;
a stream that fails part-way leaves every chunk committed before the failure stored and never a
partial one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from kvstore.errors import ERROR_METADATA, InvalidArgument, KVStoreError
from kvstore.server.auth import Principal
from kvstore.server.core import StoreCore
from kvstore.server.core import _check_keys as check_keys
from kvstore.server.sessions import Session
from kvstore.tiers.manager import PutReservation
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.wire import info_from_pb, info_to_pb

log = logging.getLogger(__name__)
SESSION_METADATA = "kvstore-session"
T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # already aborted with its status (an undecodable request message)
    if isinstance(exc, KVStoreError):
        context.set_trailing_metadata(((ERROR_METADATA, type(exc).__name__),))
        await context.abort(exc.code, str(exc))
    log.exception("internal error")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _session(core: StoreCore, context: grpc.aio.ServicerContext) -> Session:
    md = dict(context.invocation_metadata() or ())
    session = core.sessions.get(md.get(SESSION_METADATA))
    if core.auth is not None:  # the interceptor let the call in; the session must be the caller's
        session.check_caller(core.auth.authenticate(md))
    return session


def _principal(core: StoreCore, context: grpc.aio.ServicerContext) -> Principal | None:
    """The caller (None = auth off); Unauthenticated if auth is on and the token is bad."""
    if core.auth is None:
        return None
    return core.auth.authenticate(dict(context.invocation_metadata() or ()))


class KVStoreServicer(pb_grpc.KVStoreServicer):
    def __init__(self, core: StoreCore) -> None:
        self.core = core

    async def _unary(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:  # every error becomes a status; the node keeps serving
            await _abort(context, exc)
            raise  # unreachable: abort raises

    async def Handshake(self, request: pb.HandshakeRequest, context: Any) -> pb.HandshakeResponse:
        return await self._unary(context, lambda: self.core.handshake(
            request, _principal(self.core, context)))

    async def Lookup(self, request: pb.LookupRequest, context: Any) -> pb.LookupResponse:
        return await self._unary(
            context, lambda: self.core.lookup(_session(self.core, context), request))

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        return await self._unary(context, lambda: pb.DeleteResponse(
            deleted=self.core.delete(_session(self.core, context), request.keys)))

    async def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        return await self._unary(context, self.core.stats_pb)

    async def Put(self, request_iterator: AsyncIterator[pb.PutRequest],
                  context: Any) -> pb.PutResponse:
        resp = pb.PutResponse()
        res: PutReservation | None = None
        try:
            session = _session(self.core, context)
            pos, started = 0, 0.0
            async for msg in request_iterator:
                if msg.HasField("meta"):
                    if res is not None:
                        _truncated(res, pos)
                    started = time.perf_counter()
                    res = await _reserve(self.core, session, info_from_pb(msg.meta))
                    pos = 0
                elif msg.HasField("data"):
                    if res is None:
                        raise InvalidArgument("data frame before any chunk meta")
                    pos = _write_frame(res, pos, msg.data)
                    if pos == res.info.payload_bytes:
                        tier = await asyncio.to_thread(self.core.finish_put, session, res,
                                                       started)
                        resp.results.add(key=res.info.key, stored=True, tier=tier)
                        res = None
                else:
                    raise InvalidArgument("empty PutRequest: set meta or data")
            if res is not None:
                _truncated(res, pos)
            return resp
        except asyncio.CancelledError:  # the client cancelled or its deadline passed mid-stream
            if res is not None:
                res.abort()  # else its pages stay reserved for good
            raise
        except Exception as exc:
            if res is not None:
                res.abort()
            await _abort(context, exc)
            raise

    async def Get(self, request: pb.GetRequest, context: Any) -> AsyncIterator[pb.GetResponse]:
        try:
            session = _session(self.core, context)
            # the whole batch is refused before a chunk is sent, as in Lookup and Delete
            # (regression: a Get of 500k keys or a bad key at the end was streamed up to there)
            check_keys(request.keys)
            frame = request.frame_bytes or self.core.config.frame_bytes
            frame = min(max(frame, 4096), self.core.config.frame_bytes)
            for key in request.keys:
                lease = await asyncio.to_thread(self.core.get, session, key)
                if lease is None:
                    yield pb.GetResponse(header=pb.GetHeader(key=key, found=False))
                    continue
                with lease:
                    yield pb.GetResponse(header=pb.GetHeader(
                        key=key, found=True, meta=info_to_pb(lease.info), tier=lease.tier))
                    for view in lease.views:
                        for off in range(0, len(view), frame):
                            yield pb.GetResponse(data=bytes(view[off:off + frame]))
        except Exception as exc:
            await _abort(context, exc)


async def _reserve(core: StoreCore, session: Session, info: Any) -> PutReservation:
    """core.begin_put on a worker thread. If the call is cancelled while the thread runs, the
    reservation it returns later is aborted (a cancelled await would drop it and leak its pages).
    """
    fut = asyncio.ensure_future(asyncio.to_thread(core.begin_put, session, info))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_abort_reservation)
        raise


def _abort_reservation(fut: asyncio.Future[PutReservation]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().abort()


def _write_frame(res: PutReservation, pos: int, data: bytes) -> int:
    end = pos + len(data)
    if end > res.info.payload_bytes:
        raise InvalidArgument(f"chunk {res.info.key.hex()}: more data than the declared "
                              f"{res.info.payload_bytes} bytes")
    src = memoryview(data)
    off = 0
    for v in res.views:  # copy into the reserved pages spanning [pos, end)
        if off + len(v) > pos and off < end:
            lo, hi = max(pos, off), min(end, off + len(v))
            v[lo - off:hi - off] = src[lo - pos:hi - pos]
        off += len(v)
    return end


def _truncated(res: PutReservation, pos: int) -> None:
    raise InvalidArgument(f"chunk {res.info.key.hex()} truncated: got {pos} of "
                          f"{res.info.payload_bytes} declared bytes; nothing stored")



class RejectUndecodable(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for request bytes that do not parse as the method's message.

    gRPC parses a request before any servicer code runs and answers a parse error with UNKNOWN
    ("Unexpected DecodeError"), which a client cannot tell from a node bug. A tolerant
    deserializer turns the failure into a value that the wrapped behavior refuses. Applies to
    every service on the server (KVStore, health, reflection).
    """

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _refusing_undecodable(handler)


class _Undecodable:
    def __init__(self, exc: Exception) -> None:
        self.reason = f"request message does not parse: {exc}"


def _refusing_undecodable(h: Any) -> Any:
    parse = h.request_deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            return _Undecodable(exc)

    async def refuse(context: grpc.aio.ServicerContext, msg: _Undecodable) -> None:
        context.set_trailing_metadata(((ERROR_METADATA, InvalidArgument.__name__),))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg.reason)

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for msg in requests:
            if isinstance(msg, _Undecodable):
                await refuse(context, msg)
            yield msg

    async def run(behavior: Any, request: Any, context: Any) -> Any:
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    async def unary_unary(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            await refuse(context, request)
        return await run(h.unary_unary, request, context)

    async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await refuse(context, request)
        result = h.unary_stream(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):  # a behavior that writes with context.write
            await result

    async def stream_unary(requests: Any, context: Any) -> Any:
        return await run(h.stream_unary, checked(requests, context), context)

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        result = h.stream_stream(checked(requests, context), context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):
            await result

    kinds = {"unary_unary": unary_unary, "unary_stream": unary_stream,
             "stream_unary": stream_unary, "stream_stream": stream_stream}
    return h._replace(request_deserializer=deserialize,
                      **{k: fn for k, fn in kinds.items() if getattr(h, k) is not None})
