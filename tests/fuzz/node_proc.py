"""Run one store node in its own process for the fuzz tests (``python -m tests.fuzz.node_proc``).

A separate process, so the fuzzer measures the node's own RSS (not the test's hypothesis state)
and a node that crashes shows up as a dead process instead of a dead thread.

argv[1] is a JSON object: ``config`` (NodeConfig fields) and ``limits`` (module constants to set
before the node starts, e.g. {"kvstore.server.node.MAX_CONCURRENT_RPCS": 8}, so a test can reach
a limit with a handful of streams). The node prints one JSON line with its ports, then serves
until stdin closes.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys

from kvstore.config import ModelSpec, NodeConfig
from kvstore.server.node import create_server


async def main(spec: dict) -> None:
    for dotted, value in spec.get("limits", {}).items():
        module, name = dotted.rsplit(".", 1)
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            raise SystemExit(f"no limit {dotted} to set")
        setattr(mod, name, value)
    cfg = dict(spec["config"])
    cfg["models"] = tuple(ModelSpec(**m) for m in cfg.get("models", ()))
    node, port = await create_server(NodeConfig(**cfg))
    print(json.dumps({"port": port, "data_port": node.core.data_port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await node.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
