"""The Databricks path for the kernel: one process compiles into a shared cache (a UC volume there),
a later process without a toolchain loads that build and decodes correctly."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0), reason="needs a Hopper GPU")]

BUILD = "from mlabatch.kernels.build import load_extension; m, why = load_extension(); print(why); assert m"
TESTS = Path(__file__).resolve().parents[1]  # holds kernel_oracle, which the CHECK subprocess imports
CHECK = f"import sys; sys.path.insert(0, {str(TESTS)!r})" + """
import torch
from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata, info
from kernel_oracle import cos_diff, make_case
print(info()["extension"])
case = make_case([70, 300, 0, 1000], 1, 16, 1, 576, torch.bfloat16, "cuda", seed=1)
meta, splits = get_mla_metadata(case.cache_seqlens, 16, 1)
outs = [flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, meta, splits,
                               causal=True, backend=b) for b in ("cuda", "torch")]
assert cos_diff(outs[0][0], outs[1][0]) < 1e-5
finite = torch.isfinite(outs[1][1])
assert torch.equal(finite, torch.isfinite(outs[0][1])) and cos_diff(outs[0][1][finite], outs[1][1][finite]) < 1e-5
print("decode matches the reference")
"""


def test_build_once_then_load_without_toolchain(tmp_path):
    env = {**os.environ, "MLABATCH_KERNELS_CACHE": str(tmp_path / "volume")}
    env.pop("MLABATCH_JIT", None)
    built = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0 and "JIT-built extension in" in built.stdout, built.stderr[-2000:]

    # A worker: no compiler on PATH and JIT disabled, so only the cached build can serve it.
    worker = {**env, "MLABATCH_JIT": "0", "PATH": "/usr/bin:/bin"}
    loaded = subprocess.run([sys.executable, "-c", CHECK], env=worker, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "loaded from" in loaded.stdout and str(tmp_path / "volume") in loaded.stdout
    assert "decode matches the reference" in loaded.stdout
