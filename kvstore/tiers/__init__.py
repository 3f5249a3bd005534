"""Storage tiers of a node: GPU/CPU page pools, the disk tier, policies and the TierManager.

May import kvstore.chunk/config/errors/keys/wire; must not import kvstore.server or any client.
"""
