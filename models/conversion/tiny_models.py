"""Tiny random-weight models at each family's real head layout, built offline with transformers' config classes.

Real checkpoints of these families cannot be downloaded here (only PyPI is reachable); what conversion
depends on is the attention layout (heads, KV heads, head_dim, RoPE type, biases, norms, positions), which
these keep, with 2 layers and a small MLP. They carry the bundled MiniLM tokenizer (any tokenizer serves a
random model). Used by the family tests and `benchmarks/architectures.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mlabatch.models.registry.bundled import bundled_minilm_dir

VOCAB = 30522  # the MiniLM (BERT uncased) tokenizer's vocabulary
WEIGHT_STD = 0.08  # random projections with decisive logits, so greedy decoding is not a coin toss of ties

# family -> (transformers config class name, config keyword arguments at the real head layout)
LAYOUTS: dict[str, tuple[str, dict]] = {
    # Llama-3-8B heads (32 x 128, 8 KV), default RoPE
    "llama": ("LlamaConfig", dict(hidden_size=768, num_attention_heads=32, num_key_value_heads=8, head_dim=128)),
    # Llama-3.2-1B heads (32 x 64, 8 KV) and its llama3 RoPE
    "llama3-rope": ("LlamaConfig", dict(hidden_size=768, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                         "factor": 32.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 8192},
                                        max_position_embeddings=131072)),
    # Llama-3-8B heads with YaRN x4 (as Qwen2.5's long-context recipe sets it)
    "llama3-yarn": ("LlamaConfig", dict(hidden_size=768, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                        rope_parameters={"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                                         "original_max_position_embeddings": 8192},
                                        max_position_embeddings=32768)),
    # Mistral-7B v0.2+ heads (32 x 128, 8 KV), no sliding window
    "mistral": ("MistralConfig", dict(hidden_size=768, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                      sliding_window=None)),
    # Qwen2.5-7B heads (28 x 128, 4 KV) with q/k/v biases
    "qwen2": ("Qwen2Config", dict(hidden_size=768, num_attention_heads=28, num_key_value_heads=4, head_dim=128)),
    # Qwen3-8B heads (32 x 128, 8 KV) with per-head q/k RMSNorm
    "qwen3": ("Qwen3Config", dict(hidden_size=768, num_attention_heads=32, num_key_value_heads=8, head_dim=128)),
    # Phi-3-mini heads (x 96, MHA, fused qkv and gate_up), 8 of its 32 heads
    "phi3": ("Phi3Config", dict(hidden_size=768, num_attention_heads=8, num_key_value_heads=8, pad_token_id=0)),
    # roberta-base / multilingual-e5-base heads (12 x 64), positions from padding_idx + 1
    "roberta": ("RobertaConfig", dict(hidden_size=768, num_attention_heads=12, intermediate_size=512)),
    # bge-m3 / XLM-R large heads (16 x 64)
    "xlm-roberta": ("XLMRobertaConfig", dict(hidden_size=1024, num_attention_heads=16, intermediate_size=512,
                                             type_vocab_size=1, max_position_embeddings=8194)),
    # distilbert-base heads (12 x 64)
    "distilbert": ("DistilBertConfig", dict(dim=768, n_heads=12, n_layers=2, hidden_dim=512)),
    # all-mpnet-base-v2 heads (12 x 64) with its relative-position bias
    "mpnet": ("MPNetConfig", dict(hidden_size=768, num_attention_heads=12, intermediate_size=512)),
}
DECODER_DEFAULTS = dict(num_hidden_layers=2, intermediate_size=512, max_position_embeddings=4096,
                        tie_word_embeddings=True)
ENCODER_DEFAULTS = dict(num_hidden_layers=2)


def build_tiny(family: str, out_dir: Path, seed: int = 0, **overrides) -> Path:
    """Write a random-weight `family` model (see LAYOUTS; `overrides` change its config) with a tokenizer."""
    import transformers

    cls_name, kwargs = LAYOUTS[family]
    config_cls = getattr(transformers, cls_name)
    decoder = cls_name not in ("RobertaConfig", "XLMRobertaConfig", "DistilBertConfig", "MPNetConfig")
    defaults = DECODER_DEFAULTS if decoder else ({} if cls_name == "DistilBertConfig" else ENCODER_DEFAULTS)
    config = config_cls(vocab_size=VOCAB, **{**defaults, **kwargs, **overrides})
    torch.manual_seed(seed)
    model_cls = transformers.AutoModelForCausalLM if decoder else transformers.AutoModel
    model = model_cls.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, WEIGHT_STD)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)  # make biases matter (several families initialize them to zero)
    model.save_pretrained(out_dir)
    transformers.AutoTokenizer.from_pretrained(bundled_minilm_dir()).save_pretrained(out_dir)
    return Path(out_dir)
