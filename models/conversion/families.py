"""The Hugging Face families conversion and the engines accept: where each keeps its weights, and what is refused.

Every refusal is a ConversionError raised from config.json alone (no weights read), naming the supported
set and the nearest workaround, so a job can run these checks on the driver before any work starts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mlabatch.models.conversion.config import ConversionError
from mlabatch.models.mla_encoder import ENCODER_TYPES

ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # RoPE whose frequencies do not depend on the sequence


@dataclass(frozen=True)
class Family:
    """Where a source architecture keeps its attention weights and how its other weights are renamed."""

    kind: str  # "encoder" or "decoder"
    layer: str  # prefix of layer i, with {i}
    q: str
    k: str
    v: str
    o: str
    renames: tuple[tuple[str, str], ...]  # regex -> our name, applied to non-attention weights
    drop: str  # regex of source weights the runtime does not use
    fused_qkv: str = ""  # a per-layer projection holding q, k and v (Phi-3), split before conversion
    fused_gate_up: str = ""  # a per-layer projection holding gate and up (Phi-3), split into mlp.gate/up_proj
    qk_norm: bool = False  # per-head RMSNorm of queries and keys before RoPE (Qwen3)


def _per_layer(prefix: str, names: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Renames of per-layer weights: `{prefix}.{i}.{theirs}.*` -> `layers.{i}.{ours}.*`."""
    return tuple((rf"^{re.escape(prefix)}\.(\d+)\.{re.escape(theirs)}\.", rf"layers.\1.{ours}.")
                 for theirs, ours in names.items())


_BERT = Family(
    "encoder", "encoder.layer.{i}.", "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense",
    _per_layer("encoder.layer", {"attention.output.LayerNorm": "attn_norm", "intermediate.dense": "ffn_in",
                                 "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm"})
    + ((r"^(embeddings\.)", r"\1"),),
    r"^pooler\.|position_ids$|token_type_ids$")
_DISTILBERT = Family(
    "encoder", "transformer.layer.{i}.", "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
    _per_layer("transformer.layer", {"sa_layer_norm": "attn_norm", "ffn.lin1": "ffn_in", "ffn.lin2": "ffn_out",
                                     "output_layer_norm": "ffn_norm"})
    + ((r"^(embeddings\.)", r"\1"),),
    r"position_ids$")
_LLAMA_RENAMES = (
    _per_layer("model.layers", {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm", "mlp": "mlp",
                                "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"})
    + ((r"^model\.(embed_tokens|norm)\.", r"\1."), (r"^(lm_head)\.", r"\1.")))
_LLAMA = Family("decoder", "model.layers.{i}.", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", _LLAMA_RENAMES, r"rotary_emb")
_QWEN3 = Family("decoder", "model.layers.{i}.", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", _LLAMA_RENAMES, r"rotary_emb", qk_norm=True)
_PHI3 = Family("decoder", "model.layers.{i}.", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.o_proj", _LLAMA_RENAMES, r"rotary_emb", fused_qkv="self_attn.qkv_proj",
               fused_gate_up="mlp.gate_up_proj")

# HF model_type -> layout: the encoders the runtime embeds (ENCODER_TYPES), then the decoders.
FAMILIES = {**{t: _DISTILBERT if t == "distilbert" else _BERT for t in ENCODER_TYPES},
            "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _QWEN3, "phi3": _PHI3}

# Families users bring that are refused on purpose, with the reason and the nearest workaround.
REFUSED = {
    "mpnet": "MPNet adds a learned relative-position bias to every attention score, which the packed engine's "
             "variable-length attention (FlashAttention varlen) cannot take. Nearest: a BERT, RoBERTa or XLM-R "
             "embedder (e.g. all-MiniLM-L6-v2, bge-m3, multilingual-e5)",
    "gemma3": "Gemma-3 alternates sliding-window and global layers, which the decode kernel does not implement. "
              "Nearest: a Llama 3.x, Qwen2.5 or Mistral (v0.2+) checkpoint",
}


def supported_text() -> str:
    """The supported families, for error messages."""
    enc = ", ".join(k for k, f in FAMILIES.items() if f.kind == "encoder")
    dec = ", ".join(k for k, f in FAMILIES.items() if f.kind == "decoder")
    return f"encoders {enc}; decoders {dec}"


@dataclass(frozen=True)
class SourceShape:
    """Attention sizes of the source model, read from its config.json."""

    arch: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    has_rope: bool

    @property
    def family(self) -> Family:
        """The source's layout."""
        return FAMILIES[self.arch]

    @property
    def kv_values_per_token(self) -> int:
        """Cached K and V values per token per layer in the source model."""
        return 2 * self.n_kv_heads * self.head_dim

    def exact_d_rope(self) -> int:
        """d_rope that keeps every RoPE'd key (0 without RoPE)."""
        return self.n_kv_heads * self.head_dim if self.has_rope else 0

    def exact_d_c(self, d_rope: int) -> int:
        """Rank of [K_nope ; V] for a given d_rope: the largest d_c that is not redundant (normalized keys are
        not linear in the input, so with q/k norm and compressed keys the input width does not bound it)."""
        width = self.n_kv_heads * self.head_dim
        n_nope = width - d_rope if self.has_rope else width
        if self.family.qk_norm and d_rope < width:
            return n_nope + width
        return min(self.d_model, n_nope + width)


def model_type(hf_dir: Path) -> str | None:
    """The `model_type` of a Hugging Face directory's config.json."""
    return json.loads((Path(hf_dir) / "config.json").read_text()).get("model_type")


def check_family(cfg: dict) -> Family:
    """The family of a config.json dict, or ConversionError naming the supported set and the nearest workaround."""
    arch = cfg.get("model_type")
    if arch in REFUSED:
        raise ConversionError(f"architecture {arch!r} is not supported: {REFUSED[arch]}. Supported: {supported_text()}")
    if arch not in FAMILIES:
        raise ConversionError(f"architecture {arch!r} is not supported; supported model_type values: "
                              f"{supported_text()}. Nearest: a checkpoint of one of those families")
    family = FAMILIES[arch]
    if family.kind == "decoder":
        _check_decoder_config(arch, cfg)
    return family


def _check_decoder_config(arch: str, cfg: dict) -> None:
    """ConversionError for decoder settings the runtime would run wrongly: RoPE type, partial RoPE, windows."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConversionError(
            f"rope type {rope_type!r} is not supported: its frequencies change with the sequence length, while a "
            f"converted model caches keys RoPE'd once. Supported: {', '.join(ROPE_TYPES)}. Nearest: a short-context "
            "checkpoint of the same model (e.g. Phi-3-mini-4k instead of -128k), or Llama 3.x (llama3 RoPE)")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ConversionError(f"partial_rotary_factor={partial} is not supported (RoPE on part of each head); "
                              "supported: RoPE on the whole head (1.0), e.g. Phi-3-mini, Llama 3.x, Qwen2.5")
    window = sliding_window(cfg)
    limit = cfg.get("max_position_embeddings")
    if window is not None and (limit is None or window < limit):
        raise ConversionError(
            f"{arch} has sliding_window={window} below max_position_embeddings={limit}: the converted model's "
            "attention sees the whole context, so it would differ past the window. Nearest: Mistral v0.2 or later "
            f"(no window), or a copy of the model whose config.json sets max_position_embeddings to {window} "
            "(exact up to that context)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act={cfg['hidden_act']!r} is not supported for decoders; the runtime's MLP is "
                              "SwiGLU (silu), as in Llama, Mistral, Qwen and Phi-3")


def sliding_window(cfg: dict) -> int | None:
    """The attention window a decoder config applies (None: full attention), as transformers reads it."""
    if cfg.get("use_sliding_window") is False:  # Qwen2/Qwen3 keep a window size they do not use
        return None
    layer_types = cfg.get("layer_types")
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return cfg.get("sliding_window")


def read_source_shape(hf_dir: Path) -> SourceShape:
    """Source sizes from `hf_dir/config.json`; raises ConversionError for a missing dir, weights or architecture."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConversionError(f"{hf_dir} has no config.json; pass a Hugging Face model directory")
    cfg = json.loads((hf_dir / "config.json").read_text())
    family = check_family(cfg)
    if not (list(hf_dir.glob("*.safetensors")) or list(hf_dir.glob("pytorch_model*.bin"))):
        raise ConversionError(f"{hf_dir} has no weights (*.safetensors or pytorch_model*.bin)")
    d_model = cfg.get("hidden_size") or cfg["dim"]  # DistilBERT names it dim
    n_heads = cfg.get("num_attention_heads") or cfg["n_heads"]
    return SourceShape(arch=cfg["model_type"], d_model=d_model,
                       n_layers=cfg.get("num_hidden_layers") or cfg["n_layers"], n_heads=n_heads,
                       n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                       head_dim=cfg.get("head_dim") or d_model // n_heads, has_rope=family.kind == "decoder")


def split_fused(state: dict[str, torch.Tensor], shape: SourceShape) -> dict[str, torch.Tensor]:
    """The state dict with fused projections (Phi-3's qkv_proj, gate_up_proj) split into separate ones."""
    family = shape.family
    out = dict(state)
    q_rows, kv_rows = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    for i in range(shape.n_layers):
        prefix = family.layer.format(i=i)
        for fused, parts, sizes in ((family.fused_qkv, (family.q, family.k, family.v), (q_rows, kv_rows, kv_rows)),
                                    (family.fused_gate_up, ("mlp.gate_proj", "mlp.up_proj"), None)):
            for kind in ("weight", "bias"):
                key = f"{prefix}{fused}.{kind}"
                if not fused or key not in out:
                    continue
                tensor = out.pop(key)
                pieces = tensor.split(list(sizes)) if sizes else tensor.chunk(2)  # Phi-3: gate first, then up
                out.update({f"{prefix}{name}.{kind}": piece for name, piece in zip(parts, pieces)})
    return out
