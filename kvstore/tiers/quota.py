"""Per-tenant byte accounting and quotas on one node (the tier manager calls it under its lock).

Two counts per tenant: bytes of stored chunks (each chunk once, whatever its tiers, at its current
payload size: a re-encoding on demotion changes it) and bytes of puts in flight (reserved when a
put starts, released when it commits or aborts). A put is refused when stored + in flight - the
chunk it replaces + its own size would pass the tenant's quota; refusing at reserve time means
nothing is evicted or received for a put that cannot be kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvstore.errors import QuotaExceeded


class TenantQuotas:
    """Not thread-safe on its own: the caller holds its lock around every call."""

    def __init__(self, quotas: Mapping[str, int]) -> None:
        self._quotas = dict(quotas)                 # tenant -> quota in bytes (absent: none)
        self._stored: dict[str, int] = {}           # stored chunks, per tenant
        self._in_flight: dict[str, int] = {}        # puts in flight, per tenant

    def reserve(self, tenant: str, nbytes: int, credit: int = 0) -> None:
        """Count a put of nbytes in flight, or raise QuotaExceeded (nothing counted then).
        credit: bytes of the tenant's own chunk that this put replaces."""
        quota = self._quotas.get(tenant)
        used = self._stored.get(tenant, 0)
        pending = self._in_flight.get(tenant, 0)
        if quota is not None and used + pending - credit + nbytes > quota:
            raise QuotaExceeded(
                f"tenant {tenant!r} is over its quota on this node: quota {quota} bytes, used "
                f"{used} bytes (+{pending} being put), this chunk needs {nbytes} bytes; delete "
                f"chunks or raise tenants[{tenant!r}].quota_bytes")
        self._in_flight[tenant] = pending + nbytes

    def release(self, tenant: str, nbytes: int) -> None:
        """A put counted by reserve() committed or was aborted."""
        self._in_flight[tenant] -= nbytes

    def charge(self, tenant: str, delta: int) -> None:
        """Stored bytes of the tenant changed by delta (a chunk stored, resized or removed)."""
        self._stored[tenant] = self._stored.get(tenant, 0) + delta

    def usage(self) -> dict[str, int]:
        """tenant -> bytes stored; tenants with nothing stored are left out."""
        return {t: n for t, n in self._stored.items() if n}
