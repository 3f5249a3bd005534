"""Retry with exponential backoff and jitter, as a small strategy object."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kvstore.errors import Unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries calls that fail with UNAVAILABLE (node restarting, connection refused)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff_s(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** attempt)
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    async def run(self, fn: Callable[[], Awaitable[T]],
                  retry_on: tuple[type[BaseException], ...] = (Unavailable,)) -> T:
        for attempt in range(self.max_attempts):
            try:
                return await fn()
            except retry_on:
                if attempt + 1 == self.max_attempts:
                    raise
                await asyncio.sleep(self.backoff_s(attempt))
        raise AssertionError("unreachable")


NO_RETRY = RetryPolicy(max_attempts=1)
