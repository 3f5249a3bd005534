"""A verifying load generator: mixed put/get/lookup through an AsyncClusterClient.

Every payload is a function of its key (``payload(key)``: the key itself, then SHAKE-128 of the
key), so any byte a read returns can be checked without remembering what was written, and a chunk
served under the wrong key is caught too. Keys come from three pools:

    stable   written before the faults and checked to be on both candidates (R=2): reads of
             these measure availability while a node is down
    churn    a bounded pool that workers keep (re)writing and reading
    absent   never written: a lookup that finds one is a phantom (counted as wrong)

Every key read or looked up is one ``Record`` (start time, duration, op, outcome, pool), so any
time window can be summarized afterwards (``summary(t0, t1)``). Outcomes: ok, miss (None for a
key we stored), error (the call raised), wrong (bytes differ: must never happen).

The generator runs ``workers`` coroutines on its own event loop thread; ``call`` runs other
coroutines (stats, lookups) on that loop with the same client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from kvstore.errors import KVStoreError
from kvstore.keys import KeyScheme
from kvstore_client.aio import ClientOptions
from kvstore_client.cluster import AsyncClusterClient
from kvstore_client.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")
SCHEME = KeyScheme(model_id="kvstore-chaos", kv_dtype="float16")
STABLE, CHURN, ABSENT, COLD = "stable", "churn", "absent", "cold"
OUTCOMES = ("ok", "miss", "error", "wrong")


def chunk_key(pool: str, i: int, seed: int = 0) -> bytes:
    return hashlib.blake2b(f"{seed}:{pool}:{i}".encode(), digest_size=16).digest()


def payload(key: bytes) -> bytes:
    """1-12 KiB, determined by the key and starting with it."""
    size = 1024 * (1 + key[0] % 12)
    return key + hashlib.shake_128(key).digest(size - len(key))


class Record(NamedTuple):
    start: float      # time.monotonic() when the call began
    seconds: float
    op: str           # get | put | lookup
    outcome: str      # ok | miss | error | wrong
    pool: str


@dataclass(frozen=True)
class Summary:
    ops: int                      # calls (a batch is one call)
    counts: dict[str, int]        # "op.outcome" and "op.pool.outcome" -> keys
    wrong: int
    stable_reads: int
    stable_ok: int
    max_call_s: float             # the slowest call: a client must never hang past its deadline

    @property
    def availability(self) -> float:
        """Share of stable (R=2) keys read back correctly; 1.0 when none were read."""
        return self.stable_ok / self.stable_reads if self.stable_reads else 1.0

    def rate(self, op: str, outcome: str) -> float:
        total = sum(self.counts.get(f"{op}.{o}", 0) for o in OUTCOMES)
        return self.counts.get(f"{op}.{outcome}", 0) / total if total else 0.0


class LoadGen:
    def __init__(self, redis_url: str, *, seed: int = 1, stable: int = 200, churn: int = 1200,
                 workers: int = 4, batch: int = 4, deadline_s: float = 2.0,
                 mix: tuple[float, float, float] = (0.3, 0.5, 0.2),
                 pace_s: float = 0.005) -> None:
        self.redis_url, self.seed, self.batch, self.deadline_s = redis_url, seed, batch, deadline_s
        self.mix, self.workers, self.pace_s = mix, workers, pace_s
        self.stable = [chunk_key(STABLE, i, seed) for i in range(stable)]
        self.churn = [chunk_key(CHURN, i, seed) for i in range(churn)]
        self.absent = [chunk_key(ABSENT, i, seed) for i in range(256)]
        self.written: list[bytes] = []      # churn keys stored at least once
        self._written_set: set[bytes] = set()
        self.records: list[Record] = []
        self.calls: list[tuple[float, str]] = []   # (start, op) of every call
        self.wrong_keys: list[bytes] = []
        self.unexpected: list[str] = []     # exceptions outside the kvstore hierarchy
        self.errors: list[tuple[float, str, str]] = []  # (start, op, error class): diagnosis
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="kvstore-chaos-loadgen")
        self._thread.start()
        self._tasks: list[asyncio.Task] = []
        self._stop: asyncio.Event | None = None
        self.client: AsyncClusterClient = self.call(self._connect())

    # ---- plumbing ----------------------------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        """Run ``coro`` on the generator's loop (where its client lives) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _connect(self) -> AsyncClusterClient:
        from kvstore_client.redis_membership import RedisMembership

        options = ClientOptions(deadline_s=self.deadline_s, retry=RetryPolicy(max_attempts=2),
                                client_name="kvstore-chaos")
        return await AsyncClusterClient.connect(
            SCHEME, source=RedisMembership(self.redis_url, poll_s=0.2), replication=2,
            options=options)

    def start(self) -> None:
        async def begin() -> None:
            self._stop = asyncio.Event()
            self._tasks = [asyncio.get_running_loop().create_task(self._worker(w))
                           for w in range(self.workers)]
        self.call(begin())

    def stop(self) -> None:
        async def end() -> None:
            assert self._stop is not None
            self._stop.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tasks:
            self.call(end())
            self._tasks = []

    def close(self) -> None:
        if self._loop.is_running():
            self.stop()
            self.call(self.client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    # ---- seeding -----------------------------------------------------------------------------
    def put_keys(self, keys: Sequence[bytes]) -> list[bool]:
        return self.call(self.client.put_many(list(keys), [payload(k) for k in keys],
                                              deadline_s=10.0))

    def replicate_stable(self, timeout_s: float = 30.0) -> int:
        """(Re)write stable keys until each is held by both of its candidates; returns how many
        had to be rewritten."""
        rewritten = 0
        deadline = time.monotonic() + timeout_s
        while True:
            res = self.call(self.client.lookup(self.stable, deadline_s=10.0))
            short = [k for k, holders in zip(self.stable, res.nodes, strict=True)
                     if len(holders) < 2]
            if not short:
                return rewritten
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(short)} stable keys still have < 2 copies")
            rewritten += len(short)
            self.put_keys(short)

    # ---- the load ----------------------------------------------------------------------------
    async def _worker(self, w: int) -> None:
        assert self._stop is not None
        put_p, get_p, _ = self.mix
        rng = random.Random(self.seed * 1000 + w)
        while not self._stop.is_set():
            r = rng.random()
            try:
                if r < put_p or not self.written:
                    await self._put(rng)
                elif r < put_p + get_p:
                    await self._get(rng)
                else:
                    await self._lookup(rng)
            except Exception as exc:  # not a kvstore error: a client bug; keep the load going
                log.exception("unexpected error from the cluster client")
                self.unexpected.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.pace_s)  # leave the 2 cores to the nodes too

    async def _put(self, rng: random.Random) -> None:
        keys = rng.sample(self.churn, self.batch)
        t0 = time.monotonic()
        self.calls.append((t0, "put"))
        try:
            stored = await self.client.put_many(keys, [payload(k) for k in keys],
                                                deadline_s=self.deadline_s)
        except KVStoreError as exc:
            log.debug("put failed: %s", exc)
            self.errors.append((t0, "put", type(exc).__name__))
            self._record(t0, "put", [("error", CHURN)] * len(keys))
            return
        for k, ok in zip(keys, stored, strict=True):
            if ok and k not in self._written_set:
                self._written_set.add(k)
                self.written.append(k)
        self._record(t0, "put", [("ok" if ok else "miss", CHURN) for ok in stored])

    async def _get(self, rng: random.Random) -> None:
        half = self.batch // 2
        keys = rng.sample(self.stable, half) + rng.sample(self.written,
                                                          min(self.batch - half, len(self.written)))
        pools = [STABLE] * half + [CHURN] * (len(keys) - half)
        t0 = time.monotonic()
        self.calls.append((t0, "get"))
        try:
            got = await self.client.get_many(keys, deadline_s=self.deadline_s)
        except KVStoreError as exc:
            log.debug("get failed: %s", exc)
            self.errors.append((t0, "get", type(exc).__name__))
            self._record(t0, "get", [("error", p) for p in pools])
            return
        outcomes = []
        for k, t, p in zip(keys, got, pools, strict=True):
            if t is None:
                outcomes.append(("miss", p))
            elif bytes(t.numpy()) != payload(k):
                self.wrong_keys.append(k)
                log.error("WRONG BYTES for key %s", k.hex())
                outcomes.append(("wrong", p))
            else:
                outcomes.append(("ok", p))
        self._record(t0, "get", outcomes)

    async def _lookup(self, rng: random.Random) -> None:
        half = self.batch // 2
        keys = rng.sample(self.stable, half) + rng.sample(self.absent, self.batch - half)
        t0 = time.monotonic()
        self.calls.append((t0, "lookup"))
        try:
            res = await self.client.lookup(keys, deadline_s=self.deadline_s)
        except KVStoreError as exc:
            log.debug("lookup failed: %s", exc)
            self.errors.append((t0, "lookup", type(exc).__name__))
            self._record(t0, "lookup", [("error", STABLE)] * half
                         + [("error", ABSENT)] * (len(keys) - half))
            return
        outcomes = [("ok" if f else "miss", STABLE) for f in res.found[:half]]
        outcomes += [("wrong" if f else "ok", ABSENT) for f in res.found[half:]]
        self._record(t0, "lookup", outcomes)

    def _record(self, t0: float, op: str, outcomes: list[tuple[str, str]]) -> None:
        dt = time.monotonic() - t0
        self.records.extend(Record(t0, dt, op, o, p) for o, p in outcomes)

    # ---- figures -----------------------------------------------------------------------------
    def summary(self, t0: float = float("-inf"), t1: float = float("inf")) -> Summary:
        """Figures of the calls that started in [t0, t1)."""
        counts: Counter[str] = Counter()
        stable_reads = stable_ok = 0
        max_call_s = 0.0
        for r in list(self.records):
            if not t0 <= r.start < t1:
                continue
            max_call_s = max(max_call_s, r.seconds)
            counts[f"{r.op}.{r.outcome}"] += 1
            counts[f"{r.op}.{r.pool}.{r.outcome}"] += 1
            if r.op == "get" and r.pool == STABLE:
                stable_reads += 1
                stable_ok += r.outcome == "ok"
        ops = sum(1 for s, _ in list(self.calls) if t0 <= s < t1)
        wrong = sum(v for k, v in counts.items() if k.count(".") == 1 and k.endswith(".wrong"))
        return Summary(ops, dict(counts), wrong, stable_reads, stable_ok, max_call_s)

    def read_failure_rate(self, t0: float, t1: float) -> float:
        """Misses and errors among all keys read in [t0, t1) (the "miss rate" of recovery)."""
        s = self.summary(t0, t1)
        reads = sum(s.counts.get(f"get.{o}", 0) for o in OUTCOMES)
        bad = s.counts.get("get.miss", 0) + s.counts.get("get.error", 0)
        return bad / reads if reads else 0.0

    def error_classes(self, t0: float, t1: float) -> dict[str, int]:
        """"op:ErrorClass" -> calls that failed so in [t0, t1)."""
        return dict(Counter(f"{op}:{name}" for t, op, name in list(self.errors) if t0 <= t < t1))

    def reads_between(self, t0: float, t1: float) -> int:
        return sum(1 for r in list(self.records) if r.op == "get" and t0 <= r.start < t1)
