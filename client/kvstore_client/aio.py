"""AsyncKVStoreClient: the asyncio core of the client library (KVStoreClient wraps it).

Every call has a deadline; UNAVAILABLE is retried with backoff (unary RPCs by gRPC's own retry
policy in the channel's service config, streams and the data plane by RetryPolicy); a node that
forgot our session (it restarted) gets a fresh Handshake transparently. Chunk payloads use the
node's bulk data plane when it offers one, else gRPC streams.

Buffers: tensors returned by get_many own their memory (fresh allocations the payload was
received into); tensors given to put_many are only read during the call.

Codecs (kvstore/codecs): put_many(codec=...) encodes before sending, so only the encoded bytes
cross the wire, and get_many decodes chunks stored with a codec (the ones a node re-encoded on
demotion too) after the transfer, lossy ones on ``device``. Identity chunks take the plain path.

Security (``security``, default ``ClientSecurity.from_env()``: KVSTORE_TOKEN, KVSTORE_TLS_CA...):
the token goes with every call, including Handshake and Stats; with ``tls_ca`` the gRPC channel
and the data plane use TLS (with a client certificate for mutual TLS). docs/SECURITY.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import torch

from kvstore.chunk import IDENTITY, checksum
from kvstore.errors import (
    ERROR_METADATA,
    DeadlineExceeded,
    InvalidArgument,
    KVStoreError,
    SessionRequired,
    Unavailable,
    error_for_status,
)
from kvstore.keys import KeyScheme, validate_key
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.wire import scheme_to_pb
from kvstore_client.dataplane import ConnectionPool, DataConnection
from kvstore_client.gather import PENDING, Decoded, Gather
from kvstore_client.retry import RetryPolicy
from kvstore_client.security import (
    ClientSecurity,
    auth_metadata,
    connect_hint,
    open_channel,
    server_hostname,
    ssl_context,
)
from kvstore_client.shm import SharedMemoryMapping
from kvstore_client.shm import fetch as shm_fetch
from kvstore_client.tensors import BytesLike, as_bytes_view, empty_for, view_as

log = logging.getLogger(__name__)
T = TypeVar("T")
SESSION_METADATA = "kvstore-session"
_UNARY = ("Handshake", "Lookup", "Delete", "Stats")
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "kvstore.v1.KVStore", "method": m} for m in _UNARY],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


@dataclass(frozen=True)
class ClientOptions:
    deadline_s: float = 30.0           # per call, unless the call passes its own
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    use_data_plane: bool = True
    verify_checksums: bool = True      # end-to-end check of every payload received
    max_connections: int = 4           # data-plane connections per node
    client_name: str = "kvstore-client"
    use_shared_memory: bool = True     # local node with a shm CPU tier: copy out of it (shm.py)
    # Shared memory is the node's own memory: its bytes were checked when they reached the node
    # (put) or left its disk, and no transport touched them since. Checking them again costs
    # ~0.1 s per GiB on the hot path (xxh3 on one core), so it is off unless asked for.
    verify_shared_memory: bool = False


@dataclass(frozen=True)
class LookupResult:
    found: list[bool]
    tiers: list[str]
    payload_bytes: list[int]
    prefix_hits: int


class AsyncKVStoreClient:
    def __init__(self, address: str, scheme: KeyScheme, options: ClientOptions | None = None,
                 security: ClientSecurity | None = None):
        self.address = address
        self.scheme = scheme
        self.options = options or ClientOptions()
        self.security = security if security is not None else ClientSecurity.from_env()
        self._auth = auth_metadata(self.security)
        self._ssl = ssl_context(self.security)  # data plane; None = plaintext
        self._channel = open_channel(address, self.security, options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ])
        self._stub = pb_grpc.KVStoreStub(self._channel)
        self.session: pb.HandshakeResponse | None = None
        self._pool: ConnectionPool | None = None
        self.corrupt_received = 0
        self._shm: SharedMemoryMapping | None = None
        self.shm_gets = 0  # chunks copied out of the node's shared memory

    @classmethod
    async def connect(cls, address: str, scheme: KeyScheme,
                      security: ClientSecurity | None = None, **options: object
                      ) -> AsyncKVStoreClient:
        client = cls(address, scheme, ClientOptions(**options),  # type: ignore[arg-type]
                     security)
        try:
            await client.handshake()
        except BaseException:
            await client.close()
            raise
        return client

    # ---- plumbing --------------------------------------------------------------------------
    async def handshake(self) -> pb.HandshakeResponse:
        req = pb.HandshakeRequest(scheme=scheme_to_pb(self.scheme),
                                  client_name=self.options.client_name)
        try:
            session: pb.HandshakeResponse = await self._rpc(
                lambda md, t: self._stub.Handshake(req, metadata=md, timeout=t), session=False)
        except Unavailable as exc:
            raise Unavailable(f"{exc} ({connect_hint(self.security)})") from None
        self.session = session
        if self._pool:
            self._pool.close()
        self._pool = None
        if self.options.use_data_plane and session.data_port:
            host = self.address.rsplit(":", 1)[0].strip("[]")
            self._pool = ConnectionPool(host, session.data_port, lambda: self.session_id,
                                        self.options.max_connections, self._ssl,
                                        server_hostname(self.security, host))
        self._attach_shm(session)
        return session

    def _attach_shm(self, session: pb.HandshakeResponse) -> None:
        if self._shm is not None and self._shm.path == session.shm_path:
            return
        if self._shm is not None:
            self._shm.close()
        self._shm = (SharedMemoryMapping.attach(self.address.rsplit(":", 1)[0].strip("[]"),
                                                session.shm_path)
                     if self._pool is not None and self.options.use_shared_memory else None)

    @property
    def session_id(self) -> str:
        return self.session.session_id if self.session else ""

    def _metadata(self, session: bool = True) -> tuple[tuple[str, str], ...]:
        return ((SESSION_METADATA, self.session_id), *self._auth) if session else self._auth

    async def _rpc(self, call: Callable[[tuple[tuple[str, str], ...], float], Awaitable[T]],
                   session: bool = True, deadline_s: float | None = None) -> T:
        """Run one gRPC call: deadline, status -> kvstore error, one re-handshake if needed."""
        timeout = deadline_s or self.options.deadline_s
        for attempt in (0, 1):
            try:
                return await call(self._metadata(session), timeout)
            except grpc.aio.AioRpcError as exc:
                name = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA, "")
                err = error_for_status(exc.code(), exc.details() or "", str(name))
                if isinstance(err, SessionRequired) and session and attempt == 0:
                    await self.handshake()
                    continue
                raise err from None
        raise AssertionError("unreachable")

    async def _data(self, op: Callable[[DataConnection], Awaitable[T]],
                    deadline_s: float | None) -> T:
        """Run ``op`` on a pooled data-plane connection with a deadline and retries."""
        timeout = deadline_s or self.options.deadline_s

        async def attempt() -> T:
            pool = self._pool  # release to the pool we acquired from, even if a re-handshake
            assert pool is not None  # replaced self._pool meanwhile
            try:
                # the deadline covers acquire too: opening a connection waits for HELLO's reply
                async with asyncio.timeout(timeout):
                    conn = await pool.acquire()
                    healthy = False
                    try:
                        result = await op(conn)
                        healthy = True
                        return result
                    finally:
                        pool.release(conn, healthy)
            except TimeoutError:
                raise DeadlineExceeded(f"data-plane call to {self.address} exceeded its "
                                       f"{timeout:.3g} s deadline") from None

        try:
            return await self.options.retry.run(attempt)
        except SessionRequired:
            await self.handshake()
            return await self.options.retry.run(attempt)

    # ---- put -------------------------------------------------------------------------------
    async def put_many(self, keys: Sequence[bytes], tensors: Sequence[torch.Tensor | BytesLike],
                       *, parent_keys: Sequence[bytes | None] | None = None,
                       start_pos: Sequence[int] | None = None,
                       num_tokens: Sequence[int] | None = None,
                       codec: str | None = None, codec_params: Mapping[str, str] | None = None,
                       deadline_s: float | None = None) -> list[bool]:
        """Store chunks; returns stored flags in order. Raises on a refused chunk.

        ``codec`` (e.g. "fp8-e4m3", "kivi-int4"; README of kvstore/codecs) encodes each tensor
        with kvstore.codecs.encode before sending, on the tensor's device (a GPU tensor is
        quantized on the GPU and only the encoded bytes are copied to the host), with
        ``codec_params`` (e.g. {"group_size": "64"}); the chunk keeps the tensor's dtype and
        shape as its decoded dtype and shape. None or "identity" sends the tensor's own bytes.
        """
        if len(keys) != len(tensors):
            raise InvalidArgument(f"{len(keys)} keys but {len(tensors)} payloads")
        if not keys:
            return []
        if codec in (None, "", IDENTITY):
            if codec_params:
                raise InvalidArgument(f"codec_params {dict(codec_params)} without a codec")
            codec = None
        items = []
        for i, (key, data) in enumerate(zip(keys, tensors, strict=True)):
            if codec is None:
                view, dtype, shape, owner = as_bytes_view(data)
                name, params = IDENTITY, None
            else:
                view, dtype, shape, owner, name, params = _encoded(data, codec, codec_params)
            meta = pb.ChunkMeta(
                key=key, dtype=dtype, shape=shape, payload_bytes=len(view),
                checksum=checksum([view]), codec=name,
                parent_key=(parent_keys[i] or b"") if parent_keys else b"",
                start_pos=start_pos[i] if start_pos else 0,
                num_tokens=num_tokens[i] if num_tokens else 0)
            if params:
                meta.codec_params.update(params)
            items.append((meta, view, owner))
        if self._pool is not None:
            groups = _split(items, self.options.max_connections)

            async def put_group(group: list) -> list[bool]:
                async def op(conn: DataConnection) -> list[bool]:
                    return [bool(await conn.put(meta, view)) for meta, view, _ in group]
                return await self._data(op, deadline_s)
            results = await asyncio.gather(*(put_group(g) for g in groups))
            return [r for group in results for r in group]
        return await self._put_grpc(items, deadline_s)

    async def _put_grpc(self, items: list, deadline_s: float | None) -> list[bool]:
        frame = (self.session.frame_bytes if self.session else 0) or (1 << 20)

        async def requests() -> AsyncIterator[pb.PutRequest]:
            for meta, view, _ in items:
                yield pb.PutRequest(meta=meta)
                for off in range(0, len(view), frame):
                    yield pb.PutRequest(data=bytes(view[off:off + frame]))

        async def call(md: tuple, t: float) -> list[bool]:
            resp = await self._stub.Put(requests(), metadata=md, timeout=t)
            return [r.stored for r in resp.results]
        return await self.options.retry.run(lambda: self._rpc(call, deadline_s=deadline_s))

    # ---- get -------------------------------------------------------------------------------
    async def get_many(self, keys: Sequence[bytes], *, out: Sequence[torch.Tensor] | None = None,
                       decode: bool = True, device: str | torch.device | None = None,
                       deadline_s: float | None = None) -> list[torch.Tensor | None]:
        """Chunks as tensors with the dtype and shape they were put with; None for a miss.

        With ``out`` (one contiguous CPU tensor per key, e.g. a reused pinned staging buffer),
        payloads are received straight into those buffers and the results are views of them;
        otherwise each hit gets a freshly allocated tensor.

        Chunks stored with a codec (put with one, or re-encoded by the node's tier_codecs) are
        decoded after the transfer: lossy ones are moved to ``device`` (e.g. the worker's GPU)
        as encoded bytes and dequantized there, so the result is a new tensor of the original
        dtype and shape, not a view of ``out`` (which receives the stored, encoded bytes).
        ``device`` also moves identity chunks (default: stay on the host, zero-copy); over the
        plain TCP data plane a GPU ``device`` receives through a pinned staging ring, copying to
        the GPU while the rest arrives. With ``decode=False`` a codec'd chunk is returned as its
        raw payload, a 1-D uint8 tensor.
        """
        results, error = await self.get_many_partial(keys, out=out, decode=decode,
                                                     device=device, deadline_s=deadline_s)
        if error is not None:
            raise error
        return results  # type: ignore[return-value]

    async def get_many_partial(self, keys: Sequence[bytes], *,
                               out: Sequence[torch.Tensor] | None = None, decode: bool = True,
                               device: str | torch.device | None = None,
                               deadline_s: float | None = None
                               ) -> tuple[list[torch.Tensor | None | object], KVStoreError | None]:
        """As get_many, but a failure returns (results so far, the error) instead of raising:
        keys whose chunk never arrived are ``PENDING`` (kvstore_client.gather); chunks that did
        are kept, so a caller can fetch only the rest elsewhere (the cluster client fails over
        that way). Invalid arguments still raise."""
        dev = torch.device(device) if device is not None else None
        if (out is None and dev is not None and dev.type == "cuda"
                and self._shm is not None and self._shm.registered and self._pool is not None):
            for key in keys:
                validate_key(key)
            raws = await self._get_shm(keys, None, deadline_s, dev)
            return [None if r is None else _as_tensor(r[0], r[1], decode, device)
                    for r in raws], None
        pool = self._pool
        if (pool is not None and pool.threaded is not None and self._shm is None
                and keys):
            finish = (lambda m, r: _as_tensor(m, r, True, device)) if decode else None
            raw_results, error = await self._get_threaded(keys, out, dev, deadline_s, finish)
        else:
            raw_results, error = await self._get_raw(keys, out, deadline_s), None
        return [r if r is None or r is PENDING else r.tensor if isinstance(r, Decoded) else
                _as_tensor(r[0], r[1], decode, device)  # type: ignore[index]
                for r in raw_results], error

    async def _get_threaded(self, keys: Sequence[bytes], out: Sequence[torch.Tensor] | None,
                            device: torch.device | None, deadline_s: float | None,
                            finish: Callable | None = None
                            ) -> tuple[list, KVStoreError | None]:
        """GET over the threaded receiver: keys split over up to max_connections connections,
        each drained by its own thread; a failed connection's remaining keys are retried."""
        for key in keys:  # the data plane frames keys as 16-byte records: check before sending
            validate_key(key)
        if out is not None and len(out) != len(keys):
            raise InvalidArgument(f"{len(keys)} keys but {len(out)} output buffers")
        buffers = [_byte_buffer(t) for t in out] if out is not None else None
        sink = Gather(len(keys), buffers, device, finish)
        timeout = deadline_s or self.options.deadline_s
        end = time.monotonic() + timeout
        verify = self.options.verify_checksums

        async def share(idx: list[int]) -> None:
            async def attempt() -> None:
                left = sink.pending(idx)
                pool = self._pool
                if not left or pool is None or pool.threaded is None:
                    return
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"data-plane call to {self.address} exceeded its "
                                           f"{timeout:.3g} s deadline")
                await pool.threaded.run([bytes(keys[i]) for i in left], left, sink, verify,
                                        remaining)
            try:
                await self.options.retry.run(attempt)
            except SessionRequired:
                await self.handshake()
                await self.options.retry.run(attempt)

        groups = _split(list(range(len(keys))), self.options.max_connections)
        try:
            async with asyncio.timeout(timeout):
                outcomes = await asyncio.gather(*(share(g) for g in groups),
                                                return_exceptions=True)
        except TimeoutError:
            outcomes = [DeadlineExceeded(f"data-plane call to {self.address} exceeded its "
                                         f"{timeout:.3g} s deadline")]
        if sink.corrupt:
            self.corrupt_received += len(sink.corrupt)
            log.warning("%d chunk(s) failed their checksum after transfer; treated as misses "
                        "(first: %s)", len(sink.corrupt), sink.corrupt[0].hex())
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        for e in errors:
            if not isinstance(e, KVStoreError):
                raise e  # a bug or invalid argument, not a transport failure
        return sink.results, (errors[0] if errors else None)  # type: ignore[return-value]

    async def get_bytes_many(self, keys: Sequence[bytes], *,
                             deadline_s: float | None = None) -> list[memoryview | None]:
        raws = await self._get_raw(keys, None, deadline_s)
        return [None if r is None else r[1].numpy().data for r in raws]

    async def _get_raw(self, keys: Sequence[bytes], out: Sequence[torch.Tensor] | None,
                       deadline_s: float | None
                       ) -> list[tuple[pb.ChunkMeta, torch.Tensor] | None]:
        if not keys:
            return []
        for key in keys:  # the data plane frames keys as 16-byte records: check before sending
            validate_key(key)
        if out is not None and len(out) != len(keys):
            raise InvalidArgument(f"{len(keys)} keys but {len(out)} output buffers")
        buffers = [_byte_buffer(t) for t in out] if out is not None else None

        def receive_buffer(index: int, meta: pb.ChunkMeta) -> tuple[torch.Tensor, memoryview]:
            if buffers is None:
                return empty_for(meta.dtype, meta.shape, meta.payload_bytes)
            buf = buffers[index]
            if buf.numel() < meta.payload_bytes:
                raise InvalidArgument(f"output buffer {index} holds {buf.numel()} bytes; chunk "
                                      f"{meta.key.hex()} needs {meta.payload_bytes}")
            raw = buf[:meta.payload_bytes]
            return raw, raw.numpy().data

        if self._shm is not None and self._pool is not None:
            return await self._get_shm(keys, receive_buffer, deadline_s)
        if self._pool is not None:
            groups = _split(list(enumerate(keys)), self.options.max_connections)

            async def get_group(group: list[tuple[int, bytes]]) -> list:
                async def op(conn: DataConnection) -> list:
                    bufs: list[torch.Tensor] = []
                    pending = iter(i for i, _ in group)

                    def alloc(meta: pb.ChunkMeta) -> memoryview:
                        index = next(pending)
                        while bytes(keys[index]) != meta.key:  # misses in between
                            index = next(pending)
                        raw, view = receive_buffer(index, meta)
                        bufs.append(raw)
                        return view
                    metas = await conn.get([k for _, k in group], alloc)
                    it = iter(bufs)
                    return [None if m is None else (m, next(it)) for m in metas]
                return await self._data(op, deadline_s)
            results = await asyncio.gather(*(get_group(g) for g in groups))
            raws = [r for group in results for r in group]
        else:
            raws = await self.options.retry.run(
                lambda: self._rpc(lambda md, t: self._get_grpc(keys, receive_buffer, md, t),
                                  deadline_s=deadline_s))
        return [self._verified(r) for r in raws]

    async def _get_shm(self, keys: Sequence[bytes], receive_buffer: Callable | None,
                       deadline_s: float | None, device: torch.device | None = None
                       ) -> list[tuple[pb.ChunkMeta, torch.Tensor] | None]:
        """One GET_SHM round on one connection: copies out of the node's shared memory."""
        shm = self._shm
        assert shm is not None

        async def op(conn: DataConnection) -> tuple[list, int, int, list[int]]:
            return await shm_fetch(conn, shm, keys, receive_buffer, device,
                                   self.options.verify_shared_memory)
        raws, copied, corrupt, over_tcp = await self._data(op, deadline_s)
        self.shm_gets += copied
        if corrupt:
            self.corrupt_received += corrupt
            log.warning("%d chunk(s) failed their checksum in shared memory; treated as misses",
                        corrupt)
        check = set(over_tcp) if not self.options.verify_shared_memory else set(range(len(raws)))
        return [self._verified(r) if i in check and r is not None and r[1].device.type == "cpu"
                else r for i, r in enumerate(raws)]

    async def _get_grpc(self, keys: Sequence[bytes], receive_buffer: Callable, md: tuple,
                        timeout: float) -> list:
        out: list[tuple[pb.ChunkMeta, torch.Tensor] | None] = []
        view: memoryview | None = None
        pos = 0
        async for msg in self._stub.Get(pb.GetRequest(keys=keys), metadata=md, timeout=timeout):
            if msg.HasField("header"):
                if not msg.header.found:
                    out.append(None)
                    continue
                raw, view = receive_buffer(len(out), msg.header.meta)
                out.append((msg.header.meta, raw))
                pos = 0
            else:
                assert view is not None
                view[pos:pos + len(msg.data)] = msg.data
                pos += len(msg.data)
        return out

    def _verified(self, r: tuple[pb.ChunkMeta, torch.Tensor] | None
                  ) -> tuple[pb.ChunkMeta, torch.Tensor] | None:
        if r is None or not self.options.verify_checksums:
            return r
        if checksum([r[1].numpy().data]) != r[0].checksum:
            self.corrupt_received += 1
            log.warning("chunk %s failed its checksum after transfer; treated as a miss",
                        r[0].key.hex())
            return None
        return r

    # ---- control ---------------------------------------------------------------------------
    async def lookup(self, keys: Sequence[bytes], *, prefetch: bool = False,
                     prefetch_next: int = 0, deadline_s: float | None = None) -> LookupResult:
        req = pb.LookupRequest(keys=keys, prefetch=prefetch, prefetch_next=prefetch_next)
        resp = await self._rpc(lambda md, t: self._stub.Lookup(req, metadata=md, timeout=t),
                               deadline_s=deadline_s)
        locs = resp.locations
        return LookupResult([x.found for x in locs], [x.tier for x in locs],
                            [x.payload_bytes for x in locs], resp.prefix_hits)

    async def delete_many(self, keys: Sequence[bytes], *, deadline_s: float | None = None) -> int:
        req = pb.DeleteRequest(keys=keys)
        resp = await self._rpc(lambda md, t: self._stub.Delete(req, metadata=md, timeout=t),
                               deadline_s=deadline_s)
        return resp.deleted

    async def stats(self, *, deadline_s: float | None = None) -> pb.StatsResponse:
        return await self._rpc(
            lambda md, t: self._stub.Stats(pb.StatsRequest(), metadata=md, timeout=t),
            session=False, deadline_s=deadline_s)

    async def put(self, key: bytes, data: torch.Tensor | BytesLike, **kw: object) -> bool:
        return (await self.put_many([key], [data], **kw))[0]  # type: ignore[arg-type]

    async def get(self, key: bytes, **kw: object) -> torch.Tensor | None:
        return (await self.get_many([key], **kw))[0]  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._pool:
            self._pool.close()
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        await self._channel.close()

    async def __aenter__(self) -> AsyncKVStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _encoded(data: torch.Tensor | BytesLike, codec: str, params: Mapping[str, str] | None
             ) -> tuple[memoryview, str, tuple[int, ...], torch.Tensor, str, dict[str, str]]:
    """(byte view, decoded dtype, decoded shape, owner, codec, codec_params) of an encoded
    tensor; the owner (the host payload) must stay alive while the view is sent."""
    from kvstore.codecs import encode  # kernels load only for clients that use codecs

    if not isinstance(data, torch.Tensor):
        raise InvalidArgument(f"codec {codec!r} encodes tensors, got {type(data).__name__}")
    enc = encode(data, codec, **dict(params or {}))
    payload = enc.payload.cpu()  # a GPU tensor is encoded there; only the encoded bytes move
    return (payload.numpy().data, enc.dtype, tuple(enc.shape), payload, enc.codec,
            dict(enc.codec_params))


def _as_tensor(meta: pb.ChunkMeta, raw: torch.Tensor, decode: bool,
               device: str | torch.device | None) -> torch.Tensor:
    if meta.codec in ("", IDENTITY):
        t = view_as(raw, meta.dtype or "uint8", meta.shape)
        return t if device is None else t.to(device)
    if not decode:
        return raw
    from kvstore.codecs import decode as decode_chunk

    return decode_chunk(raw, meta.codec, dict(meta.codec_params), meta.dtype or "uint8",
                        tuple(meta.shape), device=device)


def _byte_buffer(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu" or not t.is_contiguous():
        raise InvalidArgument("output buffers must be contiguous CPU tensors (pinned is best)")
    return t.reshape(-1).view(torch.uint8)


def _split(items: list, parts: int) -> list[list]:
    """Contiguous slices of ``items`` for up to ``parts`` parallel connections."""
    parts = max(1, min(parts, len(items)))
    size = -(-len(items) // parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


__all__ = ["AsyncKVStoreClient", "ClientOptions", "KVStoreError", "LookupResult"]
