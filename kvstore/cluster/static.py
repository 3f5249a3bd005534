"""A static member list: no Redis, no heartbeats; the ring changes only when someone says so.

Text form (flags, environment): comma-separated ``[ID=]HOST:PORT[*WEIGHT]``; the id defaults to
the address. File form (YAML or JSON): a list of ``{node_id, address, weight}`` mappings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kvstore.errors import ConfigError, InvalidArgument
from kvstore_client.membership import ClusterView, Member, OnChange


def parse_members(text: str) -> list[Member]:
    members = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        node_id, _, rest = item.rpartition("=")
        address, _, weight = rest.partition("*")
        try:
            members.append(Member(node_id or address, address, float(weight) if weight else 1.0))
        except (InvalidArgument, ValueError) as exc:
            raise ConfigError(f"member {item!r}: expected [ID=]HOST:PORT[*WEIGHT] ({exc})") \
                from None
    if not members:
        raise ConfigError(f"no members in {text!r}")
    return members


def load_members(path: str | os.PathLike[str]) -> list[Member]:
    import yaml  # YAML is a superset of JSON

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the member list {p}: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{p}: expected a non-empty list of {{node_id, address, weight}}")
    try:
        return [Member(str(d.get("node_id") or d["address"]), str(d["address"]),
                       float(d.get("weight", 1.0))) for d in data]
    except (KeyError, TypeError, AttributeError, ValueError, InvalidArgument) as exc:
        raise ConfigError(f"{p}: bad member entry: {exc}") from None


class StaticMembership:
    """A MembershipSource over a fixed list; ``update`` publishes a new list as the next epoch."""

    def __init__(self, members: Sequence[Member]) -> None:
        self._view = ClusterView(1, tuple(members))
        self._on_change: OnChange | None = None

    @property
    def view(self) -> ClusterView:
        return self._view

    async def start(self, on_change: OnChange) -> ClusterView:
        self._on_change = on_change
        return self._view

    def update(self, members: Sequence[Member]) -> ClusterView:
        self._view = ClusterView(self._view.epoch + 1, tuple(members))
        if self._on_change is not None:
            self._on_change(self._view)
        return self._view

    async def close(self) -> None:
        self._on_change = None
