"""Real models and data used by the demo, the examples, the benchmarks and the tests (offline)."""
