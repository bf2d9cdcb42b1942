"""Benchmarks and load scripts; loopback only, not part of the test suite."""
