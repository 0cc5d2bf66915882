"""RoPE variants (default, linear, llama3, YaRN) convert exactly; RoRoPE into fewer dims than a head is exact
for the RoPE'd part; longrope and dynamic are refused before any work."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mlabatch.kernels.elementwise import rope_
from mlabatch.models.conversion.config import ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.rorope import rope_slots, rorope_mixes, rorope_rotation
from mlabatch.models.conversion.tiny_models import build_tiny
from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.mla_decoder import load_mla_decoder
from mlabatch.models.rope import rope_tables

# SmolLM2's heads (9 x 64, 3 KV): the exact lift (192 + 192) fits the decode kernel
SMALL = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64)
VARIANTS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 256},
}
PROMPT_TOKENS, NEW_TOKENS = 40, 32


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exact_conversion_equals_transformers(variant, tmp_path):
    from transformers import AutoModelForCausalLM

    src = build_tiny("llama", tmp_path / "src", rope_parameters=VARIANTS[variant], **SMALL)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = convert(src, MLAConfig(method="exact"), tmp_path / "mla")
    ids = torch.randint(1000, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(ids).logits
    got = load_mla_decoder(out)(ids)
    assert (got - expected).abs().max() <= 2e-4 * expected.abs().max()
    prompt = ids[0, :PROMPT_TOKENS].tolist()
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        do_sample=False)[0, PROMPT_TOKENS:].tolist()
    engine = load_generator(out, "cpu", EngineConfig(cuda_graphs=False))
    tokens = engine.generate([prompt], SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True))[0].token_ids
    assert tokens == want


def test_yarn_attention_factor_is_folded_into_compressed_queries(tmp_path):
    """Compressed YaRN scores like the source. One KV head of 64 RoRoPE'd into 32 dims keeps the 16 fastest
    frequencies; the 16 slowest, slowed further by YaRN, barely turn over 128 tokens, so dropping their RoPE
    costs little. Their scores still need YaRN's attention factor squared (1.82 here): without it, top-1
    agreement falls below 0.1 (measured: 0.08, and 1.0 with it)."""
    from transformers import AutoModelForCausalLM

    yarn = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 32.0, "original_max_position_embeddings": 256}
    src = build_tiny("llama", tmp_path / "src", rope_parameters=yarn, **{**SMALL, "num_key_value_heads": 1})
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    mla = load_mla_decoder(convert(src, MLAConfig(d_c=96, d_rope=32, method="svd"), tmp_path / "mla"))
    assert mla.mla.rope_scaling == pytest.approx(0.1 * math.log(32) + 1)
    ids = torch.randint(1000, 20000, (1, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        agreement = (ref(ids).logits.argmax(-1) == mla(ids).argmax(-1)).float().mean().item()
    assert agreement >= 0.95


@pytest.mark.parametrize("rope", [{"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 32,
                                   "long_factor": [2.0] * 32, "original_max_position_embeddings": 256},
                                  {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}])
def test_sequence_dependent_rope_is_refused(rope, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 2,
                                                 "num_attention_heads": 9, "num_key_value_heads": 3,
                                                 "rope_parameters": rope}))
    (src / "model.safetensors").write_bytes(b"never read: the config is checked first")
    with pytest.raises(ConversionError, match=rf"rope type '{rope['rope_type']}' is not supported.*default, linear, "
                                              r"llama3, yarn.*Nearest"):
        convert(src, MLAConfig(method="exact"), tmp_path / "out")


def test_rorope_into_fewer_dims_than_a_head_commutes_with_rope():
    """d_rope = 64 of head_dim 128: the 64 RoPE'd rows of the rotation, RoPE'd at their slots' frequencies,
    equal the rotation of the RoPE'd keys (exact), and the rotation is orthogonal."""
    n_kv, hd, d = 8, 128, 96
    torch.manual_seed(0)
    w_k = torch.randn(n_kv * hd, d, dtype=torch.float64)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    energies, mixes = rorope_mixes(w_k, torch.eye(d, dtype=torch.float64), n_kv, hd)
    slots = rope_slots([energies], inv_freq, 1, 256, 32)
    assert len(slots) == 32 and max(slots) < hd // 2
    rot = rorope_rotation(mixes, slots, 1, hd)
    assert torch.allclose(rot @ rot.T, torch.eye(n_kv * hd, dtype=torch.float64), atol=1e-12)
    k, pos = torch.randn(1, 1, n_kv, hd, dtype=torch.float64), torch.tensor([[1234]])
    rotated = rope_(k.clone().unsqueeze(-2), *rope_tables(pos, inv_freq, dtype=torch.float64)).reshape(-1)
    slot_rope = rope_tables(pos, inv_freq[slots], dtype=torch.float64)
    expected = rope_((rot[:64] @ k.reshape(-1)).view(1, 1, 1, 1, 64), *slot_rope).reshape(-1)
    assert torch.allclose(rot[:64] @ rotated, expected, atol=1e-9)


def test_head_dim_128_gqa_converts_to_the_deepseek_shape(tmp_path):
    """Llama-3-8B's heads (32 x 128, 8 KV) convert to d_c 512 + d_rope 64, the shape FlashMLA runs; the converted
    model's absorbed paged decode (the generation engine) agrees with its own non-absorbed forward."""
    src = build_tiny("llama", tmp_path / "src", hidden_size=1024)
    out = convert(src, MLAConfig(d_c=512, d_rope=64, method="svd"), tmp_path / "mla")
    mla_cfg = json.loads((out / "mla_config.json").read_text())
    assert (mla_cfg["d_c"], mla_cfg["d_rope"], mla_cfg["kernel_head_dim_v"], mla_cfg["kernel_d_rope"]) == (512, 64, 512, 64)
    assert mla_cfg["kv_values_per_token_before"] == 2048 and mla_cfg["kv_values_per_token_after"] == 576
    model = load_mla_decoder(out)
    assert model.rope_inv_freq.shape == (32,)
    prompt = list(range(2000, 2030))
    engine = load_generator(out, "cpu", EngineConfig(cuda_graphs=False))
    tokens = engine.generate([prompt], SamplingParams(max_new_tokens=16, ignore_eos=True))[0].token_ids
    full = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1].argmax(-1).tolist()
    assert tokens == full


def test_d_rope_below_a_head_must_be_even(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 2,
                                                 "num_attention_heads": 9, "num_key_value_heads": 3}))
    (src / "model.safetensors").write_bytes(b"never read")
    with pytest.raises(ConversionError, match="even value below 64"):
        convert(src, MLAConfig(d_c=128, d_rope=33, method="svd"), tmp_path / "out")
