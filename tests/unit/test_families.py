"""The families users bring, as tiny random-weight models at each family's real head layout: exact conversion
equals transformers, the engines serve the unconverted originals, and refusals are clear and early."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlabatch.models.conversion.config import ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.tiny_models import build_tiny
from mlabatch.models.embedding.engine import load_embedder
from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.mla_decoder import load_mla_decoder

PROMPT_TOKENS, NEW_TOKENS = 40, 32
# Head layouts whose exact lift fits the decode kernel (d_c + d_rope <= 512): 128-wide heads (Mistral-7B, Qwen2.5
# with q/k/v biases, Qwen3 with per-head q/k RMSNorm), 2 of their KV heads; Phi-3's 96-wide MHA heads, fused qkv
HD128 = {"hidden_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128}
DECODERS = {"mistral": HD128, "qwen2": HD128, "qwen3": HD128,
            "phi3": {"hidden_size": 192, "num_attention_heads": 2, "num_key_value_heads": 2}}
TEXTS = ["Multi-head latent attention caches one latent per token.", "short", "x " * 300,
         "Grüße aus Köln, und ein längerer deutscher Satz über Einbettungen.", "機械学習のモデルを変換する。"]


def _reference_generate(src: Path, ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = ref(ids).logits
    prompt = ids[:, :PROMPT_TOKENS]
    tokens = ref.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return logits, tokens[0, PROMPT_TOKENS:].tolist()


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_decoder_family_converts_exactly_and_is_served_unconverted(family, tmp_path):
    """Exact conversion equals transformers (logits, 32 greedy tokens through the engine), and the generator
    serves the original directory itself (converted exactly in memory) with the same tokens."""
    src = build_tiny(family, tmp_path / "src", **DECODERS[family])
    ids = torch.randint(1000, 20000, (1, 200), generator=torch.Generator().manual_seed(0))
    expected, want = _reference_generate(src, ids)
    out = convert(src, MLAConfig(method="exact"), tmp_path / "mla")
    got = load_mla_decoder(out)(ids)
    assert (got - expected).abs().max() <= 2e-4 * expected.abs().max()
    sampling = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    prompt = ids[0, :PROMPT_TOKENS].tolist()
    for served in (out, src):
        engine = load_generator(served, "cpu", EngineConfig(cuda_graphs=False))
        assert engine.generate([prompt], sampling)[0].token_ids == want


def test_phi3_fused_projections_are_split(tmp_path):
    src = build_tiny("phi3", tmp_path / "src", **DECODERS["phi3"])
    out = convert(src, MLAConfig(d_c=128, d_rope=64, method="svd"), tmp_path / "mla")
    model = load_mla_decoder(out)
    mlp = model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == 512  # gate_up_proj [1024, 192] split


def test_qwen3_compressed_keys_read_the_normalized_keys(tmp_path):
    """Qwen3 normalizes each key head before RoPE, which is not linear in the input: with compressed keys the
    latent reads the normalized keys and values. One KV head of 64 RoRoPE'd into 32 dims with a full-rank
    latent loses only RoPE on the 16 slowest frequencies, which barely turn at theta 1e9, so it scores like
    transformers; a calibrated compression runs through the engine's paged, absorbed decode consistently."""
    layout = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1e9}}
    src = build_tiny("qwen3", tmp_path / "src", **layout)
    ids = torch.randint(1000, 20000, (1, 128), generator=torch.Generator().manual_seed(0))
    expected, _ = _reference_generate(src, ids)
    full = convert(src, MLAConfig(d_c=96, d_rope=32, method="svd"), tmp_path / "full")  # 32 + 64: every direction
    top1 = (load_mla_decoder(full)(ids).argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert top1 >= 0.97
    src = build_tiny("qwen3", tmp_path / "src2", **{**layout, "num_key_value_heads": 2})
    out = convert(src, MLAConfig(d_c=96, d_rope=32, method="pca"), tmp_path / "pca")  # of 224: compressed
    mla_cfg = json.loads((out / "mla_config.json").read_text())
    assert mla_cfg["has_nope"] and mla_cfg["qk_norm"] and mla_cfg["kv_values_per_token_after"] == 128
    prompt = list(range(3000, 3030))
    engine = load_generator(out, "cpu", EngineConfig(cuda_graphs=False))
    tokens = engine.generate([prompt], SamplingParams(max_new_tokens=16, ignore_eos=True))[0].token_ids
    again = load_mla_decoder(out)(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1].argmax(-1).tolist()
    assert tokens == again


def _config_only(tmp_path: Path, config: dict) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text(json.dumps(config))
    (src / "model.safetensors").write_bytes(b"never read: the config is checked first")
    return src


MISTRAL = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768}


@pytest.mark.parametrize("config, words", [
    ({**MISTRAL, "sliding_window": 4096}, r"sliding_window=4096 below max_position_embeddings=32768.*Mistral v0.2"),
    ({**MISTRAL, "hidden_act": "gelu"}, r"hidden_act='gelu'.*SwiGLU"),
    ({**MISTRAL, "model_type": "phi3", "partial_rotary_factor": 0.75}, r"partial_rotary_factor=0.75"),
    ({"model_type": "mpnet", "hidden_size": 768}, r"'mpnet' is not supported: MPNet adds a learned relative-position "
                                                  r"bias.*Supported: encoders bert, roberta, xlm-roberta, distilbert"),
    ({"model_type": "gpt_neox"}, r"'gpt_neox' is not supported.*decoders llama, mistral, qwen2, qwen3, phi3.*Nearest"),
])
def test_refusals_name_the_supported_set_and_a_workaround(config, words, tmp_path):
    with pytest.raises(ConversionError, match=words):
        convert(_config_only(tmp_path, config), MLAConfig(method="exact"), tmp_path / "out")


def test_a_window_no_shorter_than_the_context_is_no_window(tmp_path):
    src = build_tiny("mistral", tmp_path / "src", **DECODERS["mistral"], sliding_window=4096)
    assert convert(src, MLAConfig(method="exact"), tmp_path / "mla").is_dir()


def test_exact_lift_too_wide_for_the_kernel_names_mlabatch_convert(tmp_path):
    """Llama-3-8B's heads cache 2,048 values per token exactly; the generator names the 512+64 conversion."""
    src = build_tiny("llama", tmp_path / "src")
    with pytest.raises(ValueError, match=r"cannot be served unconverted.*decode kernel.*mlabatch convert.*d_rope=64"):
        load_generator(src, "cpu", EngineConfig(cuda_graphs=False))


def _reference_embeddings(src: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(src), AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).last_hidden_state
    w = batch["attention_mask"][..., None].float()
    return F.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "distilbert"])
def test_encoder_family_embeds_like_transformers_plain_and_converted(family, tmp_path):
    """The packed engine runs the original model and its exact conversion like transformers (RoBERTa/XLM-R
    count positions from padding_idx + 1: without that offset the cosine falls well below 0.99)."""
    src = build_tiny(family, tmp_path / "src")
    expected = _reference_embeddings(src, TEXTS)
    out = convert(src, MLAConfig(method="exact"), tmp_path / "mla")
    for served in (src, out):
        got = torch.from_numpy(load_embedder(served, "cpu").embed(TEXTS))
        assert (got * expected).sum(-1).min() >= 0.99999


def test_mpnet_is_refused_by_the_embedder_with_the_reason(tmp_path):
    src = build_tiny("mpnet", tmp_path / "src")
    with pytest.raises(ValueError, match=r"'mpnet' model; the embedder runs bert, roberta, xlm-roberta, distilbert.*"
                                         r"relative-position bias"):
        load_embedder(src, "cpu")
