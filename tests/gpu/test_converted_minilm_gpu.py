"""The converted MiniLM (pca, d_c=192) through the packed engine on a GPU (fp16) embeds like the same model on the
CPU in float32: cosine >= 0.999 on every held-out text (English prose, code, CJK prose where shipped)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlabatch.models.conversion.calibration import heldout_domains
from mlabatch.models.conversion.config import CalibrationConfig

MODEL = "minilm-mla-pca192-fp16-v1"  # in $MLABATCH_TEST_CACHE; built on a machine with the bundled MiniLM
TEXTS_PER_DOMAIN = 48


def build(cache: Path) -> Path:
    """Convert the bundled MiniLM (pca, d_c=192) and store its weights in fp16: the same model on both devices,
    and small enough (45 MB) to carry to a GPU machine that lacks the MiniLM package."""
    from safetensors.torch import load_file, save_file

    from mlabatch.models.conversion.config import MLAConfig
    from mlabatch.models.conversion.convert import convert
    from mlabatch.models.registry.bundled import bundled_minilm_dir

    out = convert(bundled_minilm_dir(), MLAConfig(d_c=192, method="pca"), cache / MODEL)
    weights = out / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_converted_minilm_on_gpu_fp16_matches_cpu_fp32(model_cache_dir):
    from mlabatch.models.embedding.engine import load_embedder

    model_dir = model_cache_dir / MODEL
    if not (model_dir / "mla_config.json").is_file():
        model_dir = build(model_cache_dir)
    domains = heldout_domains(CalibrationConfig(), TEXTS_PER_DOMAIN)
    texts = [t for d in domains.values() for t in d]
    cpu = load_embedder(model_dir, "cpu").embed(texts)
    gpu_embedder = load_embedder(model_dir, "cuda")
    assert next(gpu_embedder.encoder.parameters()).dtype == torch.float16
    gpu = gpu_embedder.embed(texts)
    cos = (cpu * gpu).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    result, start = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "texts": len(texts)}, 0
    for name, part in domains.items():
        c = cos[start:start + len(part)]
        result[name] = {"n": len(part), "cosine_mean": float(c.mean()), "cosine_min": float(c.min())}
        start += len(part)
    result["cosine_min"] = float(cos.min())
    print("RESULT " + json.dumps(result))
    assert cos.min() >= 0.999
