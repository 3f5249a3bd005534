"""Benchmarks: programs that print a table and a final JSON line."""
