"""The language-neutral conformance suite (conformance/cases) run against a real aggregator and Redis."""
