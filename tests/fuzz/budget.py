"""How many hypothesis cases each fuzz property runs (docs/FUZZING.md).

CI runs the numbers in ``CI_EXAMPLES`` (derandomized: the same cases every run, no example
database). ``KVSTORE_FUZZ_EXAMPLES=N`` scales every property so the total is about N and draws
fresh random cases (pass ``--hypothesis-seed`` to replay one).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = {
    "handshake": 300,
    "session": 200,
    "put": 900,
    "put_codec": 250,
    "get": 300,
    "lookup_delete": 300,
    "raw_messages": 300,
    "dp_hello": 200,
    "dp_requests": 500,
    "huge": 12,
}
CI_TOTAL = sum(CI_EXAMPLES.values())


def _target_total() -> int | None:
    raw = os.environ.get("KVSTORE_FUZZ_EXAMPLES", "")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"KVSTORE_FUZZ_EXAMPLES={raw!r}: expected a positive integer")
    return int(raw)


def fuzz_settings(name: str) -> settings:
    total = _target_total()
    n = CI_EXAMPLES[name] if total is None else max(1, round(CI_EXAMPLES[name] * total / CI_TOTAL))
    return settings(
        max_examples=n, deadline=None, database=None, derandomize=total is None,
        suppress_health_check=list(HealthCheck), print_blob=True)
