"""Load generation, benchmarks and cost arithmetic (run from the repo root)."""
