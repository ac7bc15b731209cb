"""Benchmarks of the hot path and the aggregator; ``python -m benchmarks`` (``make bench``) runs them all."""
