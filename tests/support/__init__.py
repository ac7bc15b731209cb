"""Helpers for tests: processes stopped by pid, servers in threads, exposition parsing."""
