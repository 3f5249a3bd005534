"""Fixtures of the admin tests: the `kvstore` CLI run in-process, and Prometheus scrapes.

Nodes are real (tests/conftest.py ``start_node``: gRPC and data plane on free ports); here they
also serve metrics on a free port (``metrics_port=0``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def metrics_node(start_node) -> Callable[..., Any]:
    """``metrics_node(**config)`` -> a running StoreNode with its Prometheus endpoint on."""

    def start(**kw: Any) -> Any:
        kw.setdefault("metrics_port", 0)
        return start_node(**kw)

    return start


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """``cli(*argv)`` -> (exit code, stdout, stderr) of `kvstore ARGV` run in this process."""
    from kvstore.cli.main import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture
def cli_json(cli) -> Callable[..., tuple[int, Any, str]]:
    """``cli_json(*argv)`` -> (exit code, parsed --json output, stderr)."""

    def run(*argv: str) -> tuple[int, Any, str]:
        rc, out, err = cli(*argv, "--json")
        return rc, json.loads(out), err

    return run


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def metrics() -> Callable[[int], dict]:
    return scrape
