"""Prometheus metrics, the /metrics route, and the worker's metrics server."""
