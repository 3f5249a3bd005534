"""The store node: gRPC service, bulk data plane, sessions, stats.

Imports kvstore.tiers; never the client."""
