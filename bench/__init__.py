"""Benchmarks: Berth measured side by side against the reference registry (`make bench`)."""
