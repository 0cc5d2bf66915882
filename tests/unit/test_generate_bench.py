"""benchmarks/generate.py: our engine's batch timed several times on one engine reports the median run and every
run's decode time (the tiny shape on the CPU, real weights files and a real engine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # generate.py imports its sibling devices.py
_spec = importlib.util.spec_from_file_location("generate_bench", ROOT / "benchmarks" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def test_repeats_keep_the_median_run(tmp_path: Path) -> None:
    shape = generate.SHAPES["tiny"]
    model_dir = generate.mla_model_dir(shape, *shape["mla"], True, tmp_path)
    ids = generate.prompts(2, 20, shape["vocab_size"])
    one = generate.run_engine(model_dir, ids, 5, torch.device("cpu"))
    assert "decode_ms_per_step_runs" not in one and one["decode_steps"] == 4
    three = generate.run_engine(model_dir, ids, 5, torch.device("cpu"), repeats=3)
    runs = three["decode_ms_per_step_runs"]
    assert len(runs) == 3 and three["decode_ms_per_step"] in runs
    assert three["new_tokens_per_s"] == 2 * 5 / three["seconds"]
    assert three["decode_steps"] == 4  # per run, not summed over the three
