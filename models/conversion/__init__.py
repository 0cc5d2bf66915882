"""Offline Hugging Face -> MLA conversion: settings, convert, calibration, RoRoPE, fidelity report."""
