"""Fixtures of the vLLM integration tests: real kvstore nodes, real vLLM engines, SmolLM2.

Run in the vLLM environment: ``.venv-vllm/bin/python -m pytest tests/vllm`` (scripts/setup_vllm.sh
creates it). Every test here is marked ``vllm``. In an environment without vLLM they fail with
that instruction under CI=true (a CI job that forgot the environment must not pass green), and
are skipped otherwise.

Engines are shared per role for the whole session (one start is ~30 s on 2 cores):
``base`` (no connector: the reference greedy tokens), ``saver`` (connector, tenant t1, chunked
prefill with a 160-token budget), ``loader`` (a fresh process, tenant t1), ``other_tenant``
(tenant t2). They all use the one node ``node`` unless a test starts its own.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_engines import SAVER_BUDGET, EngineProcess, Prompts, kv_transfer_config

from kvstore.procs import start_node


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test may start a vLLM engine (~30 s alone on 2 cores, minutes when the machine is
    # loaded): the suite's 300 s default is too tight for those, not for a hang.
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))


@pytest.fixture(scope="session", autouse=True)
def _needs_vllm() -> None:
    # session scope: set up before the session fixtures that start engines
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin is not None:  # not a namespace package (tests/vllm!)
        return
    why = ("vLLM is not installed in this environment: run the vLLM tests with "
           "`.venv-vllm/bin/python -m pytest tests/vllm` (scripts/setup_vllm.sh creates it)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from kvstore_client.models.smollm2_hf import hf_path

    return hf_path()


@pytest.fixture(scope="session")
def prompts(model_dir: Path) -> Prompts:
    return Prompts(model_dir)


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="session")
def node(work_dir: Path) -> Iterator[Any]:
    proc = start_node(str(work_dir / "node"), log_path=str(work_dir / "node.log"))
    yield proc
    proc.stop()


class Engines:
    """Engines started on first use and kept for the session."""

    def __init__(self, model: Path, work_dir: Path, node_address: str) -> None:
        self.model, self.dir, self.address = model, work_dir, node_address
        self._engines: dict[str, EngineProcess] = {}

    def get(self, name: str) -> EngineProcess:
        if name not in self._engines:
            self._engines[name] = self._start(name)
        return self._engines[name]

    def _start(self, name: str) -> EngineProcess:
        if name == "base":
            return EngineProcess(name, self.model, self.dir / "engine-base.log")
        tenant = "t2" if name == "other_tenant" else "t1"
        extra: tuple[str, ...] = ()
        if name == "saver":
            extra = ("--max-num-batched-tokens", str(SAVER_BUDGET))
        return EngineProcess(name, self.model, self.dir / f"engine-{name}.log",
                             kv_transfer_config(address=self.address, tenant=tenant), extra)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()


@pytest.fixture(scope="session")
def engines(model_dir: Path, work_dir: Path, node: Any) -> Iterator[Engines]:
    pool = Engines(model_dir, work_dir, node.address)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def scheme(engines: Engines) -> Any:
    """The saver's key scheme, as its connector reports it (tenant t1)."""
    from kvstore.keys import KeyScheme

    return KeyScheme(**engines.get("saver").stats()["scheme"])
