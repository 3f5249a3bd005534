"""Constants and helpers shared by the chaos tests and their fixtures (not a conftest: test
modules import this by name)."""

from __future__ import annotations

from typing import Any

from kvstore.chaos.faults import FaultLog
from kvstore.chaos.scenario import FaultFigures

TMPFS_NODE = 2                 # its data dir is a tmpfs of its own (the disk-full fault)
TMPFS_BYTES = 64 << 20


def record(results: list[dict[str, Any]], figures: FaultFigures, log: FaultLog) -> None:
    """Add one fault's figures and events to the suite's summary."""
    results.append({**figures.as_dict(), "events": log.as_json()})
