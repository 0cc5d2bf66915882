"""Runtime of MLA-converted BERT-family encoders: `load_mla_encoder(model_dir, device)` -> last hidden states.

BERT, RoBERTa, XLM-R and DistilBERT share one post-LayerNorm layer; they differ in config names, token
types (DistilBERT has none) and positions (RoBERTa/XLM-R count from padding_idx + 1): `EncoderDims`.
Encoders have no KV cache, so attention runs in the non-absorbed form (expanded K/V through SDPA).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.activations import ACT2FN

from mlabatch.models.mla_attention import MLAAttention, MLAShape
from mlabatch.models.mla_config import MLAModelConfig, read_converted

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert")  # the model_type values the runtime embeds
_OFFSET_POSITIONS = ("roberta", "xlm-roberta")  # position ids start at padding_idx + 1
DISTILBERT_LAYER_NORM_EPS = 1e-12  # DistilBERT's LayerNorms (its config has no eps)


@dataclass(frozen=True)
class EncoderDims:
    """One BERT-family encoder's sizes under common names, read from its config.json dict."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int  # 0: no token type embeddings (DistilBERT)
    layer_norm_eps: float
    hidden_act: str
    position_offset: int  # position id of a sequence's first token

    @classmethod
    def from_config(cls, cfg: dict) -> "EncoderDims":
        """Dims of a bert / roberta / xlm-roberta / distilbert config.json dict."""
        if cfg.get("model_type") == "distilbert":
            return cls(cfg["dim"], cfg["n_layers"], cfg["hidden_dim"], cfg["vocab_size"],
                       cfg["max_position_embeddings"], 0, DISTILBERT_LAYER_NORM_EPS, cfg["activation"], 0)
        offset = cfg["pad_token_id"] + 1 if cfg.get("model_type") in _OFFSET_POSITIONS else 0
        return cls(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"],
                   cfg["max_position_embeddings"], cfg["type_vocab_size"], cfg["layer_norm_eps"], cfg["hidden_act"],
                   offset)

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table covers."""
        return self.max_position_embeddings - self.position_offset


class _Embeddings(nn.Module):
    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        d = dims.hidden_size
        self.offset = dims.position_offset
        self.word_embeddings = nn.Embedding(dims.vocab_size, d)
        self.position_embeddings = nn.Embedding(dims.max_position_embeddings, d)
        if dims.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(dims.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=dims.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + self.offset
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None]
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _EncoderLayer(nn.Module):
    def __init__(self, dims: EncoderDims, shape: MLAShape) -> None:
        super().__init__()
        d, eps = dims.hidden_size, dims.layer_norm_eps
        self.attn = MLAAttention(shape)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ffn_in = nn.Linear(d, dims.intermediate_size)
        self.ffn_out = nn.Linear(dims.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)
        self.act = ACT2FN[dims.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.attn.project(x, None)
        x = self.attn_norm(x + self.attn(p, p.rows, mask=mask))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class MLAEncoder(nn.Module):
    """A BERT-family encoder with MLA attention; token type 0 everywhere, as sentence-transformers uses it."""

    def __init__(self, cfg: dict, mla: MLAModelConfig) -> None:
        super().__init__()
        self.dims = EncoderDims.from_config(cfg)
        shape = mla.attention_shape(self.dims.hidden_size)
        self.embeddings = _Embeddings(self.dims)
        self.layers = nn.ModuleList(_EncoderLayer(self.dims, shape) for _ in range(self.dims.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [b, t, hidden] for token ids [b, t] and a 0/1 padding mask [b, t]."""
        mask = attention_mask.bool()
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def load_mla_encoder(model_dir: str | Path, device: str | torch.device = "cpu") -> MLAEncoder:
    """Load a converted encoder onto `device` in eval mode (float16 on CUDA, float32 elsewhere)."""
    mla, cfg, state = read_converted(model_dir, "encoder")
    model = MLAEncoder(cfg, mla)
    model.load_state_dict(state)
    device = torch.device(device)
    model = model.to(device).eval()
    model = model.half() if device.type == "cuda" else model
    for layer in model.layers:
        layer.attn.fuse()
    return model
