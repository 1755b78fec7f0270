"""Benchmarks that measure the claims and write JSON (and plots) to benchmarks/results."""
