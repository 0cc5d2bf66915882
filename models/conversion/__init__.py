"""Offline Hugging Face -> MLA conversion: settings, families (what converts, what is refused), convert,
calibration, RoRoPE, fidelity report, healing (a short distillation from the source), and tiny random-weight
models of each family for tests and benchmarks."""
