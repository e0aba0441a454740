"""Exchange benchmarks."""
