"""Degradation operators: forward models H for SHRED and synthetic damage for benchmarks."""
