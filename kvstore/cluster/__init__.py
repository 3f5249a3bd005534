"""Cluster: membership (Redis or a static list), rebalancing, local and Ray clusters.

Nothing is imported here at import time; see README.md for the modules.
"""
