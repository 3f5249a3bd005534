"""The kvstore command line."""
