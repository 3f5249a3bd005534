"""An asyncio event loop running forever in a daemon thread: how the blocking clients
(KVStoreClient, ClusterClient) run their async counterparts. Calls from any thread are scheduled
onto the one loop, so the blocking clients are safe to share between threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._loop.is_running()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
