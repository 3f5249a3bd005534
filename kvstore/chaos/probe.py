"""Direct clients to single nodes: the system's own view (Stats, Lookup, Get), for checking the
fault log against it. ``direct=True`` dials the node's own address, past its proxies, so a node
whose link is cut can still be asked; ``direct=False`` goes the way every client goes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from kvstore.chaos.cluster import ChaosNode
from kvstore.chaos.loadgen import SCHEME
from kvstore.errors import KVStoreError
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client import KVStoreClient
from kvstore_client.retry import NO_RETRY


class Probe:
    def __init__(self, deadline_s: float = 3.0) -> None:
        self.deadline_s = deadline_s
        self._clients: dict[str, KVStoreClient] = {}

    def client(self, node: ChaosNode, direct: bool = True) -> KVStoreClient:
        address = node.direct_address if direct else node.node_id
        c = self._clients.get(address)
        if c is None:
            c = KVStoreClient(address, SCHEME, deadline_s=self.deadline_s, retry=NO_RETRY,
                              client_name="kvstore-chaos-probe")
            self._clients[address] = c
        return c

    def stats(self, node: ChaosNode) -> pb.StatsResponse:
        return self.client(node).stats(deadline_s=self.deadline_s)

    def settled_stats(self, node: ChaosNode, quiet_s: float = 0.5, timeout_s: float = 10.0
                      ) -> tuple[pb.StatsResponse, pb.StatsResponse, float]:
        """(first, settled, seconds): Stats now, and once ``puts`` and ``bytes_in`` held still
        for ``quiet_s``. After a cut, what had crossed before it may still sit in the node's
        socket buffers or be mid-commit, and is counted when it finishes: a baseline for "nothing
        arrived while cut" is the settled one. Raises TimeoutError if they never settle."""
        t0 = time.monotonic()
        first = last = self.stats(node)
        since = t0
        while True:
            time.sleep(0.1)  # the poll interval of a condition with its own deadline below
            st, now = self.stats(node), time.monotonic()
            if (st.puts, st.bytes_in) != (last.puts, last.bytes_in):
                last, since = st, now
            elif now - since >= quiet_s:
                return first, last, now - t0
            if now - t0 > timeout_s:
                raise TimeoutError(f"{node.node_id}'s put counters still moving after "
                                   f"{timeout_s} s")

    def tier(self, node: ChaosNode, name: str) -> pb.TierStats:
        return next(t for t in self.stats(node).tiers if t.name == name)

    def lookup_count(self, node: ChaosNode) -> int:
        return next(x.count for x in self.stats(node).latencies if x.op == "lookup")

    def holders(self, node: ChaosNode, keys: Sequence[bytes]) -> dict[bytes, str]:
        """key -> tier on this node, for the keys it holds."""
        res = self.client(node).lookup(list(keys))
        return {k: t for k, f, t in zip(keys, res.found, res.tiers, strict=True) if f}

    def rtt_s(self, node: ChaosNode, direct: bool, n: int = 5) -> float:
        """Median seconds of a one-key Lookup (inf if any call failed)."""
        times = []
        try:
            c = self.client(node, direct)
            for _ in range(n):
                t0 = time.monotonic()
                c.lookup([bytes(16)], deadline_s=self.deadline_s)
                times.append(time.monotonic() - t0)
        except KVStoreError:
            return float("inf")
        return statistics.median(times)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
