"""Request router: DualMap scheduling of prompts onto inference workers (see README.md)."""

from kvstore.router.config import POLICIES, RouterConfig
from kvstore.router.core import Decision, Router
from kvstore.router.rebalance import Migration

__all__ = ["POLICIES", "Decision", "Migration", "Router", "RouterConfig"]
