"""Fixtures of the chaos suite: one cluster (redis-server, 3 `kvstore serve` processes: node 0 in
a network namespace of its own, the others behind a proxy on each link) and one verifying load
per module; a fault log per test that must show an
injected fault; a summary table at the end of the run (also written to
<basetemp>/chaos-summary.json).

Every test here injects real faults into real processes; none may be skipped, and a test that
ends without an injected fault in its log fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chaos_helpers import TMPFS_BYTES, TMPFS_NODE

from kvstore.chaos.cluster import ChaosCluster, wait_for
from kvstore.chaos.faults import FaultInjector, FaultLog
from kvstore.chaos.loadgen import LoadGen
from kvstore.chaos.probe import Probe
from kvstore.chaos.scenario import format_table

_RESULTS = pytest.StashKey[list[dict[str, Any]]]()
_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = []


@pytest.fixture(scope="session")
def chaos_results(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    request.config.stash[_BASETEMP] = str(tmp_path_factory.getbasetemp())
    return request.config.stash[_RESULTS]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    c = ChaosCluster(tmp_path_factory.mktemp("chaos-cluster"),
                     tmpfs_bytes={TMPFS_NODE: TMPFS_BYTES})
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def load(cluster: ChaosCluster) -> Iterator[LoadGen]:
    lg = LoadGen(cluster.redis_url)
    try:
        lg.put_keys(lg.stable)
        lg.replicate_stable()
        lg.start()
        wait_for(lambda: lg.summary().counts.get("get.ok", 0) >= 50, 30, "the load to run")
        yield lg
    finally:
        lg.close()
    assert lg.wrong_keys == [], f"wrong bytes served for {len(lg.wrong_keys)} keys"


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    p = Probe()
    yield p
    p.close()


class Faults:
    """The test's fault log and injectors; teardown heals what a failing test left injected."""

    def __init__(self) -> None:
        self.log = FaultLog()
        self.injectors: list[FaultInjector] = []

    def add(self, fault: FaultInjector) -> FaultInjector:
        self.injectors.append(fault)
        return fault


@pytest.fixture
def faults(request: pytest.FixtureRequest, chaos_results: list[dict[str, Any]]
           ) -> Iterator[Faults]:
    f = Faults()
    yield f
    for inj in f.injectors:
        if inj.active:
            inj.heal()
    injected = [e for e in f.log.events if e.action == "inject"]
    assert injected, f"{request.node.name} ended without injecting a fault"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    rows = config.stash.get(_RESULTS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("chaos suite: measured figures")
    tr.write_line(format_table(rows))
    tr.write_line(f"faults injected: {sum(r['injected'] for r in rows)}, operations: "
                  f"{sum(r['ops'] for r in rows)}, wrong bytes: {sum(r['wrong'] for r in rows)}")
    base = config.stash.get(_BASETEMP, "")
    if base:
        path = f"{base}/chaos-summary.json"
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)
        tr.write_line(f"written to {path}")
