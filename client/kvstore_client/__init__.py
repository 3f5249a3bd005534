"""kvstore client library: runs inside inference workers."""
