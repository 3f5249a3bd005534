"""Per-tier counters (plain integers updated under the tier manager's lock)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TierCounters:
    hits: int = 0
    evictions: int = 0          # chunks that left this tier to make room
    demotions_in: int = 0       # chunks that arrived from the tier above
    promotions_out: int = 0     # chunks promoted from this tier to the top memory tier
    corrupt_dropped: int = 0    # chunks dropped because they failed their checksum
    encoded_in: int = 0         # chunks re-encoded (config.tier_codecs) as they were demoted here
