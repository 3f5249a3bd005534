"""StoreCore: the operations both transports (gRPC and the bulk data plane) delegate to.

It applies the per-session checks (dtype, codec), records statistics, and calls the TierManager.
Transports only move bytes and translate errors.

Isolation (docs/SECURITY.md): every data call is scoped to its session's namespace, so a chunk of
another namespace is a miss for get/lookup/prefetch/delete on both transports, and a put never
replaces it. Who may open a session on which namespace is decided at Handshake (sessions.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kvstore import __version__
from kvstore.chunk import IDENTITY, ChunkInfo
from kvstore.config import NodeConfig
from kvstore.errors import InvalidArgument
from kvstore.server.auth import Principal, TokenTable
from kvstore.server.sessions import Session, SessionTable
from kvstore.server.stats import NamespaceCounters, NodeStats
from kvstore.tiers.manager import Lease, PutReservation, TierManager
from kvstore.v1 import kvstore_pb2 as pb

RAW_BYTES_DTYPE = "uint8"  # opaque payloads a client stores as bytes


class StoreCore:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.resolved_node_id
        self.manager = TierManager(config)
        self.stats = NodeStats()
        self.sessions = SessionTable(config.models, tenants=config.tenants)
        # None = auth off (the embedded local default): no tokens, every tenant open to all
        self.auth = TokenTable(config.auth_tokens_file) if config.auth_tokens_file else None
        self.data_port = 0  # set by the data plane once it listens
        # the CPU tier's /dev/shm file when shared_memory is on (kvstore/tiers/shm.py)
        self.shm = next((t.shm for t in self.manager.mem_tiers if t.shm is not None), None)

    def handshake(self, req: pb.HandshakeRequest,
                  principal: Principal | None = None) -> pb.HandshakeResponse:
        s = self.sessions.open(req.scheme, principal)
        self.stats.namespace(s.namespace_id, s.scheme.model_id, s.scheme.tenant)
        return pb.HandshakeResponse(
            session_id=s.session_id, node_id=self.node_id, namespace_id=s.namespace_id,
            data_port=self.data_port, max_chunk_bytes=self.config.max_chunk_bytes,
            frame_bytes=self.config.frame_bytes, server_version=__version__,
            shm_path=self.shm.path if self.shm else "")

    def begin_put(self, session: Session, info: ChunkInfo) -> PutReservation:
        try:
            session.check_writable()
            self._check_chunk(session, info)
            return self.manager.reserve(info, session.namespace_id, session.tenant)
        except Exception:
            self.stats.record_rejected()
            raise

    def finish_put(self, session: Session, res: PutReservation, started: float) -> str:
        try:
            tier = res.commit()
        except Exception:
            self.stats.record_rejected()
            raise
        self.stats.record_put(session.namespace_id, res.info.payload_bytes,
                              time.perf_counter() - started)
        return tier

    def _check_chunk(self, session: Session, info: ChunkInfo) -> None:
        info.validate(self.config.max_chunk_bytes)
        want = session.scheme.kv_dtype
        if info.dtype not in (want, RAW_BYTES_DTYPE):
            raise InvalidArgument(f"chunk dtype {info.dtype!r} differs from the session's kv_dtype "
                                  f"{want!r} (or 'uint8' for raw bytes)")
        if info.codec != IDENTITY:
            from kvstore.codecs import validate  # only nodes that see encoded chunks load codecs

            validate(info.codec, info.codec_params, info.dtype, info.shape, info.payload_bytes)

    def get(self, session: Session, key: bytes) -> Lease | None:
        started = time.perf_counter()
        if len(key) != 16:
            raise InvalidArgument(f"chunk key must be 16 bytes, got {len(key)}")
        lease = self.manager.get(key, session.namespace_id)
        nbytes = lease.info.payload_bytes if lease else 0
        self.stats.record_get(session.namespace_id, lease is not None, nbytes,
                              time.perf_counter() - started)
        return lease

    def lookup(self, session: Session, req: pb.LookupRequest) -> pb.LookupResponse:
        started = time.perf_counter()
        _check_keys(req.keys)
        entries = self.manager.lookup(req.keys, session.namespace_id)
        resp = pb.LookupResponse()
        run_open = True
        for key, e in zip(req.keys, entries, strict=True):
            resp.locations.add(key=key, found=e is not None, tier=e.tier if e else "",
                               payload_bytes=e.info.payload_bytes if e else 0,
                               node_id=self.node_id)
            run_open = run_open and e is not None
            resp.prefix_hits += run_open
        if req.prefetch or req.prefetch_next:
            hits = [k for k, e in zip(req.keys, entries, strict=True) if e is not None]
            self.manager.prefetch(hits if req.prefetch else hits[-1:], req.prefetch_next,
                                  session.namespace_id)
        found = sum(e is not None for e in entries)
        self.stats.record_lookup(session.namespace_id, found, len(entries) - found,
                                 time.perf_counter() - started)
        return resp

    def delete(self, session: Session, keys: Sequence[bytes]) -> int:
        _check_keys(keys)
        session.check_writable()
        return self.manager.delete(keys, session.namespace_id)

    def stats_pb(self) -> pb.StatsResponse:
        s, m = self.stats, self.manager
        resp = pb.StatsResponse(
            node_id=self.node_id, hits=s.hits, misses=s.misses, bytes_in=s.bytes_in,
            bytes_out=s.bytes_out, puts=s.puts, rejected=s.rejected, prefetches=m.prefetches,
            uptime_s=time.monotonic() - s.started, lookup_keys=s.lookup_hits + s.lookup_misses,
            lookup_hits=s.lookup_hits, lookup_misses=s.lookup_misses)
        for name, cap, used, chunks in m.tier_usage():
            c = m.counters[name]
            resp.tiers.add(name=name, capacity_bytes=cap, used_bytes=used, chunks=chunks,
                           hits=c.hits, evictions=c.evictions, demotions_in=c.demotions_in,
                           promotions_out=c.promotions_out, corrupt_dropped=c.corrupt_dropped)
        for op, count, p50, p99 in s.latency_percentiles():
            resp.latencies.add(op=op, count=count, p50_ms=p50, p99_ms=p99)
        usage = m.namespace_usage()
        for ns, nc in sorted({**dict.fromkeys(usage), **s.namespaces}.items()):
            nc = nc or NamespaceCounters()  # chunks restored from disk, namespace not seen yet
            chunks, used = usage.get(ns, (0, 0))
            resp.namespaces.add(namespace_id=ns, model_id=nc.model_id, tenant=nc.tenant,
                                hits=nc.hits, misses=nc.misses, bytes_in=nc.bytes_in,
                                bytes_out=nc.bytes_out, used_bytes=used, chunks=chunks,
                                lookup_keys=nc.lookup_hits + nc.lookup_misses,
                                lookup_hits=nc.lookup_hits, lookup_misses=nc.lookup_misses)
        tenants: dict[str, pb.TenantStats] = {}
        for n in resp.namespaces:  # per tenant = its namespaces added up (admin stats, metrics)
            t = tenants.setdefault(n.tenant, pb.TenantStats(tenant=n.tenant))
            t.hits += n.hits
            t.misses += n.misses
            t.bytes_in += n.bytes_in
            t.bytes_out += n.bytes_out
            t.used_bytes += n.used_bytes
            t.chunks += n.chunks
            t.lookup_keys += n.lookup_keys
            t.lookup_hits += n.lookup_hits
            t.lookup_misses += n.lookup_misses
        resp.tenants.extend(tenants[k] for k in sorted(tenants))
        return resp

    def close(self) -> None:
        self.manager.close()
        for tier in self.manager.mem_tiers:
            tier.close()  # unlinks a shared-memory file


def _check_keys(keys: Sequence[bytes]) -> None:
    for k in keys:
        if len(k) != 16:
            raise InvalidArgument(f"chunk key must be 16 bytes, got {len(k)}")
    if len(keys) > 65536:
        raise InvalidArgument(f"{len(keys)} keys in one call; at most 65536")
