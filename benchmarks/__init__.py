"""Benchmarks and the naive baseline composition they compare against."""
