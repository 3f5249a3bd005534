"""Fixtures of the fuzz tests (harness.py) and the per-RPC status table in pytest's summary."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import RSS_LOG, STATUS_LOG, NodeProcess, Target


@pytest.fixture(scope="session")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("fuzz-node"))
    yield node
    node.stop()


@pytest.fixture(scope="session")
def target(fuzz_node: NodeProcess) -> Iterator[Target]:
    t = Target(fuzz_node)
    yield t
    t.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not STATUS_LOG:
        return
    terminalreporter.section("kvstore fuzz: cases by RPC and status")
    by_rpc: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (rpc, code), n in sorted(STATUS_LOG.items()):
        by_rpc[rpc][code] = n
    for rpc, codes in by_rpc.items():
        total = sum(codes.values())
        terminalreporter.write_line(
            f"{rpc:<22} {total:>7}  " + ", ".join(f"{c} {n}" for c, n in codes.items()))
    terminalreporter.write_line(f"{'total':<22} {sum(STATUS_LOG.values()):>7}")
    if RSS_LOG:
        terminalreporter.write_line("node RSS growth after each property (MiB): " + ", ".join(
            f"{g / 2**20:.1f}" for g in RSS_LOG))
    report = os.environ.get("KVSTORE_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({
            "cases": {f"{r} {c}": n for (r, c), n in sorted(STATUS_LOG.items())},
            "rss_growth_bytes": RSS_LOG}, indent=1))
