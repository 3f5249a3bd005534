"""Loading the real models kvstore is tested with (no hub access at run time)."""
