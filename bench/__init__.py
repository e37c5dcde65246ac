"""Benchmarks: `make bench` (python -m bench). Nothing here runs in the test suite."""
