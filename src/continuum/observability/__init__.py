"""Metrics definitions and merging, tracing, logging: usable by ``net`` and ``actors``."""
