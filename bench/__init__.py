"""Benchmarks: JSON results and plots under bench/results/. Never part of the test suite."""
