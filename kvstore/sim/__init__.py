"""Trace-driven simulation of a cluster of inference instances, driving the real router."""
