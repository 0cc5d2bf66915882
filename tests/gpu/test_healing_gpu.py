"""Healing on the GPU (bf16 autocast, float32 trained weights): on a lossy tiny random-weight conversion the
distillation lowers the KL it optimizes, and the healed model runs in the generation engine on the same GPU.
(Random weights do not generalize to other text, so the texts trained on are the ones measured; held-out
healing is tested on real weights on CPU, tests/unit/test_healing.py.)"""
from __future__ import annotations

import shutil

import pytest
import torch

from mlabatch.models.conversion.calibration import heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, HealConfig, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.healing import heal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_tiny_decoder_heals_on_gpu_and_generates(tiny_decoder_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlabatch.models.generation.config import EngineConfig, SamplingParams
    from mlabatch.models.generation.engine import load_generator

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name or "embed" in name:
                p.normal_(0, 0.1)
    src = tmp_path / "src"
    model.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_decoder_dir / name, src / name)
    calibration = CalibrationConfig(num_texts=8, max_tokens=64)
    mla_dir = convert(src, MLAConfig(d_c=64, d_rope=64, calibration=calibration), tmp_path / "mla")

    config = HealConfig(heal_steps=30, heal_lr=1e-3, heal_batch=4, heal_seq_tokens=64, heal_eval_every=10)
    texts = heldout_texts(1)  # 8 windows of 64 tokens: every step trains on windows the metric scores
    result = heal(src, mla_dir, config, texts, texts, device="cuda", progress=False)
    assert result.heldout_after < 0.5 * result.heldout_before, result

    gen = load_generator(mla_dir, "cuda", EngineConfig(max_batch=2, num_blocks=8, cuda_graphs=False))
    out = gen.generate(["def f(x):", "The list"], SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert [o.generated_tokens for o in out] == [8, 8]
