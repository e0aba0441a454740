"""Benchmarks of the video service (slot search, booking under contention)."""
