"""Fault injection for kvstore: a fault interface with a log, a fault-injecting TCP proxy, a local
cluster wired through it, and a verifying load generator (see docs/CHAOS.md)."""
