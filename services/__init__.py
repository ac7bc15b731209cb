"""Boilerhouse services: the API server and the metrics aggregator."""

__version__ = "0.1.0"
