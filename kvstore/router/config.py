"""RouterConfig: the router's few settings, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.errors import ConfigError

POLICIES = (
    "dualmap",
    "round_robin",
    "least_loaded",
    "cache_affinity",
    "min_ttft",
    "consistent_hash",
)


@dataclass(frozen=True)
class RouterConfig:
    """Settings of one router (units in the names; every field is checked in ``__post_init__``).

    * ``policy``: one of ``POLICIES``; ``dualmap`` is the product, the rest are baselines.
    * ``block_tokens``: tokens per routing block (DualMap hashes 512-token blocks).
    * ``slo_ttft_s``: the TTFT target that SLO-aware routing and rebalancing protect.
    * ``slo_headroom``: affinity is kept while the predicted TTFT is <= headroom * SLO; below 1
      leaves room for prediction error.
    * ``prefill_s_per_token`` / ``prefill_s_per_cached_token`` / ``prefill_overhead_s``: the TTFT
      predictor's cost model of a worker (calibrate from the workers' own prefill timings).
    * ``vnodes_per_weight``: virtual nodes per unit weight on each of the two rings.
    * ``hot_half_life_s``: decay half-life of the prefix hotness counters.
    * ``hot_expand_factor`` / ``hot_prune_factor``: a prefix node above expand/n of the traffic
      gets a longer key; one below prune/n falls back to the shorter key (n = workers).
    * ``rebalance``: move queued requests off hotspots (DualMap only).
    """

    policy: str = "dualmap"
    block_tokens: int = 512
    slo_ttft_s: float = 5.0
    slo_headroom: float = 1.0
    prefill_s_per_token: float = 1.0e-4
    prefill_s_per_cached_token: float = 5.0e-6
    prefill_overhead_s: float = 0.02
    vnodes_per_weight: int = 2000
    hot_half_life_s: float = 60.0
    hot_expand_factor: float = 2.0
    hot_prune_factor: float = 1.0
    rebalance: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        if self.block_tokens < 1:
            raise ConfigError(f"block_tokens must be >= 1, got {self.block_tokens}")
        positive = {
            "slo_ttft_s": self.slo_ttft_s,
            "slo_headroom": self.slo_headroom,
            "prefill_s_per_token": self.prefill_s_per_token,
            "hot_half_life_s": self.hot_half_life_s,
            "hot_expand_factor": self.hot_expand_factor,
            "hot_prune_factor": self.hot_prune_factor,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name in ("prefill_s_per_cached_token", "prefill_overhead_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.hot_prune_factor >= self.hot_expand_factor:
            raise ConfigError("hot_prune_factor must be below hot_expand_factor (hysteresis)")
        if self.vnodes_per_weight < 1:
            raise ConfigError(f"vnodes_per_weight must be >= 1, got {self.vnodes_per_weight}")
